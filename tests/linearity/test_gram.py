"""Gram matrices of trajectory deltas: vs numpy float64 on the stored values, streamed in small
blocks, cached by content (a subset of a cached union is answered without reading)."""

import numpy as np
import pytest
import torch
from conftest import make_trajectory

from rlvr_linearity.linearity import gram
from rlvr_linearity.linearity.kernels import common, predict
from rlvr_linearity.linearity.kernels import gram as gram_kernel
from rlvr_linearity.trajectory import open_trajectory

STEPS = (1, 2, 4, 7, 8, 12)


def ref_gram(tt, name, steps):
    d = np.stack([(tt.values[s][name] - tt.values[0][name]).numpy().ravel() for s in steps])
    return d @ d.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_grams_match_float64_reference(tmp_path, dtype):
    tt = make_trajectory(tmp_path, "checkpoint", STEPS, dtype=dtype, drift="random", tied=True)
    traj = open_trajectory(path=tt.path, base=tt.base)
    steps = [2, 4, 8, 12]
    grams = gram.compute_grams(traj, steps, max_elements=200)  # many blocks per tensor
    assert set(grams) == set(tt.names)
    for n in tt.names:
        ref = ref_gram(tt, n, steps)
        assert np.allclose(grams[n], ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max()), n


def test_cache_subset_reused_without_reading(tmp_path):
    tt = make_trajectory(tmp_path, "step", STEPS, drift="random")
    traj = open_trajectory(path=tt.path, base=tt.base)
    cache = tmp_path / "cache"
    before = gram.bytes_read()
    full = gram.compute_grams(traj, STEPS, cache_dir=cache)
    read_once = gram.bytes_read() - before
    total = sum(v.numel() * 4 for v in tt.values[0].values()) * (len(STEPS) + 1)
    assert read_once == total  # every step's tensors read exactly once
    assert not list(cache.rglob("*.tmp*"))  # atomic: no temp file left
    before = gram.bytes_read()
    sub = gram.compute_grams(traj, [12, 4, 1], cache_dir=cache)  # a window of the cached union
    assert gram.bytes_read() == before
    idx = [STEPS.index(s) for s in (1, 4, 12)]
    for n in tt.names:
        assert np.array_equal(sub[n], full[n][np.ix_(idx, idx)])
        assert np.allclose(sub[n], ref_gram(tt, n, [1, 4, 12]), rtol=1e-5, atol=1e-12)
    gram.compute_grams(traj, [1, 2, 4, 12], cache_dir=cache)
    assert gram.bytes_read() == before


def test_cache_keyed_by_content(tmp_path):
    a = make_trajectory(tmp_path / "a", "step", (1, 2, 3), seed=0)
    b = make_trajectory(tmp_path / "b", "step", (1, 2, 3), seed=5)
    cache = tmp_path / "cache"
    ga = gram.compute_grams(open_trajectory(path=a.path, base=a.base), [1, 2, 3], cache_dir=cache)
    gb = gram.compute_grams(open_trajectory(path=b.path, base=b.base), [1, 2, 3], cache_dir=cache)
    n = a.names[0]
    assert not np.allclose(ga[n], gb[n])
    assert np.allclose(gb[n], ref_gram(b, n, [1, 2, 3]), rtol=1e-5)


@pytest.mark.skipif(not common.available(), reason="numba not installed (fused kernels)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 6, 13])
def test_fused_gram_and_prediction_match_float64(dtype, rows):
    """The fused kernels over several spans, a partial last chunk and step counts that are not
    multiples of the 4 x 4 tiles, against float64 on the stored values; float64 blocks go to
    torch's path, which matches as well."""
    n = 2 * common.GRAM_CHUNK * common.GRAM_SPAN + 37
    gen = torch.Generator().manual_seed(rows)
    trend = torch.randn(n, generator=gen) * 1e-3
    block = (torch.randn(n, generator=gen) + torch.arange(rows + 1.0)[:, None] * trend
             + torch.randn(rows + 1, n, generator=gen) * 1e-4).to(dtype)
    x = block.double().numpy()
    d = x[1:] - x[0]
    ref = d @ d.T
    g = gram_kernel.gram_block(block)
    assert np.array_equal(g, g.T)
    assert np.abs(g - ref).max() <= 1e-6 * np.abs(ref).max()
    w = torch.randn(6, rows, generator=gen)  # a tile of four targets and two more
    pred = gram.predict_update(block, w, torch.empty(6 * n))
    ref_pred = x[0] + w.double().numpy() @ d
    assert np.abs(pred.numpy() - ref_pred).max() <= 1e-6 * np.abs(ref_pred).max()
    wide = block.double() + 1e-9  # float64: declined by the kernels, torch's path matches too
    assert gram_kernel.gram_block(wide) is None and not predict.predict_block(wide, w, torch.empty(6, n))
    xw = wide.numpy()
    dw = xw[1:] - xw[0]
    gw = np.zeros((rows, rows))
    gram.gram_update(gw, wide)
    assert np.abs(gw - dw @ dw.T).max() <= 1e-5 * np.abs(dw @ dw.T).max()
    ref_wide = xw[0] + w.double().numpy() @ dw
    assert np.abs(gram.predict_update(wide, w, torch.empty(6 * n)).numpy() - ref_wide).max() \
        <= 1e-6 * np.abs(ref_wide).max()


def test_damaged_cache_entries_are_deleted_and_temp_files_ignored(tmp_path, caplog):
    """A torn entry (a copy cut short) is recomputed and replaced, not a crash (BadZipFile); a
    killed writer's hidden temp file, even a complete-looking one, is never read."""
    tt = make_trajectory(tmp_path, "step", (1, 2, 3))
    traj = open_trajectory(path=tt.path, base=tt.base)
    cache = tmp_path / "cache"
    good = gram.compute_grams(traj, [1, 2, 3], cache_dir=cache)
    (entry,) = cache.rglob("*.npz")
    data = entry.read_bytes()
    wrong = {n: g + 1.0 for n, g in good.items()}
    decoy = gram.GramCache(cache, traj.fingerprint()).store([1, 2, 3], wrong)  # same entry name, wrong values
    decoy.rename(entry.parent / f".{entry.stem}.tmp-0badc0de.npz")  # what a kill leaves: hidden
    for torn in (data[: len(data) // 2], data[:100], b""):
        entry.write_bytes(torn)
        before = gram.bytes_read()
        with caplog.at_level("WARNING", logger="rlvr_linearity.linearity.gram"):
            again = gram.compute_grams(traj, [1, 2, 3], cache_dir=cache)
        assert gram.bytes_read() > before  # recomputed from the weights
        assert "deleted" in caplog.text
        caplog.clear()
        for n in tt.names:
            assert np.array_equal(again[n], good[n])
        assert entry.read_bytes() != torn  # replaced by a good entry
        before = gram.bytes_read()
        assert all(np.array_equal(v, good[n]) for n, v in gram.compute_grams(traj, [1, 2, 3], cache_dir=cache).items())
        assert gram.bytes_read() == before  # served from the repaired entry
