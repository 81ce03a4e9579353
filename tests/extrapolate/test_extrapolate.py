"""RELEX and two-point weight extrapolation against independent float64 references: a full numpy
SVD of the stacked deltas (not the Gram path) with np.polyfit on step values, and the closed-form
α formula; on random trajectories with gaps, tied/untied embeddings, fp32/bf16 storage, 1-D
tensors, ranks 1-3, several windows and targets. Plus window selection, read-once, errors, CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, compose_config, make_trajectory
from safetensors.torch import load_file

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.extrapolate import relex
from rlvr_linearity.extrapolate.app import extrapolate
from rlvr_linearity.extrapolate.weight import is_norm
from rlvr_linearity.linearity import gram

STEPS = (1, 2, 4, 7, 8, 12)  # gaps
ROOT_DIR = REPO_ROOT


def compose_for(root, *overrides, group="relex"):
    """cfg_for of the trajectory that make_trajectory wrote under `root`."""
    return cfg_for(type("T", (), {"path": root / "trajectory", "base": root / "base"}), *overrides, group=group)


def cfg_for(tt, *overrides, group="relex"):
    return compose_config("extrapolate", "logger=none", f"extrapolate={group}", f"trajectory.path={tt.path}",
                          f"trajectory.base={tt.base}", *overrides, validate=False)


def ref_relex(tt, steps, target, rank=1, fit="linear", degree=2, mode="extrapolate"):
    """W_0 + Δ̂ per tensor from numpy's SVD of the stacked float64 deltas."""
    out = {}
    x = np.asarray(steps, float)
    for n in tt.names:
        w0 = tt.values[0][n].numpy()
        m = np.stack([(tt.values[s][n].numpy() - w0).ravel() for s in steps])
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        k = int(np.sum(s[:rank] > 1e-6 * s[0])) if s[0] > 0 else 0
        c = u[:, :k] * s[:k]
        if mode == "reconstruct":
            chat = c[list(steps).index(target)]
        else:
            deg = 1 if fit == "linear" else degree
            chat = np.array([np.polyval(np.polyfit(x, c[:, i], deg), target) for i in range(k)])
        out[n] = w0 + (chat @ vt[:k]).reshape(w0.shape)
    return out


def assert_close(path, ref, tol=1e-5):
    got = load_file(str(Path(path) / "model.safetensors"))
    assert set(got) == set(ref)
    for n, r in ref.items():
        g = got[n].double().numpy()
        err = np.abs(g - r).max() / max(np.abs(r).max(), 1e-30)
        assert err < tol, (path, n, err)


@pytest.mark.parametrize("tied,dtype,rank,fit,drift", [
    (True, torch.float32, 1, "linear", "linear"),
    (False, torch.bfloat16, 3, "linear", "random"),
    (False, torch.float32, 2, "polynomial", "random"),
])
def test_relex_windows_targets_vs_numpy_svd(tmp_path, rlvr_cache, tied, dtype, rank, fit, drift):
    tt = make_trajectory(tmp_path / "t", "checkpoint", STEPS, tied=tied, dtype=dtype, drift=drift, noise=1e-3)
    out = tmp_path / "out"
    cfg = cfg_for(tt, "extrapolate.windows=[7,12]", "extrapolate.targets=[15,30]", f"extrapolate.rank={rank}",
                  f"extrapolate.fit={fit}", "extrapolate.dtype=float32", "extrapolate.memory_budget=2000")
    res = extrapolate(cfg, out)
    for h, steps in ((7, [1, 2, 4, 7]), (12, list(STEPS))):
        for t in (15, 30):
            assert_close(out / "extrapolate" / f"h{h}" / f"step_{t}", ref_relex(tt, steps, t, rank, fit))
    saved = json.loads((out / "extrapolate" / "extrapolation.json").read_text())
    assert saved["method"] == "relex" and [w["steps"] for w in saved["windows"]] == [[1, 2, 4, 7], list(STEPS)]
    assert saved["windows"][0]["targets"][1]["target"] == 30
    ev = saved["windows"][1]["explained_variance"]
    assert set(ev) == set(tt.names) and all(0 <= v <= 1 for v in ev.values())
    assert res["windows"][0]["targets"][0]["weights"].keys() == set(tt.names)


