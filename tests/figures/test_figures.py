"""`rlvr figures`: paper tables against the papers' numbers, every figure function on fixture
results (real `rlvr linearity` outputs + contract-shaped pipeline/re-grounding files), the
command's index of made and missing figures, discovery through pipeline stage links."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import FIXTURES, REPO_ROOT

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.figures import linearity as lin
from rlvr_linearity.figures import paper
from rlvr_linearity.figures import paper_numbers as pn
from rlvr_linearity.figures import tables
from rlvr_linearity.figures.catalogue import CATALOGUE
from rlvr_linearity.figures.discover import discover, load_json, merge_results, results_from_evaluations
from rlvr_linearity.figures.regenerate import regenerate

FIX = FIXTURES / "figures"
REPO = REPO_ROOT


def assert_nontrivial_png(path, min_colours: int = 8):
    """A real plot: a PNG of reasonable size with many distinct colours (not a blank canvas)."""
    assert path is not None and Path(path).suffix == ".png" and Path(path).exists()
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert len(np.unique(img.reshape(-1, 3), axis=0)) >= min_colours


# -- tables against the papers -----------------------------------------------------------
def test_table1_both_conventions_reproduce_the_paper():
    rows = [{"benchmark": k, "std_rl": v[0], "ours": v[1]} for k, v in pn.LIN_TABLE1.items()]
    res = tables.relative_improvements(rows)
    assert tables.pct(res["average"]["rel_of_average"]) == "+4.2%"
    assert tables.pct(res["average"]["mean_of_relative"]) == "+6.1%"
    assert f"{100 * res['average']['mean_of_relative']:.1f}" == f"{pn.LIN_TABLE1_MEAN_OF_RELATIVE}"
    for r in res["rows"]:
        assert tables.pct(r["rel"]) == f"{pn.LIN_TABLE1[r['benchmark']][2]:+.1f}%"
    assert round(res["average"]["std_rl"], 4) == pn.LIN_TABLE1_AVERAGE[0]
    assert round(res["average"]["ours"], 4) == pn.LIN_TABLE1_AVERAGE[1]


def _paper_regrounding() -> dict:
    """LIN Table 2 as a regrounding.json (one config evaluated at the paper's budgets)."""
    std = [{"real_steps": b, "accuracy": {k: v[0] for k, v in row.items()}} for b, row in pn.LIN_TABLE2.items()]
    ours = [{"real_steps": b, "accuracy": {k: v[1] for k, v in row.items()}} for b, row in pn.LIN_TABLE2.items()]
    return {"std_rl": std, "methods": [{"M": 100, "N": 100, "points": ours}]}


def test_table2_imp_is_mean_of_relative_and_matches_the_paper():
    rows = tables.budget_table(_paper_regrounding())
    assert [r["budget"] for r in rows] == list(pn.LIN_TABLE2)
    for r in rows:
        assert f"{100 * r['imp_mean_of_relative']:+.1f}" == f"{pn.LIN_TABLE2_IMP[r['budget']]:+.1f}"
        s, o = pn.LIN_TABLE2_AVG[r["budget"]]
        assert abs(r["avg_std"] - s) < 6e-5 and abs(r["avg_ours"] - o) < 6e-5
        # the other convention differs (e.g. 200 steps: 4.1% of the average vs 5.2% mean of relative)
        assert abs(r["imp_of_average"] - (o / s - 1)) < 3e-4


def test_budget_takes_the_last_evaluation_within_the_budget():
    data = {"std_rl": [{"real_steps": s, "accuracy": {"a": s / 1000}} for s in (100, 300)],
            "methods": [{"M": 20, "N": 100, "points": [{"real_steps": s, "accuracy": {"a": s / 500}} for s in (100, 250, 300)]}]}
    rows = tables.budget_table(data, budgets=[200, 300, 50])
    assert [(r["budget"], r["std_real_steps"], r["real_steps"]) for r in rows] == [(200, 100, 100), (300, 300, 300)]


def test_fig6_steps_to_threshold_and_speedups_match_the_paper():
    # step curves that cross each threshold exactly at the paper's real-step counts
    def points(steps_by_thr):
        grid = sorted({s for s in steps_by_thr.values() if s} | {2000})
        return [{"real_steps": g, "accuracy": {"AIME24": max([t for t, s in steps_by_thr.items() if s and s <= g], default=0.3)}}
                for g in grid]

    data = {"std_rl": points(pn.LIN_FIG6_STEPS["Std RL"]),
            "methods": [{"label": k, "M": 0, "N": 0, "points": points(v)} for k, v in pn.LIN_FIG6_STEPS.items() if k != "Std RL"]}
    rows = tables.speedups(data, pn.LIN_FIG6_THRESHOLDS, "AIME24")
    for row in rows:
        t = row["threshold"]
        assert row["std_rl"] == pn.LIN_FIG6_STEPS["Std RL"][t]
        for label, v in row["methods"].items():
            assert v["steps"] == pn.LIN_FIG6_STEPS[label][t]
    best = rows[1]["methods"]["(20,100)"]
    assert f"{best['speedup']:.1f}" == "6.1"  # the abstract's "6.1x speedup"
    assert f"{rows[0]['methods']['(100,100)']['speedup']:.1f}" == "1.7"
    assert rows[2]["methods"]["(20,100)"]["speedup"] is None  # never reached


def test_weighted_quantiles_follow_the_binned_distribution():
    rng = np.random.default_rng(0)
    v = rng.beta(5, 1.5, 200_000)
    counts = np.histogram(v, bins=100, range=(0, 1))[0]
    got = tables.weighted_quantiles(counts, [0.25, 0.5, 0.75])
    assert np.allclose(got, np.quantile(v, [0.25, 0.5, 0.75]), atol=0.01)


def test_bench_key_matches_paper_names():
    assert tables.bench_key("AIME24 avg@64") == tables.bench_key("aime24") == "aime24"
    assert tables.bench_key("MATH-500") == tables.bench_key("MATH500 avg@64") == "math500"
    assert tables.bench_key("LiveCodeBench") == tables.bench_key("LCB avg@4") == "lcb"


# -- figure functions on fixtures ---------------------------------------------------------
@pytest.fixture(scope="module")
def fx():
    res = merge_results([(FIX / "run_a" / "results.json", load_json(FIX / "run_a" / "results.json"))])[0][1]
    return {"weights": load_json(FIX / "run_a/linearity/weights_r2.json"),
            "weights_b": load_json(FIX / "run_b/linearity/weights_r2.json"),
            "logprobs": load_json(FIX / "run_a/linearity/logprob_r2.json"),
            "logprobs_b": load_json(FIX / "run_b/linearity/logprob_r2.json"),
            "lowrank": load_json(FIX / "run_a/linearity/lowrank.json"),
            "results": res, "regrounding": load_json(FIX / "paper_runs/regrounding.json"),
            "logits": load_json(FIX / "paper_runs/logits_extrapolation.json")}


@pytest.mark.parametrize("fn,key", [
    (lin.plot_weight_r2_histogram, "weights"), (lin.plot_r2_heatmap, "weights"), (lin.plot_weight_examples, "weights"),
    (lin.plot_logprob_histogram, "logprobs"), (lin.plot_token_examples, "logprobs"),
    (lin.plot_explained_variance, "lowrank"), (lin.plot_rank1_coefficients, "lowrank"),
    (paper.plot_weight_extrapolation, "results"), (paper.plot_relex_accuracy, "results"),
    (paper.plot_relex_ablations, "results"),
])
def test_figure_functions_draw_from_fixtures(fx, tmp_path, fn, key):
    assert_nontrivial_png(fn(fx[key], tmp_path / "f.png"))


def test_robustness_box_plot(fx, tmp_path):
    settings = [{"label": "RL", "weights": fx["weights"], "logprobs": fx["logprobs"]},
                {"label": "SFT", "weights": fx["weights_b"], "logprobs": fx["logprobs_b"]},
                {"label": "weights only", "weights": fx["weights"]}]
    assert_nontrivial_png(paper.plot_robustness(settings, tmp_path / "r.png", pdf=True))
    assert (tmp_path / "r.pdf").stat().st_size > 1000
    assert paper.plot_robustness([{"label": "empty"}], tmp_path / "none.png") is None


def test_table1_and_regrounding_outputs(fx, tmp_path):
    made = paper.table1(fx["logits"]["rows"], tmp_path)
    assert_nontrivial_png(made["png"])
    md = made["md"].read_text()
    assert "+4.2% (of the average) / +6.1% (mean of relative)" in md
    rg = paper.regrounding_figures(fx["regrounding"], tmp_path)
    assert_nontrivial_png(rg["lin_table2"])
    assert_nontrivial_png(rg["lin_fig6"])
    table2 = json.loads((tmp_path / "lin_table2.json").read_text())
    assert {r["budget"] for r in table2} == set(pn.LIN_TABLE2)  # the paper's budgets by default
    sp = json.loads((tmp_path / "lin_fig6_speedups.json").read_text())
    assert sp["benchmark"] == "aime24" and [r["threshold"] for r in sp["rows"]] == list(pn.LIN_FIG6_THRESHOLDS)


def test_functions_tolerate_missing_optional_keys(tmp_path):
    res = {"base": {"step": 0, "accuracy": 0.1}, "rlvr": [{"step": 1, "accuracy": 0.2}], "relex": [], "weight_extrapolation": []}
    assert paper.plot_weight_extrapolation(res, tmp_path / "w.png") is None
    assert paper.plot_relex_accuracy(res, tmp_path / "r.png") is None
    assert paper.plot_relex_ablations(res, tmp_path / "a.png") is None
    assert tables.logits_rows_from_results(res) == []
    assert paper.table1([], tmp_path) is None
    assert paper.regrounding_figures({"std_rl": [], "methods": []}, tmp_path) == {}


def test_logits_rows_from_results_compare_with_rl_at_the_target(fx):
    rows = tables.logits_rows_from_results(fx["results"])
    rlvr = {r["step"]: r["accuracy"] for r in fx["results"]["rlvr"]}
    assert rows == [{"benchmark": "arithmetic", "setting": "t′=10, vs RL step 10", "std_rl": rlvr[10], "ours": 0.54}]


# -- the command ------------------------------------------------------------------------------
def test_regenerate_all_fixtures_makes_every_paper_figure(tmp_path):
    index = regenerate([FIX], tmp_path)
    assert index["missing"] == []
    assert {m["id"] for m in index["made"]} == {f.id for f in CATALOGUE}
    for m in index["made"]:
        outs = [tmp_path / o for o in m["outputs"]]
        assert all(o.exists() for o in outs), m
        png = [o for o in outs if o.suffix == ".png"]
        assert png and all(o.with_suffix(".pdf").exists() for o in png), m
        assert m["inputs"] and all(Path(i).exists() for i in m["inputs"])
    on_disk = json.loads((tmp_path / "figures" / "index.json").read_text())
    assert on_disk["made"] == index["made"]
    labels = {m["label"] for m in index["made"] if m["id"] == "lin_weight_r2_histogram"}
    assert labels == {"run_a", "run_b"}  # one histogram per linearity run


def test_cli_lists_missing_figures_with_commands(tmp_path, rlvr_cache):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "rlvr_linearity", "figures", f"figures.inputs=[{FIX / 'run_b'}]",
                           f"output_dir={out}", "logger=none"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = json.loads((out / "figures" / "index.json").read_text())
    made = {m["id"] for m in index["made"]}
    assert made == {"lin_weight_r2_histogram", "lin_weight_r2_heatmap", "lin_weight_trajectories",
                    "lin_logprob_r2_histogram", "lin_token_trajectories"}
    missing = {m["id"]: m for m in index["missing"]}
    assert set(missing) == {f.id for f in CATALOGUE} - made
    assert "rlvr pipeline" in missing["lin_table1"]["command"] and "regrounding.json" in missing["lin_fig6"]["needs"]
    assert "missing  lin_table2" in proc.stdout and "run: rlvr pipeline" in proc.stdout
    readme = (out / "figures" / "README.md").read_text()
    assert "## Missing" in readme and "lin_weight_r2_histogram.png" in readme
    assert (out / "figures" / "lin_weight_r2_heatmap.pdf").exists()


def test_cli_bad_results_file_is_one_line_exit_2(tmp_path, rlvr_cache):
    d = tmp_path / "bad" / "linearity"
    d.mkdir(parents=True)
    (d / "weights_r2.json").write_text('{"steps": [0, 1], "trunc')
    proc = subprocess.run([sys.executable, "-m", "rlvr_linearity", "figures", f"figures.inputs=[{tmp_path / 'bad'}]",
                           f"output_dir={tmp_path / 'out'}", "logger=none"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert "weights_r2.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "figures" / "index.json").exists()


def test_discovery_follows_stage_links_once_and_merges_sweep_results(tmp_path):
    stage = tmp_path / "cache" / "stages" / "linearity" / "abc123"
    shutil.copytree(FIX / "run_a" / "linearity", stage / "linearity")
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "linearity").symlink_to(stage, target_is_directory=True)
    (run / "stages" / "loop").symlink_to(run, target_is_directory=True)  # a cycle must not hang
    res = load_json(FIX / "run_a" / "results.json")
    for h in (3, 6):  # a sweep over T_cut: one results.json per job
        job = tmp_path / "sweep" / f"h{h}"
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({**res, "relex": [r for r in res["relex"] if r["history"] == h]}))
    files = discover([run, tmp_path / "cache", tmp_path / "sweep"])
    assert len(files["weights"]) == 1 and len(files["lowrank"]) == 1
    groups = merge_results([(p, load_json(p)) for p in files["results"]])
    assert len(groups) == 1
    merged = groups[0][1]
    assert len(merged["relex"]) == len(res["relex"]) and len(merged["rlvr"]) == len(res["rlvr"])


def test_empty_or_wrong_inputs_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="figures.inputs is empty"):
        regenerate([], tmp_path)
    with pytest.raises(ConfigError, match="neither"):
        regenerate([tmp_path / "nope"], tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "regrounding.json").write_text(json.dumps({"std_rl": []}))
    with pytest.raises(ConfigError, match="regrounding.json"):
        regenerate([tmp_path / "r"], tmp_path / "o")


