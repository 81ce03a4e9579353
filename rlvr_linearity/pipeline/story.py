"""What a pipeline run sends to its tracker (W&B) at the end: the story of the run.

Training curves (reward, KL, entropy, length) against the training step, held-out accuracy of
trained and predicted checkpoints against the step (the first benchmark's as `eval/<series>`,
every benchmark's as `eval/<benchmark>/<series>`), per-benchmark summaries and table columns, every figure of the report, a table of
responses with their verdicts, stage timings in the summary, and the trajectory and predicted
checkpoints as artifacts by reference (nothing uploaded).
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES_PER_MODEL = 20  # problems per model in the samples table


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _prediction_labels(results: dict) -> list[tuple[str, str, dict]]:
    """(series name, evaluation label, row) of every evaluated prediction."""
    out = []
    for r in results.get("relex") or []:
        out.append((f"relex_h{r['history']}", f"relex_h{r['history']}_t{r['target']}", r))
    for key, name in (("weight_extrapolation", "weight"), ("logits_extrapolation", "logits")):
        for r in results.get(key) or []:
            out.append((f"{name}_{r['base_step']}_{r['second_step']}",
                        f"{name}_{r['base_step']}_{r['second_step']}_t{r['target']}", r))
    return [x for x in out if x[2].get("accuracy") is not None]


def _per_benchmark(row: dict) -> dict[str, float]:
    """`<benchmark>/…` values of a results row: each benchmark's accuracy."""
    return {b: m["accuracy"] for b, m in (row.get("metrics") or {}).items() if m and m.get("accuracy") is not None}


def accuracy_rows(results: dict) -> list[dict]:
    """One row per step: trained accuracy with its interval, and every prediction aimed there;
    the same per benchmark under `<benchmark>/<series>`."""
    rows: dict[int, dict] = {}
    for r in [results.get("base") or {}, *(results.get("rlvr") or [])]:
        if r.get("accuracy") is None:
            continue
        row = rows.setdefault(r["step"], {"step": r["step"]})
        row["trained"] = r["accuracy"]
        if r.get("accuracy_ci95"):
            row["trained_ci_low"], row["trained_ci_high"] = r["accuracy_ci95"]
        row.update({f"{b}/trained": a for b, a in _per_benchmark(r).items()})
    for series, _, r in _prediction_labels(results):
        row = rows.setdefault(r["target"], {"step": r["target"]})
        row[series] = r["accuracy"]
        row.update({f"{b}/{series}": a for b, a in _per_benchmark(r).items()})
    return [rows[s] for s in sorted(rows)]


def flat_rows(rows: list[dict]) -> list[dict]:
    """Table rows with each benchmark's accuracy as its own `accuracy/<benchmark>` column (W&B
    tables show nested dicts as text)."""
    return [{**{k: v for k, v in r.items() if k != "metrics"},
             **{f"accuracy/{b}": a for b, a in _per_benchmark(r).items()}} for r in rows]


def samples_rows(p, results: dict, bench: str) -> list[dict]:
    """Responses with their verdicts on every benchmark: the base, the last trained checkpoint and every
    prediction."""
    trained = sorted(r["step"] for r in results.get("rlvr") or [] if r.get("accuracy") is not None)
    labels = [("base", "step_0")] + ([(f"trained step {trained[-1]}", f"step_{trained[-1]}")] if trained else [])
    labels += [(label, label) for _, label, _ in _prediction_labels(results)]
    rows = []
    for b in results.get("benchmarks") or [bench]:
        for model, label in labels:
            d = p.stage_dirs.get(f"eval_{label}")
            recs = _jsonl(d / "evaluate" / b / "samples.jsonl") if d else []
            for rec in recs[:SAMPLES_PER_MODEL]:
                rows.append({"benchmark": b, "model": model, "problem_id": rec["problem_id"],
                             "sample": rec.get("sample"), "response": rec.get("response"),
                             "extracted": rec.get("extracted"), "gold": rec.get("gold_extracted"),
                             "correct": bool(rec.get("correct"))})
    return rows


def tell(tracker, p, results: dict, out_dir: Path, bench: str) -> None:
    """Send the run's results, curves, figures, samples and artifacts to `tracker`."""
    base = (results.get("base") or {}).get("accuracy")
    trained = [r for r in results.get("rlvr") or [] if r.get("accuracy") is not None]
    per_bench = {f"base_accuracy/{b}": a for b, a in _per_benchmark(results.get("base") or {}).items()}
    if trained:
        per_bench.update({f"final_accuracy/{b}": a for b, a in _per_benchmark(trained[-1]).items()})
    tracker.summary({"base_accuracy": base, "final_accuracy": trained[-1]["accuracy"] if trained else None, **per_bench,
                     **{f"time/{k}": v for k, v in (results.get("timings") or {}).items()},
                     **{f"cached/{s['stage']}": s["cached"] for s in results.get("stages") or []}})
    for name in ("rlvr", "relex", "weight_extrapolation", "logits_extrapolation"):
        tracker.table(name, flat_rows(results.get(name) or []))
    tracker.curve("train", _jsonl(out_dir / "stages" / "train" / "train_metrics.jsonl"))
    tracker.curve("eval", accuracy_rows(results))
    for png in sorted((out_dir / "figures").glob("*.png")):
        tracker.figure(f"figures/{png.stem}", png)
    tracker.table("samples", samples_rows(p, results, bench))
    if results.get("trajectory") and not str(results["trajectory"]).startswith("hub:"):
        tracker.reference("trajectory", "trajectory", results["trajectory"])
    for series, label, r in _prediction_labels(results):
        if r.get("path"):
            tracker.reference(f"prediction-{label}", "predicted-checkpoint", r["path"])
