"""`rlvr linearity` end to end on tiny on-disk trajectories: the contract's JSON against a float64
numpy reference of the stored values, figures, the CLI, and errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, make_trajectory

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.kernels.common import available as numba_available

NEEDS_NUMBA = pytest.mark.skipif(not numba_available(), reason="numba not installed (fused kernel)")

STEPS = (1, 2, 4, 7, 8, 12)


def compose_cfg(*overrides):
    return compose_config("linearity", "logger=none", *overrides, validate=False)


def reference(tt, steps):
    x = np.asarray(steps, float)
    per = {}
    for n in tt.names:
        y = np.stack([tt.values[s][n].numpy().ravel() for s in steps])
        r = np.full(y.shape[1], np.nan)
        for j in range(y.shape[1]):
            if np.ptp(y[:, j]) > 0:
                r[j] = np.corrcoef(x, y[:, j])[0, 1] ** 2
        per[n] = r
    return per


@pytest.mark.parametrize("tied,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_analyse_matches_reference(tmp_path, rlvr_cache, tied, dtype):
    from rlvr_linearity.linearity.app import analyse

    tt = make_trajectory(tmp_path / "run", layout="checkpoint", steps=STEPS, tied=tied, dtype=dtype,
                         drift="random", scale=1e-2, write_json=True)
    cfg = compose_cfg(f"trajectory.path={tt.path}", "linearity.windows=[4,8,all]",
                      "linearity.save_per_weight=true")
    out = tmp_path / "out"
    summary = analyse(cfg, out)
    res = json.loads((out / "linearity" / "weights_r2.json").read_text())
    assert set(res) >= {"steps", "n_weights", "n_defined", "mean", "median", "frac_above", "per_tensor", "windows"}
    assert set(res["frac_above"]) == {"0.5", "0.7", "0.9"}
    assert res["steps"] == [0, *STEPS]
    for label, steps in (("4", [0, 1, 2, 4]), ("8", [0, 1, 2, 4, 7, 8]), ("all", [0, *STEPS])):
        ref = reference(tt, steps)
        allv = np.concatenate(list(ref.values()))
        d = allv[~np.isnan(allv)]
        w = res["windows"][label]
        assert w["n_weights"] == allv.size and w["n_defined"] == d.size
        assert abs(w["mean"] - d.mean()) < 1e-6 and abs(w["median"] - np.median(d)) < 1e-6
        assert abs(w["frac_above"]["0.7"] - np.mean(d > 0.7)) < 1e-12
    names = [r["name"] for r in res["per_tensor"]]
    assert sorted(names) == sorted(tt.names) and ("lm_head.weight" in names) == (not tied)
    for r in res["per_tensor"]:
        assert set(r) >= {"name", "numel", "n_defined", "mean", "median", "frac_above_0.7"}
    from safetensors.numpy import load_file
    saved = load_file(out / "linearity" / "weights_r2.safetensors")
    ref = reference(tt, [0, *STEPS])
    for n in tt.names:
        assert np.allclose(saved[n].ravel(), ref[n], atol=1e-6, equal_nan=True)
    assert summary["median"] == res["median"] and summary["dir"] == str(out)
    assert (out / "figures" / "weight_r2_histogram.png").exists() and (out / "figures" / "weight_r2_heatmap.png").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_lowrank_json_vs_svd(tmp_path, rlvr_cache):
    from rlvr_linearity.linearity.app import analyse

    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", write_json=True)
    cfg = compose_cfg(f"trajectory.path={tt.path}", "linearity.weights=false", "linearity.windows=[4,all]",
                      "linearity.ranks=[1,2]", "linearity.coefficient_history=7", "linearity.reconstruct_steps=[8]",
                      "linearity.reconstruct_rank=2")
    analyse(cfg, tmp_path / "out")
    rep = json.loads((tmp_path / "out" / "linearity" / "lowrank.json").read_text())
    for n in tt.names:
        m = np.stack([(tt.values[s][n] - tt.values[0][n]).numpy().ravel() for s in STEPS])
        for label, k in (("4", 3), ("all", len(STEPS))):
            sv = np.linalg.svd(m[:k], compute_uv=False)
            for r in (1, 2):
                assert abs(rep["windows"][label]["per_tensor"][n][str(r)] - np.sum(sv[:r] ** 2) / np.sum(sv ** 2)) < 1e-6
        _, _, vt = np.linalg.svd(m[:4], full_matrices=False)
        c = m @ vt[0]
        c = -c if c[-1] < 0 else c
        co = rep["coefficients"]["per_tensor"][n]
        assert np.allclose(co["coefficients"], c, atol=1e-8 * max(1, np.abs(c).max()))
        assert abs(co["r2_in_sample"] - np.corrcoef(STEPS[:4], c[:4])[0, 1] ** 2) < 1e-6
        # reconstruct: projection of step 8's delta on the window's top-2 subspace (window = steps <= 7)
    from safetensors.numpy import load_file
    rec = load_file(tmp_path / "out" / "linearity" / "reconstruct" / "step_8_rank2" / "model.safetensors")
    for n in tt.names:
        m = np.stack([(tt.values[s][n] - tt.values[0][n]).numpy().ravel() for s in STEPS])
        _, _, vt = np.linalg.svd(m[:4], full_matrices=False)
        want = tt.values[0][n].numpy().ravel() + vt[:2].T @ (vt[:2] @ m[4])
        assert np.allclose(rec[n].ravel(), want, atol=1e-5)


def test_bad_window_is_config_error(tmp_path, rlvr_cache):
    from rlvr_linearity.linearity.app import analyse

    tt = make_trajectory(tmp_path / "run", steps=(1, 2, 3), write_json=True)
    with pytest.raises(ConfigError, match="window 10"):
        analyse(compose_cfg(f"trajectory.path={tt.path}", "linearity.windows=[10]"), tmp_path / "out")


def test_max_step_cuts_every_window(tmp_path, rlvr_cache):
    """linearity.max_step: "all" and the low-rank fits end there; the smaller of it and
    trajectory.max_step wins; a window beyond it is a config error."""
    from rlvr_linearity.linearity.app import analyse

    tt = make_trajectory(tmp_path / "run", steps=(1, 2, 3, 5, 8), write_json=True)
    base = (f"trajectory.path={tt.path}", "linearity.logprobs=false")
    assert analyse(compose_cfg(*base, "linearity.max_step=3"), tmp_path / "a")["steps"] == [0, 1, 2, 3]
    lowrank = json.loads((tmp_path / "a" / "linearity" / "lowrank.json").read_text())
    assert lowrank["steps"] == [1, 2, 3]
    both = compose_cfg(*base, "linearity.max_step=5", "trajectory.max_step=2")
    assert analyse(both, tmp_path / "b")["steps"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="window 5"):
        analyse(compose_cfg(*base, "linearity.max_step=3", "linearity.windows=[5]"), tmp_path / "c")


def test_cli(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "run", layout="verl", steps=(1, 2, 3, 5), write_json=True)
    rlvr = Path(sys.executable).parent / "rlvr"
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache)}
    p = subprocess.run([str(rlvr), "linearity", f"trajectory.path={tt.path}", f"output_dir={tmp_path / 'o'}",
                        "logger=none"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "o" / "linearity" / "weights_r2.json").read_text())
    assert res["n_defined"] > 0 and 0 <= res["median"] <= 1
    assert json.loads((tmp_path / "o" / "linearity" / "lowrank.json").read_text())["summary"]["rank1_ev"]["n"] > 0
    assert (tmp_path / "o" / "figures" / "rank1_coefficients.png").exists()
    p = subprocess.run([str(rlvr), "linearity", f"trajectory.path={tt.path}", f"output_dir={tmp_path / 'e'}",
                        "logger=none", "linearity.windows=[9]"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "window 9" in p.stderr
    assert not (tmp_path / "e" / "linearity" / "weights_r2.json").exists()


def test_logprob_r2_vs_full_forward(tmp_path, rlvr_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr_linearity.linearity.app import analyse

    tt = make_trajectory(tmp_path / "run", steps=(1, 3, 4), drift="random", scale=5e-2, write_json=True)
    probes = [{"index": 0, "problem": "What is 3 + 4?", "gt": "7",
               "generated_texts": [{"response_id": 0, "text": "The answer is \\boxed{7}."},
                                   {"response_id": 1, "text": "3 + 4 = 7"}]},
              {"index": 1, "problem": "What is 12 + 21?", "gt": "33",
               "generated_texts": [{"response_id": 0, "text": "The answer is \\boxed{33}."}]}]
    pf = tmp_path / "probes.json"
    pf.write_text(json.dumps(probes))
    cfg = compose_cfg(f"trajectory.path={tt.path}", "linearity.weights=false", "linearity.lowrank=false",
                      "linearity.logprobs=true", f"linearity.probes.file={pf}", "linearity.probes.batch_size=2",
                      "linearity.probes.chunk_positions=3")
    analyse(cfg, tmp_path / "out")
    res = json.loads((tmp_path / "out" / "linearity" / "logprob_r2.json").read_text())
    steps = [0, 1, 3, 4]
    assert res["steps"] == steps and res["n_sequences"] == 3
    tok = AutoTokenizer.from_pretrained(tt.base)
    rows = []
    for s in steps:
        model = AutoModelForCausalLM.from_pretrained(tt.base if s == 0 else tt.step_dirs[s], dtype=torch.float64).eval()
        vals = []
        for item in probes:
            prompt = tok.apply_chat_template([{"role": "user", "content": item["problem"]}], tokenize=False,
                                             add_generation_prompt=True)
            n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
            for g in item["generated_texts"]:
                ids = tok(prompt + g["text"], add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
                vals += [float(lp[p - 1, ids[p]]) for p in range(n_prompt, len(ids))]
        rows.append(vals)
    m = np.asarray(rows).T  # [tokens, steps]
    assert res["n_tokens_total"] == m.shape[0]
    ref = np.array([np.corrcoef(steps, r)[0, 1] ** 2 for r in m if np.ptp(r) > 0])
    assert res["logprob"]["n_defined"] == ref.size
    assert abs(res["logprob"]["mean"] - ref.mean()) < 1e-4 and abs(res["logprob"]["median"] - np.median(ref)) < 1e-4
    assert res["examples"] and "token" in res["examples"][0]
    assert (tmp_path / "out" / "figures" / "logprob_r2_histogram.png").exists()


@pytest.mark.parametrize("engine_env", [pytest.param("kernel", marks=NEEDS_NUMBA), "torch"])
def test_nan_weight_names_step_and_tensor(tmp_path, rlvr_cache, engine_env):
    from safetensors.torch import load_file, save_file

    from rlvr_linearity.errors import TrajectoryError
    from rlvr_linearity.linearity.weights import weight_linearity
    from rlvr_linearity.trajectory import open_trajectory

    tt = make_trajectory(tmp_path / "run", steps=(1, 2, 3), write_json=True)
    f = tt.step_dirs[2] / "model.safetensors"
    t = load_file(f)
    name = "model.layers.1.mlp.up_proj.weight"
    t[name][3, 5] = float("nan")
    save_file(t, str(f), metadata={"format": "pt"})
    traj = open_trajectory(path=tt.path)
    with pytest.raises(TrajectoryError, match=rf"step 2.*{name}"):
        weight_linearity(traj, engine=engine_env, progress=False)
    assert traj.check_finite


@pytest.mark.parametrize("remote_code", [False, True])
def test_generated_probes(tmp_path, rlvr_cache, monkeypatch, remote_code):
    from rlvr_linearity.evaluate.engines import hf
    from rlvr_linearity.linearity.app import analyse

    loads = []
    real = hf.load_model
    monkeypatch.setattr(hf, "load_model", lambda path, device, dtype, trust_remote_code: (
        loads.append((dtype, trust_remote_code)), real(path, device, dtype, trust_remote_code))[1])
    tt = make_trajectory(tmp_path / "run", steps=(1, 2), drift="random", scale=5e-2, write_json=True)
    cfg = compose_cfg(f"trajectory.path={tt.path}", "linearity.weights=false", "linearity.lowrank=false",
                      "linearity.logprobs=true", "linearity.probes.n_problems=2", "linearity.probes.n_samples=2",
                      "sampling.max_tokens=6", f"trajectory.trust_remote_code={remote_code}")
    analyse(cfg, tmp_path / "out")
    assert loads == [("float32", remote_code)] * 4  # the probe generator, then every step's teacher forcing
    probes = json.loads((tmp_path / "out" / "linearity" / "probes.json").read_text())
    assert len(probes) == 2 and all(len(p["generated_texts"]) == 2 for p in probes)
    res = json.loads((tmp_path / "out" / "linearity" / "logprob_r2.json").read_text())
    assert res["n_sequences"] == 4 and res["steps"] == [0, 1, 2]


def test_lin_paper_preset_reproduces_reference(tmp_path, rlvr_cache):
    from rlvr_linearity.linearity.app import analyse
    from rlvr_linearity.linearity.r2 import sample_indices, sample_size

    tt = make_trajectory(tmp_path / "run", steps=STEPS, dtype=torch.bfloat16, drift="random", scale=3e-3,
                         write_json=True)
    cfg = compose_cfg(f"trajectory.path={tt.path}", "linearity=lin_paper", "linearity.lowrank=false")
    assert (cfg.linearity.sample_fraction, cfg.linearity.min_samples, cfg.linearity.min_abs_change,
            cfg.linearity.min_unique, cfg.linearity.sample_seed) == (0.001, 50, 1e-4, 4, 42)
    analyse(cfg, tmp_path / "out")
    res = json.loads((tmp_path / "out" / "linearity" / "weights_r2.json").read_text())
    steps = [0, *STEPS]
    kept, n_sampled = [], 0
    for n in [n for n in tt.names if n.endswith(".weight")]:  # linearity.tensors=weights_only
        y = np.stack([tt.values[s][n].numpy().ravel() for s in steps])
        idx = sample_indices(y.shape[1], sample_size(y.shape[1], 0.001, 50), 42, n)
        n_sampled += idx.size
        for j in idx:
            col = y[:, j]
            if np.ptp(col) > 1e-4 and len(np.unique(col)) >= 4:
                kept.append(np.corrcoef(steps, col)[0, 1] ** 2)
    kept = np.asarray(kept)
    assert res["n_weights"] == n_sampled and res["n_defined"] == kept.size > 0
    assert abs(res["mean"] - kept.mean()) < 1e-9 and abs(res["median"] - np.median(kept)) < 1e-9
    assert (res["filters"]["min_unique"], res["filters"]["unique_filter_dtype"], res["filters"]["tensors"]) == \
        (4, "bfloat16", "weights_only")
