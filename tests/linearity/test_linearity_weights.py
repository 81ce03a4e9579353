"""Streaming per-weight R² driver vs an independent float64 reference over the whole trajectory."""

import functools
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from rlvr_linearity.linearity.names import parse_name
from rlvr_linearity.linearity.r2 import sample_indices, sample_size
from rlvr_linearity.linearity.weights import weight_linearity
from rlvr_linearity.linearity.kernels.common import available as numba_available

NEEDS_NUMBA = pytest.mark.skipif(not numba_available(), reason="numba not installed (fused kernel)")

STEPS = [0, 2, 3, 5, 9, 10, 14]
SHAPES = {"model.embed_tokens.weight": (50, 8), "model.layers.0.self_attn.q_proj.weight": (8, 8),
          "model.layers.0.self_attn.q_proj.bias": (8,), "model.layers.0.input_layernorm.weight": (8,),
          "model.layers.1.mlp.experts.3.up_proj.weight": (16, 8), "model.norm.weight": (8,),
          "lm_head.weight": (50, 8)}


class MemModel:
    def __init__(self, tensors):
        self.tensors = tensors

    def shape(self, name):
        return tuple(self.tensors[name].shape)


class MemTrajectory:
    """In-memory stand-in with the documented Trajectory surface used by the driver."""

    def __init__(self, values):
        self.values = values  # {step: {name: tensor}}
        self.steps = sorted(values)
        self.tensor_names = list(SHAPES)

    def model(self, step):
        return MemModel(self.values[step])

    def block_dtype(self, name, steps):
        dtypes = [self.values[s][name].dtype for s in steps]
        return functools.reduce(torch.promote_types, dtypes)

    def iter_blocks(self, name, steps, max_elements, dtype=None, reuse=0, check_finite=None):
        shape = self.values[0][name].shape
        rows = shape[0]
        per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        step_rows = max(1, max_elements // (len(steps) * per_row))
        for a in range(0, rows, step_rows):
            b = min(rows, a + step_rows)
            block = torch.stack([self.values[s][name][a:b] for s in steps])
            yield a, b, block if dtype is None else block.to(dtype)


def make_values(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    trend = {n: torch.randn(s, generator=g) * 1e-2 for n, s in SHAPES.items()}
    for s in STEPS:
        out[s] = {}
        for n in SHAPES:
            v = base[n] + s * trend[n] + torch.randn(SHAPES[n], generator=g) * 2e-2 * (s > 0)
            if n == "model.norm.weight":
                v = base[n]  # constant: all undefined
            out[s][n] = v.to(dtype)
    out_vals = {s: {n: t.clone() for n, t in d.items()} for s, d in out.items()}
    # a few weights that never change inside a moving tensor
    for s in STEPS:
        out_vals[s]["model.layers.0.self_attn.q_proj.weight"][0, :3] = out_vals[0]["model.layers.0.self_attn.q_proj.weight"][0, :3]
    return out_vals


def reference(values, steps, names, idx=None):
    x = np.asarray(steps, float)
    per = {}
    for n in names:
        y = np.stack([values[s][n].double().numpy().ravel() for s in steps])
        if idx is not None:
            y = y[:, idx[n]]
        r = np.full(y.shape[1], np.nan)
        for j in range(y.shape[1]):
            if np.ptp(y[:, j]) > 0:
                r[j] = np.corrcoef(x, y[:, j])[0, 1] ** 2
        per[n] = r
    return per


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [7 * 8 * 3, 1 << 20])
@pytest.mark.parametrize("engine", [pytest.param("kernel", marks=NEEDS_NUMBA), "torch"])
def test_weight_r2_matches_reference(tmp_path, dtype, chunk, engine):
    values = make_values(dtype)
    traj = MemTrajectory(values)
    res = weight_linearity(traj, windows=[5, 10, "all"], chunk_elements=chunk,
                           per_weight_path=tmp_path / "w.safetensors", progress=False, engine=engine, sub_chunk=5)
    assert sorted(res["windows"]) == ["10", "5", "all"]
    for label, steps in (("5", STEPS[:4]), ("10", STEPS[:6]), ("all", STEPS)):
        ref = reference(values, steps, SHAPES)
        allv = np.concatenate(list(ref.values()))
        dv = allv[~np.isnan(allv)]
        w = res["windows"][label]
        assert w["steps"] == steps
        assert w["n_weights"] == allv.size and w["n_defined"] == dv.size
        assert abs(w["mean"] - dv.mean()) < 1e-9
        assert abs(w["median"] - np.median(dv)) < 1e-6
        for t in ("0.5", "0.7", "0.9"):
            assert w["frac_above"][t] == pytest.approx(np.mean(dv > float(t)), abs=1e-12)
        for row in w["per_tensor"]:
            r = ref[row["name"]]
            d = r[~np.isnan(r)]
            assert row["numel"] == r.size and row["n_defined"] == d.size
            if d.size:
                assert abs(row["mean"] - d.mean()) < 1e-9
                if label == "all":
                    assert abs(row["median"] - np.median(d)) < 1e-6
                assert row["frac_above_0.7"] == pytest.approx(np.mean(d > 0.7))
    top = {k: res[k] for k in ("steps", "n_weights", "n_defined", "mean", "median", "frac_above")}
    assert top == {k: res["windows"]["all"][k] for k in top}
    norm = next(r for r in res["per_tensor"] if r["name"] == "model.norm.weight")
    assert norm["n_defined"] == 0
    saved = load_file(tmp_path / "w.safetensors")
    ref = reference(values, STEPS, SHAPES)
    for n, shape in SHAPES.items():
        assert saved[n].shape == shape and saved[n].dtype == np.float32
        assert np.allclose(saved[n].ravel(), ref[n], atol=1e-6, equal_nan=True)
    json.dumps(res, allow_nan=True)
    hm = res["heatmap"]
    assert hm["layers"] == [0, 1] and "self_attn.q_proj" in hm["modules"] and "mlp.experts.up_proj" in hm["modules"]
    assert set(hm["side"]) == {"embed_tokens", "norm", "lm_head"}


def test_lin_filters_and_sampling_match_reference():
    values = make_values(torch.bfloat16, seed=3)
    traj = MemTrajectory(values)
    kw = dict(sample_fraction=0.1, min_samples=5, min_abs_change=1e-2, min_unique=4, sample_seed=42)
    res = weight_linearity(traj, chunk_elements=200, progress=False, **kw)
    idx = {n: sample_indices(int(np.prod(s)), sample_size(int(np.prod(s)), 0.1, 5), 42, n) for n, s in SHAPES.items()}
    x = np.asarray(STEPS, float)
    kept = []
    for n in SHAPES:
        y = np.stack([values[s][n].double().numpy().ravel() for s in STEPS])[:, idx[n]]
        for j in range(y.shape[1]):
            col = y[:, j]
            if np.ptp(col) > 1e-2 and len(np.unique(col)) >= 4:
                kept.append(np.corrcoef(x, col)[0, 1] ** 2)
    kept = np.asarray(kept)
    assert res["n_weights"] == sum(len(i) for i in idx.values())
    assert res["n_defined"] == kept.size > 0
    assert abs(res["mean"] - kept.mean()) < 1e-9 and abs(res["median"] - np.median(kept)) < 1e-6


def test_parse_name():
    assert parse_name("model.layers.12.self_attn.q_proj.weight") == ("self_attn.q_proj", 12)
    assert parse_name("model.layers.3.mlp.experts.17.down_proj.weight") == ("mlp.experts.down_proj", 3)
    assert parse_name("model.layers.0.self_attn.k_proj.bias") == ("self_attn.k_proj.bias", 0)
    assert parse_name("model.embed_tokens.weight") == ("embed_tokens", None)
    assert parse_name("lm_head.weight") == ("lm_head", None)
    assert parse_name("transformer.h.5.attn.c_attn.weight") == ("attn.c_attn", 5)


@pytest.mark.parametrize("engine", [pytest.param("kernel", marks=NEEDS_NUMBA), "torch"])
def test_histogram_path_and_abs_change_filter(monkeypatch, engine):
    """Large-tensor path (histogram medians, bound 2**-20) with LIN's min-abs-change filter alone."""
    from rlvr_linearity.linearity import weights as wmod

    monkeypatch.setattr(wmod, "SMALL_TENSOR", 10)
    values = make_values(torch.float32, seed=5)
    res = weight_linearity(MemTrajectory(values), windows=[9, "all"], min_abs_change=0.05, chunk_elements=500,
                           progress=False, engine=engine)
    for label, steps in (("9", STEPS[:5]), ("all", STEPS)):
        x = np.asarray(steps, float)
        per = {}
        for n in SHAPES:
            y = np.stack([values[s][n].double().numpy().ravel() for s in steps])
            per[n] = np.array([np.corrcoef(x, y[:, j])[0, 1] ** 2 for j in range(y.shape[1]) if np.ptp(y[:, j]) > 0.05])
        allv = np.concatenate(list(per.values()))
        w = res["windows"][label]
        assert w["n_defined"] == allv.size
        assert abs(w["mean"] - allv.mean()) < 1e-9 and abs(w["median"] - np.median(allv)) < 1e-6
        for row in w["per_tensor"]:
            if per[row["name"]].size:
                if label == "all":  # per-tensor medians: largest window only
                    assert abs(row["median"] - np.median(per[row["name"]])) < 1e-6
                else:
                    assert row["median"] is None
                assert abs(row["mean"] - per[row["name"]].mean()) < 1e-9


@NEEDS_NUMBA
def test_kernel_histogram_counts_past_its_uint8_counters(monkeypatch):
    """Hundreds of weights with the same trajectory land in one histogram bin: the kernel's uint8
    counters wrap into their spill counters (every 256 counts) and no count is lost."""
    from rlvr_linearity.linearity import weights as wmod

    monkeypatch.setattr(wmod, "SMALL_TENSOR", 10)
    g = torch.Generator().manual_seed(11)
    patterns = torch.randn(len(STEPS), 3, generator=g) + torch.tensor(STEPS, dtype=torch.float32)[:, None] * 0.3
    pick = torch.randint(0, 3, (700, 4), generator=g)
    pick[:300] = 0  # a bin holding well over 2 x 256 weights of one tensor
    noise = torch.randn(len(STEPS), 700, 4, generator=g)
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    values = {s: {n: (patterns[i][pick] + (noise[i] if n == names[1] else 0)).to(torch.bfloat16) for n in names}
              for i, s in enumerate(STEPS)}
    traj = MemTrajectory(values)
    traj.tensor_names = names
    res = weight_linearity(traj, windows=[5, "all"], chunk_elements=7 * 4 * 50, progress=False, engine="kernel")
    for label, steps in (("5", STEPS[:4]), ("all", STEPS)):
        per = {n: r[~np.isnan(r)] for n, r in reference(values, steps, names).items()}
        allv = np.concatenate(list(per.values()))
        w = res["windows"][label]
        assert w["n_defined"] == allv.size == 2 * 2800
        assert abs(w["median"] - np.median(allv)) < 1e-6
        assert sum(w["histogram"]) == allv.size
        assert w["histogram"] == np.bincount(np.minimum((allv * 100).astype(int), 99), minlength=100).tolist()
        if label == "all":
            for row in w["per_tensor"]:
                assert abs(row["median"] - np.median(per[row["name"]])) < 1e-6