def test_curves_from_an_evaluate_sweep(tmp_path):
    """`rlvr evaluate -m evaluate.model=...` over trajectory steps and predictions: each run's
    tracking.jsonl names its model; predictions are identified by their (real) extrapolation.json."""
    wext = tmp_path / "w" / "extrapolate"
    rext = tmp_path / "r" / "extrapolate"
    for ext, src, dirs in ((wext, "weight_run", ["step_8", "step_10"]), (rext, "relex_run", ["h3/step_8", "h5/step_10"])):
        for d in dirs:
            (ext / d).mkdir(parents=True)
        shutil.copy(FIX / src / "extrapolate" / "extrapolation.json", ext / "extrapolation.json")
    traj = tmp_path / "traj"
    models = [(traj / "checkpoint-0", 0.2), (traj / "checkpoint-3", 0.4), (wext / "step_8", 0.45), (wext / "step_10", 0.43),
              (traj / "global_step_8" / "actor" / "huggingface", 0.5), (rext / "h3" / "step_8", 0.47),
              (rext / "h5" / "step_10", 0.52)]
    for n, (model, acc) in enumerate(models):
        run = tmp_path / "multirun" / str(n)
        (run / "evaluate").mkdir(parents=True)
        (run / "tracking.jsonl").write_text(json.dumps({"event": "config", "config": {"evaluate": {"model": str(model)}}}) + "\n")
        (run / "evaluate" / "metrics.json").write_text(json.dumps({"math500": {"accuracy": acc, "n_problems": 5}}))
    index = regenerate([tmp_path / "multirun", tmp_path / "w"], tmp_path / "out")
    made = {m["id"]: m for m in index["made"]}
    assert len(made["lin_weight_extrapolation"]["inputs"]) == len(models)
    assert "relex_accuracy_vs_target" in made and "relex_explained_variance" not in made  # r/ not an input
    res = merge_results(results_from_evaluations(discover([tmp_path / "multirun"])["metrics"]))[0][1]
    assert res["benchmark"] == "math500" and res["base"] == {"step": 0, "accuracy": 0.2}
    assert sorted((r["step"], r["accuracy"]) for r in res["rlvr"]) == [(3, 0.4), (8, 0.5)]
    assert sorted((r["base_step"], r["second_step"], r["target"], r["accuracy"]) for r in res["weight_extrapolation"]) == [
        (0, 3, 8, 0.45), (0, 3, 10, 0.43)]
    assert sorted((r["history"], r["target"], r["accuracy"], r["rank"], r["fit"]) for r in res["relex"]) == [
        (3, 8, 0.47, 1, "linear"), (5, 10, 0.52, 1, "linear")]


