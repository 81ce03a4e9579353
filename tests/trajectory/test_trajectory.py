"""Trajectory discovery, streaming reads and validation on tiny synthetic trajectories."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT, make_tiny_model_dir, make_trajectory
from rlvr_linearity.errors import ConfigError, TrajectoryError
from rlvr_linearity.trajectory import ModelFiles, open_trajectory

ROOT = REPO_ROOT


def check_values(traj, t, steps=None, max_elements=37):
    steps = traj.steps if steps is None else steps
    for name in traj.tensor_names:
        shape = traj.base.shape(name)
        seen = 0
        for a, b, block in traj.iter_blocks(name, steps, max_elements):
            assert a == seen and b > a
            seen = b
            assert tuple(block.shape) == (len(steps), b - a, *shape[1:])
            row = block[0, 0].numel()
            assert block.numel() <= max(max_elements, len(steps) * row)
            for i, s in enumerate(steps):
                assert torch.equal(block[i].double(), t.values[s][name][a:b]), (name, s)
        assert seen == shape[0]


@pytest.mark.parametrize("layout", ["verl", "global_step", "checkpoint", "step"])
@pytest.mark.parametrize("tied", [True, False])
def test_every_layout_reads_exact_values(tmp_path, layout, tied):
    t = make_trajectory(tmp_path, layout, [1, 2, 5, 9], tied=tied, dtype=torch.float32, base_dtype=torch.bfloat16,
                        noise=1e-3)
    traj = open_trajectory(path=str(t.path), base=str(t.base))
    assert traj.steps == [0, 1, 2, 5, 9]
    assert traj.base is traj.model(0) and traj.base.path == t.base
    assert sorted(traj.tensor_names) == sorted(t.names)
    assert traj.base.tied_embeddings == tied and ("lm_head.weight" in traj.tensor_names) != tied
    assert traj.model(5).path == t.step_dirs[5]
    check_values(traj, t)
    # bf16 base + fp32 steps: block in the wider dtype, exact
    name = "model.norm.weight"
    assert traj.base.dtype(name) == torch.bfloat16 and traj.model(1).dtype(name) == torch.float32
    _, _, block = next(traj.iter_blocks(name, [0, 9], 10**6))
    assert block.dtype == torch.float32


def test_verl_fp32_under_bfloat16_config_read_as_fp32(tmp_path):
    t = make_trajectory(tmp_path, "verl", [1, 2], dtype=torch.float32, noise=1e-6)
    cfg = json.loads((t.step_dirs[2] / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    traj = open_trajectory(path=t.path, base=t.base)
    name = "model.layers.1.self_attn.q_proj.weight"
    mf = traj.model(2)
    assert mf.dtype(name) == torch.float32
    x = mf.read(name)
    assert x.dtype == torch.float32 and torch.equal(x.double(), t.values[2][name])
    assert not torch.equal(x.to(torch.bfloat16).float(), x)  # bf16 would have rounded it
    assert torch.equal(mf.read_rows(name, 3, 7).double(), t.values[2][name][3:7])
    assert torch.equal(mf.read_rows("model.norm.weight", 2, 5).double(), t.values[2]["model.norm.weight"][2:5])


def test_base_from_trajectory_json_and_step_zero(tmp_path):
    t = make_trajectory(tmp_path / "a", "checkpoint", [2, 4], write_json=True)
    assert open_trajectory(path=t.path).base.path == t.base
    # relative base path in trajectory.json is relative to the trajectory dir
    (t.path / "trajectory.json").write_text(json.dumps({"base": "../base", "steps": [2, 4]}))
    assert open_trajectory(path=t.path).base.path == t.base.resolve()
    # the trajectory holds step 0 itself: no base needed
    u = make_trajectory(tmp_path / "b", "step", [0, 3, 6])
    traj = open_trajectory(path=u.path)
    assert traj.steps == [0, 3, 6] and traj.base.path == u.step_dirs[0]
    check_values(traj, u)


def test_base_from_verl_run_config(tmp_path):
    t = make_trajectory(tmp_path, "verl", [1, 2])
    (tmp_path / "verl_config.yaml").write_text(f"actor_rollout_ref:\n  model:\n    path: {t.base}\n")
    assert open_trajectory(path=t.path).base.path == t.base
    (tmp_path / "verl_config.yaml").unlink()
    cfg = json.loads((t.step_dirs[1] / "config.json").read_text())
    (t.step_dirs[1] / "config.json").write_text(json.dumps({**cfg, "_name_or_path": str(t.base)}))
    assert open_trajectory(path=t.path).base.path == t.base


def test_selection_steps_and_max_step(tmp_path):
    t = make_trajectory(tmp_path, "global_step", [1, 2, 3, 5, 8])
    kw = {"path": t.path, "base": t.base}
    assert open_trajectory(**kw, max_step=3).steps == [0, 1, 2, 3]
    assert open_trajectory(**kw, steps=[2, 8]).steps == [0, 2, 8]
    assert open_trajectory(**kw, steps=[0, 2, 5, 8], max_step=5).steps == [0, 2, 5]
    # from a config section (dict / DictConfig)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"path": str(t.path), "base": str(t.base), "steps": None, "max_step": 2})
    assert open_trajectory(cfg).steps == [0, 1, 2]
    with pytest.raises(TrajectoryError, match=r"requested step\(s\) \[4\] not found"):
        open_trajectory(**kw, steps=[2, 4])
    with pytest.raises(TrajectoryError, match="no checkpoints left"):
        open_trajectory(**kw, max_step=0)
    with pytest.raises(ConfigError):
        open_trajectory(base=t.base)


def test_verl_in_progress_steps_are_skipped(tmp_path, caplog):
    t = make_trajectory(tmp_path, "verl", [1, 2, 3, 4])
    (t.path / "latest_checkpointed_iteration.txt").write_text("3")  # step 4 still being saved
    (t.step_dirs[2] / "model.safetensors").unlink()  # hf export of step 2 not written
    with caplog.at_level("INFO", logger="rlvr_linearity.trajectory"):
        traj = open_trajectory(path=t.path, base=t.base)
    assert traj.steps == [0, 1, 3]
    assert "global_step_4" in caplog.text and "global_step_2" in caplog.text
    check_values(traj, t)


def test_sharded_model_files(tmp_path):
    from rlvr_linearity.trajectory import ModelWriter

    src = make_tiny_model_dir(tmp_path / "m", tied=False)
    mf = ModelFiles(src)
    with ModelWriter(tmp_path / "sharded", template=mf, shard_bytes=20_000) as w:
        for n in w.tensor_names:
            w.write(n, mf.read(n))
    out = ModelFiles(tmp_path / "sharded")
    assert len(out.files) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert set(out.tensor_names) == set(mf.tensor_names)
    for n in mf.tensor_names:
        assert out.shape(n) == mf.shape(n) and torch.equal(out.read(n), mf.read(n))
        assert torch.equal(out.read_rows(n, 1, 3), mf.read(n)[1:3])
    from transformers import AutoModelForCausalLM

    sd = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", dtype="auto").state_dict()
    assert all(torch.equal(sd[n], mf.read(n)) for n in mf.tensor_names)
    # a step stored sharded, the base single-file: the trajectory does not care
    root = tmp_path / "traj"
    root.mkdir()
    shutil.copytree(tmp_path / "sharded", root / "step_1")
    traj = open_trajectory(path=root, base=src)
    assert traj.steps == [0, 1]


# ----------------------------------------------------------------------------------- errors
def err(match, **kw):
    with pytest.raises(TrajectoryError, match=match) as e:
        open_trajectory(**kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_error_missing_dir_and_no_checkpoints(tmp_path):
    err("trajectory directory not found", path=tmp_path / "nope", base=tmp_path)
    (tmp_path / "empty").mkdir()
    err("no checkpoints found", path=tmp_path / "empty", base=tmp_path)
    m = make_tiny_model_dir(tmp_path / "model")
    err("no checkpoints found.*trajectory.base", path=m)


def test_error_missing_base(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    err("missing base model.*trajectory.base", path=t.path)
    err("base model not found", path=t.path, base=tmp_path / "not-there")


def test_error_config_without_weights(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    (t.step_dirs[2] / "model.safetensors").unlink()
    (t.step_dirs[2] / "pytorch_model.bin").write_bytes(b"x")
    msg = err("config.json but no safetensors weights", path=t.path, base=t.base)
    assert "checkpoint-2" in msg and "step 2" in msg and "pytorch_model.bin" in msg
    shutil.rmtree(t.step_dirs[2])
    (t.step_dirs[2]).mkdir()
    err("missing config.json", path=t.path, base=t.base)


@pytest.mark.parametrize("cut", [4, 30, -100])
def test_error_truncated_file(tmp_path, cut):
    t = make_trajectory(tmp_path, "step", [1, 2, 3])
    f = t.step_dirs[3] / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:cut])
    msg = err("truncated safetensors file", path=t.path, base=t.base)
    assert str(f) in msg and "step 3" in msg


def _rewrite(step_dir, fn):
    f = step_dir / "model.safetensors"
    sd = fn(load_file(f))
    save_file(sd, str(f), metadata={"format": "pt"})


def test_error_missing_extra_and_shape(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    name = "model.layers.1.mlp.down_proj.weight"
    _rewrite(t.step_dirs[2], lambda sd: {k: v for k, v in sd.items() if k != name})
    msg = err("tensor missing", path=t.path, base=t.base)
    assert f"tensor {name}" in msg and "step 2" in msg
    _rewrite(t.step_dirs[2], lambda sd: {**sd, name: torch.zeros(3, 3), "extra.weight": torch.zeros(2)})
    msg = err(r"shape \[3, 3\] differs", path=t.path, base=t.base)
    assert f"tensor {name}" in msg and "step 2" in msg
    _rewrite(t.step_dirs[2], lambda sd: {**sd, name: torch.zeros(t.values[0][name].shape)})
    err("tensor extra.weight: tensor not in the base model", path=t.path, base=t.base)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_error_nan_inf_while_streaming(tmp_path, bad):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2, 3])
    name = "model.layers.0.self_attn.v_proj.weight"

    def poison(sd):
        sd[name][5, 3] = bad
        return sd

    _rewrite(t.step_dirs[2], poison)
    traj = open_trajectory(path=t.path, base=t.base)  # opening is cheap: no full scan
    list(traj.iter_blocks("model.norm.weight", traj.steps, 100))
    with pytest.raises(TrajectoryError, match="NaN/Inf") as e:
        for _ in traj.iter_blocks(name, traj.steps, 50):
            pass
    assert "step 2" in str(e.value) and f"tensor {name}" in str(e.value) and "checkpoint-2" in str(e.value)
    nocheck = open_trajectory(path=t.path, base=t.base, check_finite=False)
    assert sum(1 for _ in nocheck.iter_blocks(name, nocheck.steps, 50)) > 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gram_passes_name_the_step_of_a_nan_inf_weight(tmp_path, bad):
    """The Gram and RELEX passes skip the reader's scan and detect NaN/Inf from the Gram's
    diagonal: the same error, naming the step and tensor, before any output is complete."""
    from rlvr_linearity.extrapolate.relex import run_relex, select_windows
    from rlvr_linearity.linearity.gram import compute_grams

    t = make_trajectory(tmp_path / "t", "checkpoint", [1, 2, 3])
    name = "model.layers.0.self_attn.v_proj.weight"

    def poison(sd):
        sd[name][5, 3] = bad
        return sd

    _rewrite(t.step_dirs[2], poison)
    traj = open_trajectory(path=t.path, base=t.base)
    for run in (lambda: compute_grams(traj, traj.steps),
                lambda: run_relex(traj, select_windows(traj.steps, history=3), [6], tmp_path / "out")):
        with pytest.raises(TrajectoryError, match="NaN/Inf") as e:
            run()
        assert "step 2" in str(e.value) and f"tensor {name}" in str(e.value)
    assert not (tmp_path / "out" / "step_6").exists()
    unchecked = open_trajectory(path=t.path, base=t.base, check_finite=False)
    compute_grams(unchecked, unchecked.steps)  # asked not to check: no error


def test_gram_of_huge_finite_weights_passes(tmp_path):
    """Squares that overflow make the Gram's diagonal infinite without any bad weight: the
    checked re-read finds none and the pass goes on."""
    from rlvr_linearity.linearity.gram import compute_grams

    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    name = "model.layers.0.self_attn.v_proj.weight"

    def huge(sd):
        sd[name][:4] = 3e38
        return sd

    _rewrite(t.step_dirs[2], huge)
    traj = open_trajectory(path=t.path, base=t.base)
    grams = compute_grams(traj, traj.steps)
    assert not torch.isfinite(torch.from_numpy(grams[name])).all()


def test_huge_finite_weights_are_not_flagged(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    name = "model.layers.0.self_attn.v_proj.weight"

    def huge(sd):
        sd[name][:4] = 3e38  # the block's sum overflows to inf; every weight is finite
        return sd

    _rewrite(t.step_dirs[2], huge)
    traj = open_trajectory(path=t.path, base=t.base)
    assert sum(1 for _ in traj.iter_blocks(name, traj.steps, 10**6)) == 1


def test_error_duplicate_steps(tmp_path):
    t = make_trajectory(tmp_path / "a", "global_step", [5, 6])
    shutil.copytree(t.step_dirs[5], t.path / "global_step_05")
    err("duplicate step", path=t.path, base=t.base)
    u = make_trajectory(tmp_path / "b", "checkpoint", [3, 4])
    shutil.copytree(u.step_dirs[3], u.path / "step_3")
    msg = err("duplicate step", path=u.path, base=u.base)
    assert "step 3" in msg


def test_error_trajectory_json_lists_missing_step(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2, 3], write_json=True)
    shutil.rmtree(t.step_dirs[2])
    err(r"lists step\(s\) \[2\] that are not on disk", path=t.path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_fsdp_shard_pickles_never_run_code(tmp_path):
    import pickle
    import zipfile

    t = make_trajectory(tmp_path, "verl", [1, 2])
    actor = t.path / "global_step_2" / "actor"
    (actor / "huggingface" / "model.safetensors").unlink()
    with zipfile.ZipFile(actor / "model_world_size_1_rank_0.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"model.norm.weight": _Evil()}, protocol=2))
    msg = err("unsupported FSDP shard content.*(posix|os).system", path=t.path, base=t.base)
    assert "step 2" in msg and "model_world_size_1_rank_0.pt" in msg
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_fingerprint(tmp_path):
    t = make_trajectory(tmp_path / "a", "checkpoint", [1, 2, 3])
    fp = open_trajectory(path=t.path, base=t.base).fingerprint()
    assert fp == open_trajectory(path=t.path, base=t.base).fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "a", copy)  # same bytes and mtimes, other inodes: another trajectory
    assert open_trajectory(path=copy / "trajectory", base=copy / "base").fingerprint() != fp
    assert open_trajectory(path=t.path, base=t.base, max_step=2).fingerprint() != fp
    # a rewrite that keeps size and bytes (so every sampled range) is seen through the mtime
    f = t.step_dirs[3] / "model.safetensors"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert open_trajectory(path=t.path, base=t.base).fingerprint() != fp
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_trajectory(path=t.path, base=t.base).fingerprint() == fp
    _rewrite(t.step_dirs[3], lambda sd: {k: v + (k == "model.norm.weight") for k, v in sd.items()})
    assert open_trajectory(path=t.path, base=t.base).fingerprint() != fp


def test_cli_bad_trajectory_exits_2_with_one_line(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "rlvr_linearity", "linearity", f"trajectory.path={tmp_path / 'nope'}",
                        "logger=none", f"output_dir={out}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert lines and "trajectory directory not found" in lines[-1] and str(tmp_path / "nope") in lines[-1]
    assert "Traceback" not in r.stderr
    assert not (out / "linearity" / "weights_r2.json").exists()
