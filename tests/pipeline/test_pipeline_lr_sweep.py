"""experiment=demo_lr_sweep: results.json's rank-1 coefficient fit (RELEX's first window, scored on
the later steps) against an independent computation from the checkpoints, and the preset's sweep
over train.lr composing into distinct pipeline jobs."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import compose_config, make_trajectory
from safetensors.torch import load_file

from rlvr_linearity.pipeline.app import run_pipeline


def _deltas(tt, name: str) -> np.ndarray:
    """Rows Δ_s = W_s − W_0 of one tensor for every saved step, read from the files."""
    base = load_file(str(tt.base / "model.safetensors"))[name].double()
    return np.stack([(load_file(str(tt.step_dirs[s] / "model.safetensors"))[name].double() - base).flatten().numpy()
                     for s in tt.steps])


def _out_of_sample_r2(m: np.ndarray, steps: np.ndarray, history: int) -> float | None:
    """RELEX's direction (top right singular vector of the window's deltas), its coefficients on
    every step, a line fitted on the window, 1 − SS_res/SS_tot on the later steps."""
    n = int(np.sum(steps <= history))
    v1 = np.linalg.svd(m[:n], full_matrices=False)[2][0]
    c = m @ v1
    slope, intercept = np.polyfit(steps[:n], c[:n], 1)
    later = c[n:]
    ss_tot = np.sum((later - later.mean()) ** 2)
    return None if ss_tot == 0 else 1.0 - np.sum((later - (intercept + slope * steps[n:])) ** 2) / ss_tot


def test_results_hold_the_coefficients_out_of_sample_r2(tmp_path):
    steps = (1, 2, 3, 4, 5, 6, 7, 8)
    tt = make_trajectory(tmp_path / "t", "checkpoint", steps, drift="random", write_json=True, seed=3)
    cfg = compose_config("pipeline", "logger=none", f"trajectory.path={tt.path}", f"paths.cache_dir={tmp_path / 'cache'}",
                         f"output_dir={tmp_path / 'out'}", "pipeline.stages=[linearity]",
                         "linearity.coefficient_history=3", "linearity.windows=[3,all]")
    run_pipeline(cfg, tmp_path / "out")
    lin = json.loads((tmp_path / "out" / "results.json").read_text())["linearity"]
    expected = [r for name in tt.names
                if (r := _out_of_sample_r2(_deltas(tt, name), np.array(steps, float), 3)) is not None]
    assert len(expected) == len(tt.names) and lin["coefficient_history"] == 3
    assert np.isclose(lin["coefficient_r2_out_of_sample"], np.median(expected), rtol=1e-6, atol=1e-9)
    assert lin["coefficient_r2_in_sample"] <= 1.0
    assert "train" not in json.loads((tmp_path / "out" / "results.json").read_text())  # not trained here


def test_a_linear_trajectory_stays_on_its_line(tmp_path):
    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3, 4, 5, 6), drift="linear", noise=1e-4,
                         write_json=True, dtype=torch.float64)
    cfg = compose_config("pipeline", "logger=none", f"trajectory.path={tt.path}", f"paths.cache_dir={tmp_path / 'cache'}",
                         f"output_dir={tmp_path / 'out'}", "pipeline.stages=[linearity]", "linearity.coefficient_history=3")
    run_pipeline(cfg, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["linearity"]["coefficient_r2_out_of_sample"] > 0.99


def test_lr_sweep_preset_composes_and_dry_runs_distinct_jobs(tmp_path):
    """`rlvr pipeline -m experiment=demo_lr_sweep train.lr=...`: the demo's recipe with the sweep's
    lighter stages; each learning rate its own train stage, the demo's lr the demo's train stage."""
    demo = compose_config("pipeline", "experiment=demo", "logger=none")
    plans = {}
    for lr in ("3e-6", "1e-5", "3e-5"):
        cfg = compose_config("pipeline", "experiment=demo_lr_sweep", f"train.lr={lr}", "logger=none",
                             "pipeline.dry_run=true", f"pipeline.stage_dir={tmp_path / 'stages'}")
        assert cfg.train.lr == float(lr) and cfg.train.steps == demo.train.steps == 90
        assert cfg.linearity.coefficient_history == 14 and list(cfg.extrapolate.windows) == [14, 23]
        assert "logits" not in cfg.pipeline.stages
        plans[lr] = {row["stage"]: row["key"] for row in run_pipeline(cfg, tmp_path / lr)["dry_run"]}
    assert len({p["train"] for p in plans.values()}) == 3
    assert len({tuple(p.values()) for p in plans.values()}) == 3
    demo_plan = run_pipeline(compose_config("pipeline", "experiment=demo", "logger=none", "pipeline.dry_run=true",
                                            f"pipeline.stage_dir={tmp_path / 'stages'}"), tmp_path / "demo")["dry_run"]
    assert {r["stage"]: r["key"] for r in demo_plan}["train"] == plans["3e-5"]["train"]