def test_curves_from_an_evaluate_models_dir_run(tmp_path):
    """`rlvr evaluate evaluate.models_dir=D`: sub-runs named by the model's path under D."""
    ext = tmp_path / "pred" / "extrapolate"
    (ext / "step_8").mkdir(parents=True)
    shutil.copy(FIX / "weight_run" / "extrapolate" / "extrapolation.json", ext / "extrapolation.json")
    run = tmp_path / "eval"
    run.mkdir()
    (run / "tracking.jsonl").write_text(json.dumps({"event": "config", "config": {"evaluate": {
        "model": None, "models_dir": str(tmp_path / "pred")}}}) + "\n")
    (run / "extrapolate__step_8" / "evaluate").mkdir(parents=True)
    (run / "extrapolate__step_8" / "evaluate" / "metrics.json").write_text(json.dumps({"arithmetic": {"accuracy": 0.6}}))
    res = merge_results(results_from_evaluations(discover([run])["metrics"]))[0][1]
    assert res["weight_extrapolation"] == [{"base_step": 0, "second_step": 3, "target": 8, "accuracy": 0.6}]


def test_relex_findings_from_an_extrapolation_json(tmp_path):
    """A RELEX run's extrapolation.json alone gives Finding 1 and 2 figures (drawn by figures.extrapolation)."""
    index = regenerate([FIX / "relex_run", FIX / "weight_run"], tmp_path)
    made = {m["id"]: m for m in index["made"]}
    assert set(made) == {"relex_explained_variance", "relex_rank1_coefficient"}
    for m in made.values():
        assert m["inputs"] == [str(FIX / "relex_run" / "extrapolate" / "extrapolation.json")]
        assert_nontrivial_png(tmp_path / m["outputs"][0])
        assert (tmp_path / m["outputs"][0]).with_suffix(".pdf").exists()