@pytest.mark.parametrize("memory_budget", [10**7, 0])
def test_relex_many_blocks_kept_or_reread(tmp_path, memory_budget):
    """Tensors cut into many blocks, kept in the reader's ring while the next tensor is read
    ahead (or read a second time): the outputs still match the SVD reference."""
    from rlvr_linearity.trajectory import open_trajectory

    tt = make_trajectory(tmp_path / "t", "checkpoint", STEPS, dtype=torch.bfloat16, drift="random", noise=1e-3)
    traj = open_trajectory(path=tt.path, base=tt.base)
    windows = relex.select_windows(traj.steps, windows=[7, 12])
    relex.run_relex(traj, windows, [15, 30], tmp_path / "out", dtype="float32", max_elements=96,
                    memory_budget=memory_budget)
    for h, steps in ((7, [1, 2, 4, 7]), (12, list(STEPS))):
        for t in (15, 30):
            assert_close(tmp_path / "out" / f"h{h}" / f"step_{t}", ref_relex(tt, steps, t))


def test_relex_single_window_layout_and_load(tmp_path, rlvr_cache):
    from transformers import AutoModelForCausalLM

    tt = make_trajectory(tmp_path / "t", "verl", STEPS, tied=True, dtype=torch.bfloat16, noise=1e-3)
    out = tmp_path / "out"
    extrapolate(cfg_for(tt, "extrapolate.history=8", "extrapolate.targets=[20]"), out)
    d = out / "extrapolate" / "step_20"
    stored = load_file(str(d / "model.safetensors"))
    assert "lm_head.weight" not in stored and all(v.dtype == torch.bfloat16 for v in stored.values())
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    ref = ref_relex(tt, [1, 2, 4, 7, 8], 20)
    emb = ref["model.embed_tokens.weight"]
    got = model.model.embed_tokens.weight.detach().double().numpy()
    assert np.abs(got - emb).max() <= 2 ** -7 * np.abs(emb).max()  # bf16 output rounding


def test_relex_reconstruct_last_and_explicit_windows(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "step", STEPS, drift="random")
    out = tmp_path / "out"
    extrapolate(cfg_for(tt, "extrapolate.mode=reconstruct", "extrapolate.rank=2", "extrapolate.targets=[4,12]",
                        "extrapolate.dtype=float32"), out / "a")
    for t in (4, 12):
        assert_close(out / "a" / "extrapolate" / f"step_{t}", ref_relex(tt, list(STEPS), t, 2, mode="reconstruct"))
    extrapolate(cfg_for(tt, "extrapolate.last=3", "extrapolate.history=8", "extrapolate.targets=[10]",
                        "extrapolate.dtype=float32"), out / "b")
    assert_close(out / "b" / "extrapolate" / "step_10", ref_relex(tt, [4, 7, 8], 10))
    extrapolate(cfg_for(tt, "extrapolate.window=[12,2,7]", "extrapolate.targets=[13]", "extrapolate.dtype=float32"),
                out / "c")
    assert_close(out / "c" / "extrapolate" / "step_13", ref_relex(tt, [2, 7, 12], 13))


def test_relex_weights_pure_math_vs_svd():
    rng = np.random.default_rng(0)
    steps = [3, 5, 6, 10, 17]
    m = rng.standard_normal((5, 40)) + np.outer(steps, rng.standard_normal(40))
    for rank in (1, 2, 3, 5):
        tf = relex.relex_weights(m @ m.T, steps, [20, 31], rank=rank)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        c = u[:, :rank] * s[:rank]
        chat = np.stack([[np.polyval(np.polyfit(steps, c[:, i], 1), t) for i in range(rank)] for t in (20, 31)])
        assert np.allclose(tf.weights @ m, chat @ vt[:rank], atol=1e-9)
        assert np.isclose(tf.explained_variance, (s[:rank] ** 2).sum() / (s ** 2).sum())
    zero = relex.relex_weights(np.zeros((3, 3)), [1, 2, 3], [5])
    assert zero.rank == 0 and not zero.weights.any() and zero.explained_variance is None
    assert np.allclose(relex.fit_hat([1, 2, 4], [6], "polynomial", 2) @ np.array([1.0, 4, 16]), 36)


