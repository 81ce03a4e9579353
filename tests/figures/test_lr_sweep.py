"""`rlvr figures` over the run directories of a learning-rate sweep (experiment=demo_lr_sweep):
lr_sweep.{png,md,json} from fake pipeline runs, per-lr means and sds, the "holds" verdict."""

from __future__ import annotations

import json

import pytest

from rlvr_linearity.figures.lr_sweep import summarise, sweep_row
from rlvr_linearity.figures.regenerate import regenerate


def fake_results(lr: float, seed: int, trained: float, relex: float, oos: float, base: float = 0.3) -> dict:
    """A pipeline results.json as a demo_lr_sweep job writes it (accuracies made up)."""
    return {"benchmark": "arithmetic", "trajectory": f"stages/train-{lr}-{seed}/trajectory", "base": {"step": 0, "accuracy": base},
            "rlvr": [{"step": 14, "accuracy": base + 0.02}, {"step": 90, "accuracy": trained}],
            "relex": [{"history": 14, "target": 90, "accuracy": relex}, {"history": 23, "target": 90, "accuracy": 0.0},
                      {"history": 14, "target": 30, "accuracy": 0.0},
                      {"history": 14, "target": 90, "rank": 2, "fit": "linear", "accuracy": 0.0}],
            "weight_extrapolation": [],
            "linearity": {"median_r2": 0.9 - lr * 1e3, "frac_above_0.7": 0.7, "coefficient_history": 14,
                          "coefficient_r2_in_sample": 0.99, "coefficient_r2_out_of_sample": oos},
            "train": {"lr": lr, "steps": 90, "seed": seed}}


RUNS = {"lr1e-5_s1": (1e-5, 1, 0.42, 0.41, 0.5), "lr1e-5_s2": (1e-5, 2, 0.44, 0.43, 0.7),
        "lr1e-4_s1": (1e-4, 1, 0.57, 0.18, -40.0)}


@pytest.fixture
def sweep_dir(tmp_path):
    for name, args in RUNS.items():
        d = tmp_path / "multirun" / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(fake_results(*args)))
    (tmp_path / "demo").mkdir()  # the demo run whose trained trajectory a sweep job reused: counted once
    (tmp_path / "demo" / "results.json").write_text(json.dumps(fake_results(*RUNS["lr1e-5_s1"])))
    (tmp_path / "multirun" / "given").mkdir()  # a run on a given trajectory: no `train`, not in the sweep
    (tmp_path / "multirun" / "given" / "results.json").write_text(
        json.dumps({k: v for k, v in fake_results(3e-5, 0, 0.5, 0.5, 0.9).items() if k != "train"}))
    return tmp_path / "multirun"


def test_sweep_row_takes_relex_from_the_coefficient_window_at_the_final_step():
    row = sweep_row(fake_results(1e-5, 1, 0.42, 0.40, 0.5), "r")
    assert row["final_step"] == 90 and row["relex_history"] == 14 and row["relex"] == 0.40
    assert row["relex_minus_trained"] == pytest.approx(-0.02) and row["gain"] == pytest.approx(0.12)
    assert sweep_row({k: v for k, v in fake_results(1e-5, 1, 0.4, 0.4, 0.5).items() if k != "train"}, "r") is None


def test_summary_means_sds_and_verdict():
    rows = [sweep_row(fake_results(*args), name) for name, args in RUNS.items()]
    low, high = summarise(rows)
    assert (low["lr"], low["n_runs"], high["n_runs"]) == (1e-5, 2, 1)
    assert low["trained"]["mean"] == pytest.approx(0.43) and low["trained"]["sd"] == pytest.approx(0.02 ** 0.5 / 10)
    assert low["relex_minus_trained"]["mean"] == pytest.approx(-0.01) and high["relex_minus_trained"]["sd"] == 0.0
    assert low["holds"] and not high["holds"]  # -1 point with +13 points of gain; -39 points


def test_figures_draw_the_sweep_from_run_dirs(sweep_dir, tmp_path):
    index = regenerate([sweep_dir, tmp_path / "demo"], tmp_path / "out", pdf=False)
    made = [m for m in index["made"] if m["id"] == "lr_sweep"]
    assert len(made) == 1 and len(made[0]["inputs"]) == 4  # the run without `train` is not a sweep job
    figs = tmp_path / "out" / "figures"
    assert (figs / "lr_sweep.png").stat().st_size > 10_000
    md = (figs / "lr_sweep.md").read_text()
    assert "| 1e-05 | 90 | 14 | 2 | 0.30 ± 0.00 | 0.43 ± 0.01 | +13.0 ± 1.4 | 0.42 ± 0.01 | -1.0 ± 0.0 | 0.60 ± 0.14 |" in md
    assert "| 1e-04 | 90 | 14 | 1 |" in md and md.count("| yes |") == 1
    data = json.loads((figs / "lr_sweep.json").read_text())
    assert [s["lr"] for s in data["summary"]] == [1e-5, 1e-4] and len(data["runs"]) == 3
    assert {r["run"] for r in data["runs"]} == set(RUNS)


def test_runs_of_another_length_are_their_own_rows(sweep_dir, tmp_path):
    d = sweep_dir / "long"
    d.mkdir()
    long = fake_results(1e-5, 1, 0.5, 0.49, 0.8)
    long["train"]["steps"], long["trajectory"] = 270, "stages/train-long/trajectory"
    (d / "results.json").write_text(json.dumps(long))
    regenerate([sweep_dir], tmp_path / "out", pdf=False)
    data = json.loads((tmp_path / "out" / "figures" / "lr_sweep.json").read_text())
    assert [(s["lr"], s["steps"], s["n_runs"]) for s in data["summary"]] == [(1e-5, 90, 2), (1e-5, 270, 1), (1e-4, 90, 1)]


def test_one_learning_rate_draws_no_sweep(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(fake_results(1e-5, 1, 0.4, 0.4, 0.5)))
    index = regenerate([d], tmp_path / "out", pdf=False)
    assert "lr_sweep" in {m["id"] for m in index["missing"]} and not (tmp_path / "out/figures/lr_sweep.png").exists()