@pytest.mark.parametrize("name,content,match", [
    ("results.json", {"rlvr": [{"step": 1, "accuracy": 0.1}], "relex": [{"history": 3, "accuracy": 0.2}]}, r"relex\[0\] lacks 'target'"),
    ("regrounding.json", {"std_rl": [{"real_steps": 1, "accuracy": {}}], "methods": [{"M": 1, "N": 1, "points": [{"accuracy": {}}]}]},
     r"methods\[0\].points\[0\] lacks 'real_steps'"),
    ("logits_extrapolation.json", {"rows": [{"benchmark": "a", "ours": 0.2}]}, "expected"),
])
def test_malformed_rows_name_file_and_row(tmp_path, name, content, match):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=match) as err:
        regenerate([tmp_path / "in"], tmp_path / "out")
    assert name in str(err.value)


def test_pipeline_figures_new_panels(tmp_path):
    from rlvr_linearity.figures.linearity import plot_r2_vs_window
    from rlvr_linearity.figures.pipeline import plot_prediction_error, plot_training_curve, plot_training_dynamics

    rows = [{"step": s, "reward_mean": 0.1 * s, "accuracy": 0.1 * s, "entropy": 0.2, "completion_length_mean": 7}
            for s in range(1, 13)]
    assert plot_training_dynamics(rows, tmp_path / "d.png").stat().st_size > 1000
    assert plot_training_dynamics([{"step": 1, "reward_mean": 1}], tmp_path / "none.png") is None
    curve = plot_training_curve(rows, tmp_path / "r.png")
    assert curve.stat().st_size > 1000
    err = {"relex": [{"history": 3, "target": t, "weight_error": {"rel_l2": 0.1 * t, "cosine": 1 - 0.01 * t}}
                     for t in (4, 6)], "weight_extrapolation": []}
    assert plot_prediction_error(err, tmp_path / "e.png").stat().st_size > 1000
    assert plot_prediction_error({"relex": [{"history": 3, "target": 4}]}, tmp_path / "n.png") is None
    weights = {"windows": {"3": {"steps": [0, 1, 2, 3], "median": 0.9, "mean": 0.8, "frac_above": {"0.7": 0.7}},
                           "all": {"steps": list(range(7)), "median": 0.8, "mean": 0.7, "frac_above": {"0.7": 0.6}}}}
    assert plot_r2_vs_window(weights, tmp_path / "w.png").stat().st_size > 1000