def test_select_windows():
    avail = [0, 1, 2, 4, 7, 8, 12]
    assert [w.steps for w in relex.select_windows(avail, history=7)] == [[1, 2, 4, 7]]
    assert [w.steps for w in relex.select_windows(avail, history=6)] == [[1, 2, 4]]
    assert [w.label for w in relex.select_windows(avail, windows=[4, 12])] == ["h4", "h12"]
    assert [w.steps for w in relex.select_windows(avail, last=2)] == [[8, 12]]
    assert [w.steps for w in relex.select_windows(avail, window=[8, 2])] == [[2, 8]]
    for kw in ({"history": 13}, {"window": [3, 4]}, {"last": 7}, {"window": [0, 1]}, {"history": 0},
               {"history": 4, "windows": [4]}, {"window": [1, 2], "history": 4}):
        with pytest.raises(ConfigError):
            relex.select_windows(avail, **kw)


def test_read_once_sweep_4_windows_3_targets(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", STEPS, drift="random")
    per_step = sum(v.numel() * 4 for v in tt.values[0].values())
    args = ["extrapolate.windows=[2,4,7,12]", "extrapolate.targets=[13,20,40]", "extrapolate.dtype=float32",
            f"paths.cache_dir={tmp_path / 'cache'}"]  # a cache of its own: the first sweep must miss
    before = gram.bytes_read()
    res = extrapolate(cfg_for(tt, *args), tmp_path / "a")
    assert gram.bytes_read() - before == per_step * (len(STEPS) + 1)  # the union, once: Grams and 12 outputs
    assert not res["gram_cache_hit"] and len(list((tmp_path / "a" / "extrapolate").glob("h*/step_*"))) == 12
    before = gram.bytes_read()  # a later sweep: Grams from the cache, one read for the outputs
    res2 = extrapolate(cfg_for(tt, *args), tmp_path / "b")
    assert res2["gram_cache_hit"] and gram.bytes_read() - before == per_step * (len(STEPS) + 1)
    before = gram.bytes_read()  # tensors over the memory budget: Gram pass + output pass
    extrapolate(cfg_for(tt, *args, "extrapolate.cache=false", "extrapolate.memory_budget=0"), tmp_path / "c")
    assert gram.bytes_read() - before == 2 * per_step * (len(STEPS) + 1)
    for p in (tmp_path / "a" / "extrapolate").glob("h*/step_*"):
        q = tmp_path / "c" / p.relative_to(tmp_path / "a")
        a, c = load_file(str(p / "model.safetensors")), load_file(str(q / "model.safetensors"))
        assert all(torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("tied,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_weight_extrapolation_closed_form(tmp_path, rlvr_cache, tied, dtype):
    tt = make_trajectory(tmp_path / "t", "global_step", STEPS, tied=tied, dtype=dtype, drift="random")
    for a_step, b_step, norms in ((0, 4, False), (2, 7, True)):
        out = tmp_path / f"out{a_step}"
        res = extrapolate(cfg_for(tt, f"extrapolate.base_step={a_step}", f"extrapolate.second_step={b_step}",
                                  "extrapolate.targets=[8,20]", "extrapolate.dtype=float32",
                                  f"extrapolate.extrapolate_norms={norms}", group="weight"), out)
        assert [t["alpha"] for t in res["targets"]] == [(t - a_step) / (b_step - a_step) for t in (8, 20)]
        for t in (8, 20):
            al = (t - a_step) / (b_step - a_step)
            ref = {}
            for n in tt.names:
                wa, wb = tt.values[a_step][n].numpy(), tt.values[b_step][n].numpy()
                ref[n] = wb if (is_norm(n) and not norms) else wa + al * (wb - wa)
            assert_close(out / "extrapolate" / f"step_{t}", ref)
        assert bool(res["copied_from_second"]) != norms
    assert "lm_head.weight" in tt.names or tied


def test_is_norm():
    assert is_norm("model.layers.0.input_layernorm.weight") and is_norm("model.norm.weight")
    assert is_norm("model.layers.3.self_attn.q_norm.weight") and is_norm("transformer.h.0.ln_1.bias")
    assert not is_norm("model.layers.0.self_attn.q_proj.bias") and not is_norm("model.embed_tokens.weight")
    assert not is_norm("lm_head.weight")


@pytest.mark.parametrize("overrides,needle", [
    (["extrapolate.history=13", "extrapolate.targets=[20]"], "history=13"),
    (["extrapolate.window=[1,3]", "extrapolate.targets=[20]"], "[3]"),
    (["extrapolate.history=8", "extrapolate.targets=[7]"], "target 7"),
    (["extrapolate.history=4", "extrapolate.rank=4", "extrapolate.targets=[20]"], "rank=4"),
    (["extrapolate.history=4", "extrapolate.mode=reconstruct", "extrapolate.targets=[7]"], "reconstruct target 7"),
    (["extrapolate.history=4", "extrapolate.targets=[]"], "targets is empty"),
    (["extrapolate.history=1", "extrapolate.targets=[5]"], "at least 2"),
])
def test_relex_errors(tmp_path, rlvr_cache, overrides, needle):
    tt = make_trajectory(tmp_path / "t", "step", STEPS)
    with pytest.raises(ConfigError, match=None) as e:
        extrapolate(cfg_for(tt, *overrides), tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "extrapolate").exists() or not any((tmp_path / "out" / "extrapolate").iterdir())


@pytest.mark.parametrize("overrides,needle", [
    (["extrapolate.base_step=4", "extrapolate.second_step=4", "extrapolate.targets=[8]"], "equals"),
    (["extrapolate.second_step=5", "extrapolate.targets=[8]"], "second_step=5"),
])
def test_weight_errors(tmp_path, rlvr_cache, overrides, needle):
    tt = make_trajectory(tmp_path / "t", "step", STEPS)
    with pytest.raises(ConfigError) as e:
        extrapolate(cfg_for(tt, *overrides, group="weight"), tmp_path / "out")
    assert needle in str(e.value)


def _cli(args, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "rlvr_linearity", "extrapolate", *args, "logger=none"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_cli_relex_and_weight(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", STEPS, tied=True, noise=1e-3, write_json=True)
    p = _cli([f"trajectory.path={tt.path}", "extrapolate.history=8", "extrapolate.targets=[16,24]",
              f"output_dir={tmp_path / 'r'}", "extrapolate.dtype=float32"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    for t in (16, 24):
        assert_close(tmp_path / "r" / "extrapolate" / f"step_{t}", ref_relex(tt, [1, 2, 4, 7, 8], t))
    p = _cli([f"trajectory.path={tt.path}", "extrapolate=weight", "extrapolate.base_step=0",
              "extrapolate.second_step=4", "extrapolate.targets=[8,12]", f"output_dir={tmp_path / 'w'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    saved = json.loads((tmp_path / "w" / "extrapolate" / "extrapolation.json").read_text())
    assert saved["method"] == "weight" and [t["alpha"] for t in saved["targets"]] == [2.0, 3.0]
    p = _cli([f"trajectory.path={tt.path}", "extrapolate.method=weight", "extrapolate.second_step=4",  # contract form
              "extrapolate.targets=[8,12]", f"output_dir={tmp_path / 'w2'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    for t in (8, 12):
        a = load_file(str(tmp_path / "w" / "extrapolate" / f"step_{t}" / "model.safetensors"))
        b = load_file(str(tmp_path / "w2" / "extrapolate" / f"step_{t}" / "model.safetensors"))
        assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("args", [
    ["extrapolate.history=50", "extrapolate.targets=[60]"],
    ["extrapolate.history=8", "extrapolate.targets=[4]"],
    ["extrapolate=weight", "extrapolate.second_step=0", "extrapolate.targets=[4]"],
])
def test_cli_errors_exit_2_one_line(tmp_path, rlvr_cache, args):
    tt = make_trajectory(tmp_path / "t", "step", STEPS, write_json=True)
    p = _cli([f"trajectory.path={tt.path}", f"output_dir={tmp_path / 'o'}", *args], tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert not list((tmp_path / "o").rglob("*.safetensors"))


def test_hub_trajectory_downloads_only_the_histories():
    from omegaconf import OmegaConf

    from rlvr_linearity.extrapolate.app import _hub_max_step

    def cfg(tr, ex):
        return OmegaConf.create({"trajectory": {"hub_repo": "org/repo", "steps": None, "max_step": None, **tr},
                                 "extrapolate": {"history": None, "window": None, "last": None, "windows": None,
                                                 "gram_steps": "window", **ex}})

    assert _hub_max_step(cfg({}, {"history": 75}), cfg({}, {"history": 75}).extrapolate) == 75
    c = cfg({}, {"windows": [25, 50, 100]})
    assert _hub_max_step(c, c.extrapolate) == 100
    c = cfg({}, {"history": 75, "last": 5})
    assert _hub_max_step(c, c.extrapolate) == 75
    c = cfg({"max_step": 500}, {"history": 75})  # the RELEX 1.5B preset: 75 steps, not 500
    assert _hub_max_step(c, c.extrapolate) == 75
    c = cfg({"max_step": 30}, {"history": 75})
    assert _hub_max_step(c, c.extrapolate) == 30
    for c in (cfg({"hub_repo": None}, {"history": 75}), cfg({}, {"window": [1, 2]}), cfg({}, {"last": 5}),
              cfg({}, {"history": 75, "gram_steps": "all"}), cfg({"steps": [1, 2]}, {"history": 75})):
        assert _hub_max_step(c, c.extrapolate) is None


def test_multirun_sweep_shares_one_gram_pass_and_reruns_do_nothing(tmp_path, rlvr_cache):
    """`rlvr extrapolate -m` over 4 windows × 3 targets with gram_steps=all: one Gram pass over the
    trajectory for the whole sweep, each prediction written once; the same sweep again does no work."""
    tt = make_trajectory(tmp_path / "t", "checkpoint", STEPS, drift="random", write_json=True)
    per_step = sum(v.numel() * 4 for v in tt.values[0].values())
    histories = (2, 4, 7, 12)
    args = ["-m", f"trajectory.path={tt.path}", f"extrapolate.history={','.join(map(str, histories))}",
            "extrapolate.targets=[13,20,40]", "extrapolate.gram_steps=all", "extrapolate.dtype=float32",
            f"paths.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'sweep'}/h${{extrapolate.history}}"]
    p = _cli(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {h: json.loads((tmp_path / "sweep" / f"h{h}" / "extrapolate" / "extrapolation.json").read_text())
            for h in histories}
    window = {h: len([s for s in STEPS if s <= h]) for h in histories}
    assert runs[2]["gram_source"] == "shared pass"  # the first job reads every step once for the Grams
    assert runs[2]["bytes_read"] == per_step * (len(STEPS) + 1) + per_step * (window[2] + 1)
    for h in histories[1:]:  # the others cut their Grams out of it and read only their window to write
        assert runs[h]["gram_source"] == "cache" and runs[h]["bytes_read"] == per_step * (window[h] + 1)
    for h in histories:
        for t in (13, 20, 40):
            assert_close(tmp_path / "sweep" / f"h{h}" / "extrapolate" / f"step_{t}",
                         ref_relex(tt, [s for s in STEPS if s <= h], t))
    files = sorted((tmp_path / "sweep").rglob("*.safetensors")) + sorted((tmp_path / "sweep").rglob("extrapolation.json"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    p = _cli(args + ["verbose=true"], tmp_path)  # the "nothing to do" line is INFO, shown when verbose
    assert p.returncode == 0, p.stderr[-3000:]
    assert (p.stdout + p.stderr).count("nothing to do") == len(histories)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


# ----------------------------------------------------------------------------- integrity (issue 18)
def _poison_in_place(f: Path) -> str:
    """Write a NaN into the weights of safetensors file `f` in place, between the fingerprint's
    first two sampled 64 KiB ranges, keeping size, header, inode and mtime: only a full read can
    tell. Returns the poisoned tensor's name."""
    from rlvr_linearity.trajectory.files import read_header

    hd = read_header(f)
    data0, size = 8 + len(hd.raw), hd.size
    span = size - data0 - (1 << 16)
    assert span // 3 > 3 << 16, "model too small for an unsampled gap"
    at = data0 + (1 << 16) + (span // 3 - (1 << 16)) // 2  # the middle of the gap
    name, ti = next((n, ti) for n, ti in hd.tensors.items() if ti.start <= at < ti.stop and ti.dtype == torch.float32)
    at -= (at - ti.start) % 4
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(at)
        fh.write(np.float32(np.nan).tobytes())
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    return name


def test_nan_trajectory_matching_a_cached_clean_one_still_exits_2(tmp_path, rlvr_cache):
    """The Grams of a clean run are cached; then a NaN is written where the fingerprint does not
    look (same size, header, sampled bytes, inode and mtime). The prediction pass, which reads
    every weight, still finds it: exit 2, one line naming step and tensor, no prediction."""
    from rlvr_linearity.errors import TrajectoryError
    from rlvr_linearity.trajectory import open_trajectory

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3, 4), hidden=128)
    clean = extrapolate(cfg_for(tt, "extrapolate.targets=[8]"), tmp_path / "clean")
    assert clean["gram_source"] == "window"
    assert extrapolate(cfg_for(tt, "extrapolate.targets=[9]"), tmp_path / "clean9")["gram_source"] == "cache"
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "t", copy)
    fp = open_trajectory(path=tt.path, base=tt.base).fingerprint()
    name = _poison_in_place(tt.step_dirs[3] / "model.safetensors")
    assert open_trajectory(path=tt.path, base=tt.base).fingerprint() == fp  # the cache will answer
    out = tmp_path / "poisoned"
    p = _cli([f"trajectory.path={tt.path}", f"trajectory.base={tt.base}", "extrapolate.targets=[8]",
              f"output_dir={out}"], tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "NaN/Inf" in lines[0] and "step 3" in lines[0] and f"tensor {name}" in lines[0], lines[0]
    assert not (out / "extrapolate" / "step_8").exists() and not (out / "extrapolate" / "extrapolation.json").exists()
    # a copy (other inodes) poisoned the same way is another trajectory: its Grams are computed
    assert _poison_in_place(copy / "trajectory" / "checkpoint-3" / "model.safetensors") == name
    with pytest.raises(TrajectoryError, match="NaN/Inf"):
        extrapolate(compose_for(copy, "extrapolate.targets=[8]"), tmp_path / "copy-out")


def test_weight_extrapolation_checks_the_copied_norms(tmp_path, rlvr_cache):
    from rlvr_linearity.errors import TrajectoryError
    from safetensors.torch import save_file

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2))
    f = tt.step_dirs[2] / "model.safetensors"
    sd = load_file(str(f))
    sd["model.norm.weight"][3] = float("inf")
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(TrajectoryError, match="NaN/Inf") as e:
        extrapolate(cfg_for(tt, "extrapolate.second_step=2", "extrapolate.targets=[4]", group="weight"),
                    tmp_path / "out")
    assert "step 2" in str(e.value) and "tensor model.norm.weight" in str(e.value)


def test_second_run_into_the_same_place_refuses_and_stale_temps_go(tmp_path, rlvr_cache):
    from rlvr_linearity.errors import OutputError
    from rlvr_linearity.trajectory.writer import claim_output

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3))
    cfg = cfg_for(tt, "extrapolate.targets=[6]")
    out = tmp_path / "out"
    with claim_output(out / "extrapolate"):  # another run is writing there
        with pytest.raises(OutputError, match="another run is writing") as e:
            extrapolate(cfg, out)
    assert "\n" not in str(e.value) and str(out / "extrapolate") in str(e.value)
    # what kill -9 leaves: full-size temp dirs of a prediction (and of a replaced one)
    for stale in ("step_6.tmp-0123abcd", "step_6.old-89abcdef"):
        (out / "extrapolate" / stale).mkdir(parents=True)
        (out / "extrapolate" / stale / "model.safetensors").write_bytes(b"\0" * 4096)
    extrapolate(cfg, out)
    assert sorted(p.name for p in (out / "extrapolate").iterdir()) == ["extrapolation.json", "step_6"]
    assert_close(out / "extrapolate" / "step_6", ref_relex(tt, [1, 2, 3], 6))


def _enospc_after(monkeypatch, budget: int):
    """Make ModelWriter's files fail with ENOSPC once `budget` bytes have been written."""
    import builtins
    import errno

    from rlvr_linearity.trajectory import writer

    left = [budget]

    class Full:
        def __init__(self, f):
            self._f = f

        def __getattr__(self, k):
            return getattr(self._f, k)

        def write(self, b):
            left[0] -= len(memoryview(b).cast("B"))
            if left[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(b)

    monkeypatch.setattr(writer, "open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, rlvr_cache, monkeypatch):
    from rlvr_linearity.errors import OutputError

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3))
    out = tmp_path / "out"
    _enospc_after(monkeypatch, 20_000)
    with pytest.raises(OutputError) as e:
        extrapolate(cfg_for(tt, "extrapolate.targets=[6]"), out)
    msg = str(e.value)
    assert msg == f"no space left on device writing {out / 'extrapolate' / 'step_6' / 'model.safetensors'}", msg
    assert [p.name for p in (out / "extrapolate").iterdir()] == []


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB tmpfs (root only): a real full disk."""
    d = tmp_path / "small"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield d
    subprocess.run(["umount", "--lazy", str(d)], check=True)  # torch may still hold its failed file


def test_cli_on_a_full_disk_exits_2_one_line(tmp_path, rlvr_cache, small_disk):
    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3), hidden=48)
    p = _cli([f"trajectory.path={tt.path}", f"trajectory.base={tt.base}", "extrapolate.targets=[6]",
              f"output_dir={small_disk / 'out'}"], tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "no space left on device writing" in lines[0] and str(small_disk / "out") in lines[0], lines[0]
    assert sorted(p.name for p in (small_disk / "out" / "extrapolate").iterdir()) == []


def test_torch_save_on_a_full_disk_in_a_pipeline_stage(small_disk):
    """torch's zip writer reports a full disk as "unexpected pos" without errno or file name."""
    from rlvr_linearity.errors import OutputError
    from rlvr_linearity.pipeline.stages import StageCache

    stages = StageCache(small_disk / "stages")
    with pytest.raises(OutputError, match="no space left on device writing") as e:
        stages.run("train", {"x": 1}, lambda d: torch.save(torch.zeros(1 << 16), d / "optimizer.pt"))
    assert str(small_disk / "stages" / "train-") in str(e.value)
    assert not list((small_disk / "stages").rglob("_stage.json"))


def test_cli_unwritable_output_dir_exits_2_one_line(tmp_path, rlvr_cache):
    from conftest import without_dac

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3))
    ro = tmp_path / "ro"
    (ro / "deep" / "extrapolate").mkdir(parents=True)
    env = {**os.environ, "WANDB_MODE": "offline"}
    try:
        for out, inner in ((ro / "out", ro), (ro / "deep", ro / "deep" / "extrapolate")):
            os.chmod(inner, 0o555)
            p = subprocess.run(without_dac([sys.executable, "-m", "rlvr_linearity", "extrapolate", "logger=none",
                                            f"trajectory.path={tt.path}", f"trajectory.base={tt.base}",
                                            "extrapolate.targets=[6]", f"output_dir={out}"]),
                               capture_output=True, text=True, env=env, cwd=ROOT_DIR, timeout=300)
            assert p.returncode == 2, p.stderr[-2000:]
            lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
            assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
            assert "permission denied" in lines[0] and str(out) in lines[0], lines[0]
    finally:
        for d in (ro, ro / "deep" / "extrapolate"):
            os.chmod(d, 0o755)
