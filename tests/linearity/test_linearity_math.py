"""Pure linearity maths against an independent float64 numpy reference (np.corrcoef, np.linalg.svd)."""

import numpy as np
import pytest
import torch

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity import lowrank
from rlvr_linearity.linearity.r2 import (R2Stats, WindowDesign, block_deltas, block_keep, block_r2,
                                         sample_indices, window_lengths)

STEPS = [0, 1, 2, 4, 7, 8, 12, 13]  # gaps between steps


def ref_r2(x, y):
    """Reference: squared Pearson correlation per column; NaN for constant columns."""
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        if np.ptp(y[:, j]) > 0:
            out[j] = np.corrcoef(x, y[:, j])[0, 1] ** 2
    return out


def random_block(dtype, c=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = len(STEPS)
    base = torch.randn(c, generator=g) * 3 + 5
    trend = torch.randn(c, generator=g) * 1e-2
    noise = torch.randn(t, c, generator=g) * torch.rand(c, generator=g) * 2e-2
    y = base + torch.as_tensor(STEPS, dtype=torch.float32)[:, None] * trend + noise
    y[:, :20] = base[:20]  # never change: undefined
    return y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_r2_windows_match_corrcoef(dtype):
    y = random_block(dtype)
    lengths = [n for _, n in window_lengths(STEPS, [4, 8, "all"])]
    assert lengths == [4, 6, 8]
    r2 = block_r2(block_deltas(y), WindowDesign.build(STEPS, lengths))
    yy = y.double().numpy()
    for j, n in enumerate(lengths):
        ref = ref_r2(np.asarray(STEPS[:n], float), yy[:n])
        assert np.array_equal(np.isnan(ref), torch.isnan(r2[j]).numpy())
        assert np.nanmax(np.abs(ref - r2[j].numpy())) < 1e-9
    assert torch.isnan(r2[:, :20]).all()


def test_windows_errors():
    with pytest.raises(ConfigError):
        window_lengths(STEPS, [20])
    with pytest.raises(ConfigError):
        window_lengths(STEPS, [0])


def test_stats_exact_and_histogram():
    v = torch.rand(10001, dtype=torch.float64)
    for limit in (10**9, 100):
        s = R2Stats(exact_limit=limit)
        for part in v.split(777):
            s.add(part)
        out = s.summary()
        assert out["n_defined"] == 10001
        assert abs(out["mean"] - v.mean().item()) < 1e-12
        assert abs(out["median"] - np.median(v.numpy())) < (1e-12 if limit > 10**6 else 1e-6)
        assert out["frac_above"]["0.7"] == pytest.approx(float((v > 0.7).double().mean()))
    # even count, merge of histogram-mode parts
    a, b = R2Stats(exact_limit=10), R2Stats(exact_limit=10)
    a.add(v[:5000]); b.add(v[5000:])
    a.merge(b)
    assert abs(a.median() - np.median(v.numpy())) < 1e-6


def test_filters_match_reference():
    y = random_block(torch.bfloat16)
    lengths = [5, 8]
    d = block_deltas(y)
    keep = block_keep(y, d, lengths, 1e-2, 4)
    yy = y.double().numpy()
    for j, n in enumerate(lengths):
        ref = [(np.ptp(yy[:n, c]) > 1e-2) and len(np.unique(yy[:n, c])) >= 4 for c in range(yy.shape[1])]
        assert keep[j].numpy().tolist() == ref
    assert block_keep(y, d, lengths, 0.0, 0) is None


def test_sample_indices():
    idx = sample_indices(10**9, 1000, 42, "w")
    assert len(np.unique(idx)) == 1000 and idx.min() >= 0 and idx.max() < 10**9
    assert np.array_equal(idx, sample_indices(10**9, 1000, 42, "w"))
    assert not np.array_equal(idx, sample_indices(10**9, 1000, 42, "v"))
    assert len(np.unique(sample_indices(100, 60, 1, "w"))) == 60


def test_lowrank_matches_svd():
    rng = np.random.default_rng(0)
    steps = np.array([1, 2, 3, 5, 8, 9, 12, 15, 16, 20], float)
    direction = rng.normal(size=500)
    m = np.outer(steps * 0.01 + rng.normal(size=len(steps)) * 1e-3, direction) + rng.normal(size=(len(steps), 500)) * 1e-3
    g = m @ m.T
    for n in (4, 7, 10):
        s = np.linalg.svd(m[:n], compute_uv=False)
        ev = lowrank.explained_variance(g[:n, :n], [1, 2, 3])
        for r in (1, 2, 3):
            assert abs(ev[r] - np.sum(s[:r] ** 2) / np.sum(s ** 2)) < 1e-9
    # coefficients: history = steps <= 9 (6 rows); direction from the history SVD
    res = lowrank.coefficient_linearity(g, steps, 9)
    u, s, vt = np.linalg.svd(m[:6], full_matrices=False)
    c = m @ vt[0]
    c = -c if c[-1] < 0 else c
    assert np.allclose(res["coefficients"], c, atol=1e-12)
    r2_in = np.corrcoef(steps[:6], c[:6])[0, 1] ** 2
    assert abs(res["r2_in_sample"] - r2_in) < 1e-9
    b, a = np.polyfit(steps[:6], c[:6], 1)
    fut = c[6:]
    ref_out = 1 - np.sum((fut - (a + b * steps[6:])) ** 2) / np.sum((fut - fut.mean()) ** 2)
    assert abs(res["r2_out_of_sample"] - ref_out) < 1e-6
    # projection onto the window's top-2 subspace
    w = lowrank.projection_weights(g, 6, 8, 2)
    proj = vt[:2].T @ (vt[:2] @ m[8])
    assert np.allclose(w @ m[:6], proj, atol=1e-10)
    both = lowrank.projection_weights(g, 6, [8, 7], 2)  # several targets: one eigendecomposition
    assert both.shape == (2, 6) and np.allclose(both[0], w, atol=1e-12)
    assert np.allclose(both[1] @ m[:6], vt[:2].T @ (vt[:2] @ m[7]), atol=1e-10)
    assert np.isnan(lowrank.explained_variance(np.zeros((3, 3)), [1])[1])


def test_lowrank_report_vs_svd():
    rng = np.random.default_rng(1)
    steps = [1, 2, 4, 5, 8, 11]
    mats = {"a": rng.normal(size=(6, 40)), "b": np.outer(np.asarray(steps, float), rng.normal(size=30)) + rng.normal(size=(6, 30)) * 1e-2,
            "c": np.zeros((6, 5))}
    grams = {k: m @ m.T for k, m in mats.items()}
    rep = lowrank.lowrank_report(grams, steps, [4, "all"], [1, 2], coefficient_history=5)
    assert rep["windows"]["4"]["steps"] == [1, 2, 4]
    full = np.concatenate(list(mats.values()), 1)
    for label, n in (("4", 3), ("all", 6)):
        for k, m in mats.items():
            s = np.linalg.svd(m[:n], compute_uv=False)
            for r in (1, 2):
                got = rep["windows"][label]["per_tensor"][k][str(r)]
                if k == "c":
                    assert np.isnan(got)
                else:
                    assert abs(got - np.sum(s[:r] ** 2) / np.sum(s ** 2)) < 1e-9
        s = np.linalg.svd(full[:n], compute_uv=False)
        assert abs(rep["windows"][label]["model"]["1"] - s[0] ** 2 / np.sum(s ** 2)) < 1e-9
    assert rep["windows"]["all"]["summary"]["1"]["n"] == 2
    b = rep["coefficients"]["per_tensor"]["b"]
    assert b["n_history"] == 4 and b["r2_in_sample"] > 0.99 and b["r2_out_of_sample"] is not None
    assert rep["summary"]["rank1_ev"]["n"] == 2