def test_training_curve_draws_accuracy_only_when_it_differs_from_the_reward(tmp_path, monkeypatch):
    import matplotlib.axes

    from rlvr_linearity.figures.pipeline import plot_training_curve

    labels = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or real(self, *a, **k))
    same = [{"step": s, "reward_mean": 0.5, "accuracy": 0.5} for s in range(1, 4)]
    plot_training_curve(same, tmp_path / "a.png")
    assert "train accuracy" not in labels
    plot_training_curve([{**r, "accuracy": 0.2} for r in same], tmp_path / "b.png")
    assert "train accuracy" in labels


def test_lin_table1_ticks_tell_targets_of_one_benchmark_apart():
    from rlvr_linearity.figures.paper import _tick

    a, b = _tick("arithmetic (t′=30, vs RL step 30)"), _tick("arithmetic (t′=45, vs RL step 45)")
    assert a != b and a.startswith("arithmetic\n") and "t′=30" in a
    assert _tick("AIME24 (avg@64)") == "AIME24\navg@64"


def test_explained_variance_axis_zooms_to_values_near_one():
    from rlvr_linearity.figures.style import zoom_floor

    assert zoom_floor([0.95, 0.99, 1.0]) == 0.94
    assert zoom_floor([0.2, 0.99]) == 0.19
    assert zoom_floor([]) == 0.0 and zoom_floor([0.005]) == 0.0


