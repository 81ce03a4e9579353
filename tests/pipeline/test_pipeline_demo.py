"""`rlvr pipeline experiment=demo` end to end at reduced size (every stage real: tiny model build,
TRL GRPO, linearity with log-probs, RELEX, weight and logits extrapolation, evaluation, report,
paper figures), then a rerun that reuses every stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RECIPE

ROOT = REPO_ROOT

SMALL = [
    "task.n_train=12", "task.n_test=8", "task.max_operand=4", "task.seed=3",
    *[f"train.tiny.{k}={v}" for k, v in {**TINY_RECIPE, "sft_batch_size": 12}.items()],
    "train.steps=6", "train.prompts_per_step=2", "train.group_size=4",
    "linearity.windows=[3,all]", "linearity.coefficient_history=3", "linearity.probes.n_problems=2",
    "linearity.probes.n_samples=2",
    "pipeline.evaluate_steps=[0,2,4,6]", "extrapolate.windows=[2,3]", "extrapolate.targets=[4,6,9]",
    "pipeline.weight.pairs=[[0,2]]", "pipeline.weight.targets=[4,6]",
    "pipeline.logits.pairs=[[0,2]]", "pipeline.logits.targets=[4]", "pipeline.reconstruct.steps=[2,6]",
    "sampling.max_tokens=8", "figures.pdf=false",
]


def run_demo(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLVR_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "WANDB_DIR": str(out.parent)}
    return subprocess.run([sys.executable, "-m", "rlvr_linearity", "pipeline", "experiment=demo",
                           f"output_dir={out}", *SMALL, *extra], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1200)


@pytest.mark.slow
def test_demo_pipeline_small(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    res = run_demo(out, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())

    def acc_ok(x):
        return isinstance(x, float) and 0.0 <= x <= 1.0

    assert r["base"]["step"] == 0 and acc_ok(r["base"]["accuracy"])
    assert [x["step"] for x in r["rlvr"]] == [2, 4, 6] and all(acc_ok(x["accuracy"]) for x in r["rlvr"])
    assert {(x["history"], x["target"]) for x in r["relex"]} == {(h, t) for h in (2, 3) for t in (4, 6, 9)}
    assert all(acc_ok(x["accuracy"]) and x["rank"] == 1 and x["fit"] == "linear" for x in r["relex"])
    assert [(x["base_step"], x["second_step"], x["target"]) for x in r["weight_extrapolation"]] == [(0, 2, 4), (0, 2, 6)]
    assert all(acc_ok(x["accuracy"]) for x in r["weight_extrapolation"])
    assert r["logits_extrapolation"][0]["alpha"] == 2.0 and acc_ok(r["logits_extrapolation"][0]["accuracy"])
    assert 0.0 <= r["linearity"]["median_r2"] <= 1.0 and 0.0 <= r["linearity"]["frac_above_0.7"] <= 1.0
    assert sorted((x["step"], x["rank"]) for x in r["reconstruction"]) == [(2, 1), (2, 2), (6, 1), (6, 2)]
    assert all(acc_ok(x["accuracy"]) and x["weight_error"]["rel_l2"] >= 0 for x in r["reconstruction"])
    assert r["linearity"]["coefficient_history"] == 3 and r["linearity"]["coefficient_r2_in_sample"] <= 1.0
    assert r["train"] == {"lr": 3e-5, "steps": 6, "seed": 42}  # what a learning-rate sweep is drawn against
    assert {"train", "linearity", "relex", "total"} <= set(r["timings"])

    # every prediction is a loadable model of the base's dtype; the RELEX history-2 run observed 1..2
    ex = json.loads((Path(r["relex"][0]["path"]).parent.parent / "extrapolation.json").read_text())
    assert ex["method"] == "relex"
    report = (out / "report.md").read_text()
    for heading in ("## Verdict", "## Trained checkpoints", "## Linearity", "## RELEX", "## Weight extrapolation",
                    "## Logits extrapolation", "## Figures"):
        assert heading in report
    for png in ("training_reward.png", "accuracy_vs_step.png", "lin_weight_r2_histogram.png",
                "lin_logprob_r2_histogram.png", "relex_accuracy_vs_target.png", "lin_weight_extrapolation.png",
                "relex_finding1_reconstruction.png", "relex_denoising.png", "relex_main_table.png"):
        assert (out / "figures" / png).stat().st_size > 1000, png
        assert f"figures/{png}" in report
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb")), "no W&B offline run"

    # statistics: intervals on every accuracy, paired tests and weight error against the trained step
    assert all(len(x["accuracy_ci95"]) == 2 for x in [r["base"], *r["rlvr"], *r["relex"]])
    at_trained = [x for x in r["relex"] + r["weight_extrapolation"] if x["target"] in (2, 4, 6)]
    assert at_trained and all(x["vs_trained"]["test"] == "mcnemar_exact" and 0 <= x["vs_trained"]["p_value"] <= 1
                              and x["weight_error"]["rel_l2"] >= 0 and -1 <= x["weight_error"]["cosine"] <= 1
                              for x in at_trained)
    assert all("vs_trained" not in x or x["vs_trained"] is None for x in r["relex"] if x["target"] == 9)
    assert "p (paired)" in report and "paired test" in report

    # terminal: a results table, no library bars, step dicts or stage lines
    assert "− trained" in res.stdout and "report at" in res.stdout
    for noise in ("Writing model shards", "Loading weights", "{'loss'", "stage train: running"):
        assert noise not in res.stdout + res.stderr, noise

    # W&B: the offline run read back holds the curves, accuracy vs step, figures, samples and references
    from wandb_records import read_run

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    wb = read_run(run_dir)
    assert ("train/*", "train/step") in wb["metrics"] and ("eval/*", "eval/step") in wb["metrics"]
    assert sorted(h["train/step"] for h in wb["history"] if "train/reward_mean" in h) == list(range(1, 7))
    assert [h["eval/step"] for h in wb["history"] if "eval/trained" in h] == [0, 2, 4, 6]
    figs = {k.split("/")[1] for h in wb["history"] for k in h if k.startswith("figures/") and k.endswith("/_type")}
    assert {"accuracy_vs_step", "training_reward", "prediction_error"} <= figs
    assert any("samples/_type" in h for h in wb["history"])
    assert "time/total" in wb["summary"] and not any(k.startswith("stage/") for h in wb["history"] for k in h)
    assert {a[1] for a in wb["artifacts"]} >= {"trajectory", "predicted-checkpoint"}
    assert wb["config"]["experiment_name"] == "demo"

    again = run_demo(out, cache)  # every stage reused: no stage runs twice
    assert again.returncode == 0, again.stderr[-3000:]
    r2 = json.loads((out / "results.json").read_text())
    assert all(s["cached"] for s in r2["stages"])
    assert r2["relex"] == r["relex"] and r2["rlvr"] == r["rlvr"]


@pytest.mark.slow
def test_demo_pipeline_two_benchmarks(tmp_path):
    """Issue 15: every evaluated row carries each benchmark's metrics, with its own sampling
    (math500 at n 2, T 1.0 beside greedy arithmetic), and the report, LIN Table 1 and W&B show both."""
    out = tmp_path / "demo"
    math500 = REPO_ROOT / "tests" / "fixtures" / "benchmarks" / "math500.jsonl"
    res = run_demo(out, tmp_path / "cache", "benchmarks=[arithmetic,math500]", f"evaluate.data_files.math500={math500}",
                   "evaluate.benchmark_sampling.math500={n:2,temperature:1.0}", "linearity.logprobs=false")
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    rows = [r["base"], *r["rlvr"], *r["relex"], *r["weight_extrapolation"], *r["logits_extrapolation"]]
    assert len(rows) == 1 + 3 + 6 + 2 + 1
    n_math = sum(1 for line in math500.read_text().splitlines() if line.strip())
    for row in rows:
        assert set(row["metrics"]) == {"arithmetic", "math500"}, row
        assert row["accuracy"] == row["metrics"]["arithmetic"]["accuracy"]  # the first benchmark's
        a, m = row["metrics"]["arithmetic"], row["metrics"]["math500"]
        assert a["n_problems"] == 8 and a["n_samples"] == 8 and a["sampling"]["n"] == 1
        assert m["n_problems"] == n_math and m["n_samples"] == 2 * n_math and m["sampling"]["temperature"] == 1.0
        assert 0.0 <= m["accuracy"] <= 1.0
    at_trained = [x for x in r["relex"] if x["target"] == 4]
    assert at_trained and all(x["metrics"]["math500"]["vs_trained"]["test"] == "paired_bootstrap" for x in at_trained)

    report = (out / "report.md").read_text()
    assert "`math500` (n=2, temperature=1.0)" in report
    assert "| step | arithmetic accuracy | 95% CI | math500 accuracy | 95% CI |" in report
    assert "math500 accuracy [95% CI]" in report  # the prediction tables too
    table1 = (out / "figures" / "lin_table1.md").read_text().splitlines()
    header = next(line for line in table1 if line.startswith("| "))
    assert [c.strip() for c in header.strip("|").split("|")] == ["", "arithmetic", "math500", "Average"]
    ours = next(line for line in table1 if line.startswith("| Ours"))
    assert "—" not in ours  # a number in both benchmark columns

    from wandb_records import read_run

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    wb = read_run(run_dir)
    assert [h["eval/step"] for h in wb["history"] if "eval/math500/trained" in h] == [0, 2, 4, 6]
    assert "final_accuracy/math500" in wb["summary"] and "base_accuracy/arithmetic" in wb["summary"]
