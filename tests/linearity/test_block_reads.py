"""Paths that read or copy a tensor by blocks of rows give what the whole tensor gives, with a
tiny block budget (many blocks per tensor, one element per block for 1-D tensors), tied
embeddings included: memory then follows the block size, not the tensor's (a 32B model's
lm_head is 3.1 GB in float32; docs/performance.md "Memory at 32B-tensor scale")."""

import logging
import math

import pytest
import torch

from conftest import make_tiny_model_dir, make_trajectory
from rlvr_linearity.extrapolate.error import prediction_error
from rlvr_linearity.trajectory import ModelFiles, ModelWriter


def whole_tensor_error(base, trained, predicted) -> dict:
    """The reference: every tensor read whole, float64 sums over it."""
    diff2 = true2 = pred2 = dot = 0.0
    names = [n for n in trained.tensor_names if n in predicted.tensor_names and trained.dtype(n).is_floating_point]
    for name in names:
        b = base.read(name).double()
        dt, dp = trained.read(name).double() - b, predicted.read(name).double() - b
        diff2 += float(torch.sum((dp - dt) ** 2))
        true2 += float(torch.sum(dt * dt))
        pred2 += float(torch.sum(dp * dp))
        dot += float(torch.sum(dp * dt))
    return {"rel_l2": math.sqrt(diff2 / true2), "cosine": dot / math.sqrt(true2 * pred2), "n_tensors": len(names)}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prediction_error_by_row_blocks_equals_whole_tensors(tmp_path, tied, dtype):
    tt = make_trajectory(tmp_path, "step", steps=(1, 2, 3), tied=tied, dtype=dtype, noise=1e-3)
    base, trained, predicted = ModelFiles(tt.base), ModelFiles(tt.step_dirs[3]), ModelFiles(tt.step_dirs[2])
    assert any(len(base.shape(n)) == 1 for n in base.tensor_names)
    assert ("lm_head.weight" in base.tensor_names) != tied
    want = whole_tensor_error(base, trained, predicted)
    for max_elements in (1, 3, 100, 1 << 22):  # 1: one row (one element of a 1-D tensor) per block
        got = prediction_error(base, trained, predicted, max_elements=max_elements)
        assert got["n_tensors"] == want["n_tensors"] == len(base.tensor_names)
        # float64 block sums added exactly (math.fsum): equal to the last digit or two
        assert got["rel_l2"] == pytest.approx(want["rel_l2"], rel=1e-13, abs=0)
        assert got["cosine"] == pytest.approx(want["cosine"], rel=1e-13, abs=0)
    assert prediction_error(base, trained, trained)["rel_l2"] == 0.0


@pytest.mark.parametrize("differ", [True, False])
def test_tied_lm_head_kept_identical_chunk_by_chunk(tmp_path, monkeypatch, caplog, differ):
    from safetensors.torch import load_file, save_file

    from rlvr_linearity.trajectory import writer

    monkeypatch.setattr(writer, "TIED_CHUNK", 36)  # bytes: many chunks, the last one short
    src = make_tiny_model_dir(tmp_path / "src", tied=True)
    sd = load_file(src / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # tied, yet stored both
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    mf = ModelFiles(src)
    assert mf.numel("lm_head.weight") * 4 % 36
    with caplog.at_level(logging.WARNING), ModelWriter(tmp_path / "out", template=mf) as w:
        for n in w.tensor_names:
            w.write(n, mf.read(n) + (1.0 if differ and n == "lm_head.weight" else 0.0))
    got = ModelFiles(tmp_path / "out")
    assert torch.equal(got.read("lm_head.weight"), mf.read("model.embed_tokens.weight"))
    assert torch.equal(got.read("model.embed_tokens.weight"), mf.read("model.embed_tokens.weight"))
    assert ("different lm_head" in caplog.text) == differ


def test_executor_rereads_a_tensor_over_budget_through_a_small_ring(tmp_path, monkeypatch):
    """A tensor too big to keep is read a second time for the outputs; that read's ring keeps
    nothing (PREFETCH_RING buffers), not the kept tensors' large ring, and the outputs are those
    of a run that keeps every tensor."""
    from rlvr_linearity.extrapolate import relex
    from rlvr_linearity.linearity import executor
    from rlvr_linearity.trajectory import open_trajectory
    from rlvr_linearity.trajectory.streaming import PREFETCH_RING

    tt = make_trajectory(tmp_path / "t", "step", steps=(1, 2, 3, 4), tied=True, noise=1e-3)
    traj = open_trajectory(path=tt.path, base=tt.base)
    calls = []
    read_blocks = executor.read_blocks
    monkeypatch.setattr(executor, "read_blocks", lambda traj, name, steps, max_elements, reuse, check_finite:
                        calls.append((name, reuse)) or read_blocks(traj, name, steps, max_elements, reuse, check_finite))
    windows = relex.select_windows(traj.steps, history=3)
    big = "model.embed_tokens.weight"
    budget = 4 * traj.base.numel(big) * 4 - 1  # every tensor but the embedding kept
    relex.run_relex(traj, windows, [4], tmp_path / "small", max_elements=64, memory_budget=budget)
    reads = [r for n, r in calls if n == big]
    assert len(reads) == 2 and reads[1] == PREFETCH_RING < reads[0]
    assert {r for n, r in calls if n != big} == {reads[0]}
    relex.run_relex(traj, windows, [4], tmp_path / "all", max_elements=64, memory_budget=1 << 30)
    small, kept = ModelFiles(tmp_path / "small" / "step_4"), ModelFiles(tmp_path / "all" / "step_4")
    for n in kept.tensor_names:
        assert torch.equal(small.read(n), kept.read(n)), n