def test_lin_table1_has_a_column_per_benchmark_and_survives_a_zero_baseline(tmp_path):
    """Issue 15: one column per benchmark (and the Average), one row group per setting; a benchmark
    whose standard-RL score is 0 keeps its column, its relative change undefined ("—")."""
    rows = [{"benchmark": "arithmetic", "setting": "t′=4", "std_rl": 0.5, "ours": 0.6},
            {"benchmark": "math500", "setting": "t′=4", "std_rl": 0.0, "ours": 0.25},
            {"benchmark": "arithmetic", "setting": "t′=6", "std_rl": 0.4, "ours": 0.3}]
    made = paper.table1(rows, tmp_path, reference=False)
    lines = made["md"].read_text().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == ["", "arithmetic", "math500", "Average"]
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]] for ln in lines[4:] if ln.startswith("|")}
    assert cells["Ours (t′=4)"] == ["0.6000", "0.2500", "0.4250"]
    assert cells["Rel. improvement (t′=4)"][:2] == ["+20.0%", "—"]
    assert cells["Rel. improvement (t′=4)"][2].startswith("+70.0% (of the average) / +20.0% (mean of relative)")
    assert cells["Std. RL (t′=6)"] == ["0.4000", "—", "0.4000"]
    js = json.loads(made["json"].read_text())
    assert js["benchmarks"] == ["arithmetic", "math500"] and [s["setting"] for s in js["settings"]] == ["t′=4", "t′=6"]
