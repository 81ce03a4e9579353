"""Trajectories written by verl's own FSDPCheckpointManager (gloo process group on CPU)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TESTS, make_tiny_model_dir
from rlvr_linearity.errors import TrajectoryError
from rlvr_linearity.trajectory import open_trajectory

pytestmark = pytest.mark.verl
pytest.importorskip("verl")

WRITER = TESTS / "verl_tree_writer.py"


def write_tree(root: Path, *, tied: bool, world_size: int, hf_model: bool, steps, port: int, fsdp2=False, vocab=320):
    base = make_tiny_model_dir(root / "base", tied=tied, dtype=torch.bfloat16, seed=2, vocab=vocab)
    cmd = [sys.executable, str(WRITER), str(root / "trajectory"), str(base), "--world-size", str(world_size),
           "--port", str(port), "--steps", *map(str, steps)] + ([] if hf_model else ["--no-hf-model"])
    cmd += ["--fsdp2"] if fsdp2 else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    values = torch.load(json.loads(r.stdout.strip().splitlines()[-1])["values"], weights_only=True)
    (root / "verl_config.yaml").write_text(f"actor_rollout_ref:\n  model:\n    path: {base}\n")
    return root / "trajectory", base, values


@pytest.fixture(scope="module")
def verl_tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("verl1"), tied=True, world_size=1, hf_model=True, steps=[1, 2, 3],
                      port=29611)


def assert_values(traj, base, values):
    from safetensors.torch import load_file

    base_sd = load_file(base / "model.safetensors")
    for name in traj.tensor_names:
        for a, b, block in traj.iter_blocks(name, traj.steps, 200):
            assert torch.equal(block[0], base_sd[name][a:b].to(block.dtype))
            for i, s in enumerate(traj.steps[1:], 1):
                assert torch.equal(block[i], values[s][name][a:b]), (name, s)


def test_verl_tree_reads_fp32_exactly(verl_tree):
    root, base, values = verl_tree
    hf = root / "global_step_2" / "actor" / "huggingface"
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"  # verl's precision pitfall
    traj = open_trajectory(path=root)  # base from the run's verl_config.yaml
    assert traj.steps == [0, 1, 2, 3] and traj.base.path == base
    assert traj.model(2).path == hf
    name = "model.layers.0.mlp.gate_proj.weight"
    assert traj.model(2).dtype(name) == torch.float32 and traj.base.dtype(name) == torch.bfloat16
    assert traj.base.tied_embeddings and "lm_head.weight" not in traj.tensor_names
    assert not torch.equal(values[2][name], values[2][name].to(torch.bfloat16).float())  # fp32 matters here
    assert_values(traj, base, values)


def test_verl_in_progress_and_shard_fallback(verl_tree, tmp_path, caplog):
    root0, base, values = verl_tree
    root = tmp_path / "trajectory"
    shutil.copytree(root0, root)
    (root / "latest_checkpointed_iteration.txt").write_text("2")  # step 3 still being saved
    (root / "global_step_2" / "actor" / "huggingface" / "model.safetensors").unlink()  # read from FSDP shards
    with caplog.at_level("INFO"):
        traj = open_trajectory(path=root, base=base)
    assert traj.steps == [0, 1, 2] and "global_step_3" in caplog.text
    assert type(traj.model(2)).__name__ == "FsdpShardFiles"
    assert_values(traj, base, values)
    from transformers import AutoModelForCausalLM

    from rlvr_linearity.trajectory import ModelWriter

    with ModelWriter(tmp_path / "export", template=traj.model(2)) as w:  # fp32 HF export of a shard-only step
        for n in w.tensor_names:
            w.write(n, traj.model(2).read(n))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype="auto")
    assert model.dtype == torch.float32 and model.config.tie_word_embeddings
    assert torch.equal(model.state_dict()["model.norm.weight"], values[2]["model.norm.weight"])
    # without the tracker, a step with no hf weights is a save in progress
    (root / "latest_checkpointed_iteration.txt").unlink()
    assert open_trajectory(path=root, base=base).steps == [0, 1, 3]
    # a truncated shard file is an error naming it
    (root / "latest_checkpointed_iteration.txt").write_text("3")
    shard = root / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(TrajectoryError, match="model_world_size_1_rank_0.pt, step 2: unreadable or truncated"):
        open_trajectory(path=root, base=base)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp2", [False, True], ids=["fsdp1-shardedtensor", "fsdp2-dtensor"])
def test_verl_sharded_fsdp_world_size_2_without_hf_model(tmp_path, fsdp2):
    # vocab 321: the embedding's rows do not split evenly between the two ranks
    root, base, values = write_tree(tmp_path, tied=False, world_size=2, hf_model=False, steps=[1, 2],
                                    port=29622 + fsdp2, fsdp2=fsdp2, vocab=321)
    assert not (root / "global_step_1" / "actor" / "huggingface" / "model.safetensors").exists()
    traj = open_trajectory(path=root)
    assert traj.steps == [0, 1, 2]
    assert_values(traj, base, values)
    (root / "global_step_2" / "actor" / "model_world_size_2_rank_1.pt").unlink()
    with pytest.raises(TrajectoryError, match=r"rank \[1\] missing"):
        open_trajectory(path=root)
