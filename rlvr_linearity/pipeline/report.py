"""`report.md` of a pipeline run: tables and figures, with an honest verdict from the numbers."""

from __future__ import annotations

import json
from pathlib import Path

from rlvr_linearity.figures.linearity import plot_r2_vs_window
from rlvr_linearity.figures.pipeline import (plot_accuracy_vs_step, plot_prediction_error, plot_training_curve,
                                             plot_training_dynamics)
from rlvr_linearity.io import write_text_atomic


def fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trained_accuracy(results: dict) -> dict[int, float]:
    acc = {r["step"]: r["accuracy"] for r in results.get("rlvr", []) if r.get("accuracy") is not None}
    if (results.get("base") or {}).get("accuracy") is not None:
        acc[0] = results["base"]["accuracy"]
    return acc


def bench_entry(row: dict, bench: str, first: str) -> dict:
    """A row's metrics on `bench` (results written before per-benchmark metrics: the top-level
    accuracy stands for the first benchmark)."""
    if row.get("metrics"):
        return (row["metrics"].get(bench) or {})
    return {"accuracy": row.get("accuracy"), "accuracy_ci95": row.get("accuracy_ci95")} if bench == first else {}


def _sampling_words(results: dict, benches: list[str], cfg) -> str:
    """Each benchmark with the sampling it was evaluated with (its own, or `sampling.*`)."""
    base = results.get("base") or {}
    parts = []
    for b in benches:
        sp = bench_entry(base, b, benches[0]).get("sampling") or {"n": cfg.sampling.n,
                                                                   "temperature": cfg.sampling.temperature}
        parts.append(f"`{b}` (n={sp['n']}, temperature={sp['temperature']})")
    return ", ".join(parts)


def fmt_ci(ci, digits: int = 3) -> str:
    return "" if not ci else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def paired_words(vs: dict) -> str:
    """"diff +0.020 [−0.040, 0.080], McNemar p = 0.63" for a `vs_trained` comparison."""
    test = "McNemar" if vs["test"] == "mcnemar_exact" else "paired bootstrap"
    return f"diff {vs['diff']:+.3f}{fmt_ci(vs['diff_ci95'])}, {test} p = {vs['p_value']:.2g}"


def _significance(rows: list[dict], alpha: float = 0.05) -> str:
    """How many predictions differ from the trained checkpoint by the paired test."""
    tested = [r["vs_trained"] for r in rows if r.get("vs_trained")]
    if not tested:
        return ""
    above = sum(v["p_value"] < alpha and v["diff"] > 0 for v in tested)
    below = sum(v["p_value"] < alpha and v["diff"] < 0 for v in tested)
    return (f" By a paired test on the same problems (p < {alpha}), {above} of {len(tested)} are significantly "
            f"above, {below} significantly below, {len(tested) - above - below} indistinguishable.")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def verdict(results: dict) -> list[str]:
    """Plain statements comparing predictions with the trained checkpoints, from the numbers."""
    acc = _trained_accuracy(results)
    if not acc:
        return []
    last = max(acc)
    lines = []
    base = acc.get(0)
    if base is not None:
        gain = acc[last] - base
        lines.append(f"GRPO moved held-out accuracy from {base:.3f} (base) to {acc[last]:.3f} at step {last} "
                     f"({gain * 100:+.1f} points); the best trained checkpoint scored {max(acc.values()):.3f}.")
    def source(r: dict) -> str:
        if "history" in r:
            return f"observing steps ≤ {r['history']}"
        return f"from steps {r['base_step']} and {r['second_step']}"

    for name, rows in (("RELEX", results.get("relex", [])),
                       ("Weight extrapolation", results.get("weight_extrapolation", [])),
                       ("Logits extrapolation", results.get("logits_extrapolation", []))):
        scored = [r for r in rows if r.get("accuracy") is not None]
        if not scored:
            continue
        at_trained = [r for r in scored if r["target"] in acc]
        if at_trained:
            diffs = [r["accuracy"] - acc[r["target"]] for r in at_trained]
            mean = sum(diffs) / len(diffs)
            best = max(at_trained, key=lambda r: r["accuracy"] - acc[r["target"]])
            tested = [r["vs_trained"] for r in at_trained if r.get("vs_trained")]
            if tested:  # worded by the paired tests: a shortfall only counts when significant
                below = any(v["p_value"] < 0.05 and v["diff"] < 0 for v in tested)
                above = any(v["p_value"] < 0.05 and v["diff"] > 0 for v in tested)
                word = ("falls short of" if below and not above else "beats" if above and not below
                        else "is mixed against" if above else "is indistinguishable from")
            else:
                word = "matches or beats" if mean >= -0.01 else "falls short of"
            vs = f", {paired_words(best['vs_trained'])}" if best.get("vs_trained") else ""
            lines.append(
                f"{name} {word} the trained checkpoint at the same step ({mean * 100:+.1f} points on average over "
                f"{len(at_trained)} predictions); best: {source(best)} → step {best['target']} scored "
                f"{best['accuracy']:.3f}{fmt_ci(best.get('accuracy_ci95'))} vs {acc[best['target']]:.3f} trained{vs}."
                + _significance(at_trained))
        beyond = [r for r in scored if r["target"] > last]
        if beyond:
            top = max(beyond, key=lambda r: r["accuracy"])
            cmp = "above" if top["accuracy"] > acc[last] else "not above"
            lines.append(f"{name} beyond the trained run: best {top['accuracy']:.3f} at step {top['target']}, "
                         f"{cmp} the last trained checkpoint ({acc[last]:.3f}).")
    return lines


def _linearity_lines(lin: dict) -> list[str]:
    """Per-weight R² by window and the low-rank findings, as tables."""
    lines = [f"Per-weight R² over every weight of every tensor (base = step 0): median {fmt(lin.get('median_r2'))}, "
             f"mean {fmt(lin.get('mean_r2'))}, fraction with R² > 0.7: {fmt(lin.get('frac_above_0.7'))} "
             "(LIN: > 70% of weights above 0.7 at paper scale).", ""]
    d = Path(lin["dir"]) / "linearity" if lin.get("dir") else None
    weights = d / "weights_r2.json" if d else None
    if weights is not None and weights.exists():
        windows = json.loads(weights.read_text()).get("windows") or {}
        if windows:
            rows = [[w, f"{v['steps'][0]}–{v['steps'][-1]}", fmt(v.get("median")), fmt(v.get("mean")),
                     fmt((v.get("frac_above") or {}).get("0.7"))] for w, v in windows.items()]
            lines += md_table(["window", "steps", "median R²", "mean R²", "R² > 0.7"], rows) + [""]
    logprobs = d / "logprob_r2.json" if d else None
    if logprobs is not None and logprobs.exists():
        lp = json.loads(logprobs.read_text())
        parts = [f"{what} R² median {fmt(v.get('median'))}, fraction > 0.7: {fmt((v.get('frac_above') or {}).get('0.7'))}"
                 for what, v in (("log-prob", lp.get("logprob") or {}), ("logit", lp.get("logit") or {})) if v]
        if parts:
            lines += [f"Token linearity over {lp.get('n_tokens_total')} response tokens of {lp.get('n_sequences')} "
                      f"probe responses (teacher-forced at every step): " + "; ".join(parts) + ".", ""]
    lowrank = d / "lowrank.json" if d else None
    if lowrank is not None and lowrank.exists():
        lr = json.loads(lowrank.read_text())
        rows = []
        for w, v in (lr.get("windows") or {}).items():
            model = v.get("model") or {}
            rows.append([w, f"{v['steps'][0]}–{v['steps'][-1]}"] + [fmt(model.get(str(r))) for r in lr.get("ranks", [])])
        if rows:
            lines += ["Low rank (RELEX finding 1): fraction of the deltas' energy explained by the top singular "
                      "directions, over all tensors.", ""]
            lines += md_table(["window", "steps"] + [f"rank {r}" for r in lr.get("ranks", [])], rows) + [""]
        summ = lr.get("summary") or {}
        ins, oos = summ.get("coefficient_r2_in_sample"), summ.get("coefficient_r2_out_of_sample")
        if ins:
            hist = (lr.get("coefficients") or {}).get("history")
            lines += [f"Rank-1 coefficient vs step (RELEX finding 2), fitted on steps ≤ {hist}: median R² "
                      f"{fmt(ins.get('median'))} in sample" + (f", {fmt(oos.get('median'))} on the later steps "
                      "(out of sample; below 0 means the straight line misses where training went)" if oos else "")
                      + ".", ""]
    return lines


def write_report(cfg, out_dir: Path, results: dict) -> Path:
    """Draw the figures into `out_dir/figures`, then write `out_dir/report.md` atomically."""
    out_dir = Path(out_dir)
    figs = out_dir / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    images = _draw_figures(out_dir, figs, results)
    acc = _trained_accuracy(results)
    bench = results.get("benchmark", "test")
    lines = [f"# rlvr-linearity report: {cfg.experiment_name or 'pipeline'}", ""]
    benches = list(results.get("benchmarks") or [bench])
    lines += [f"{'Benchmarks' if len(benches) > 1 else 'Benchmark'} (held-out split) with their sampling: "
              f"{_sampling_words(results, benches, cfg)}. Trajectory: `{results.get('trajectory')}`."
              + (f" Verdicts and plots use `{bench}`; the tables have a column per benchmark." if len(benches) > 1
                 else ""), ""]
    lines += ["## Verdict", ""] + [f"- {v}" for v in verdict(results)] + [""]
    trained = {r["step"]: r for r in [results.get("base") or {}, *results.get("rlvr", [])] if "step" in r}
    lines += _trained_lines(trained, acc, benches, bench)
    lin = results.get("linearity")
    if lin:
        lines += ["## Linearity", ""] + _linearity_lines(lin)
    lines += _method_lines(results, trained, acc, benches, bench)
    lines += _closing_lines(results, images)
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _draw_figures(out_dir: Path, figs: Path, results: dict) -> list[tuple[str, str]]:
    """The pipeline's own figures, then the paper figures regenerate drew: [(title, file name)]."""
    stages = out_dir / "stages"
    images: list[tuple[str, str]] = []
    metrics = _read_jsonl(stages / "train" / "train_metrics.jsonl")
    lin_dir = Path((results.get("linearity") or {}).get("dir") or "") / "linearity"
    weights = json.loads((lin_dir / "weights_r2.json").read_text()) if (lin_dir / "weights_r2.json").is_file() else {}
    for title, name, draw in (
        ("Training reward", "training_reward.png", lambda p: plot_training_curve(metrics, p)),
        ("Training dynamics: KL, entropy, completion length", "training_dynamics.png",
         lambda p: plot_training_dynamics(metrics, p)),
        ("Accuracy of trained and extrapolated checkpoints", "accuracy_vs_step.png",
         lambda p: plot_accuracy_vs_step(results, p)),
        ("Weight-space error of the predictions", "prediction_error.png", lambda p: plot_prediction_error(results, p)),
        ("Weight R² vs window length", "r2_vs_window.png", lambda p: plot_r2_vs_window(weights, p)),
    ):
        if (p := draw(figs / name)) is not None:
            images.append((title, p.name))
    for m in (results.get("paper_figures") or {}).get("made") or []:  # drawn by figures.regenerate
        png = next((o for o in m["outputs"] if o.endswith(".png")), None)
        if png:
            where = f" ({m['label']})" if m.get("label") and "/" in m["label"] else ""
            images.append((f"{m['paper']}: {m['title']}{where}", Path(png).name))
    return images


def _trained_lines(trained: dict, acc: dict, benches: list[str], bench: str) -> list[str]:
    lines = ["## Trained checkpoints (RLVR)", "", "Accuracy with its 95% bootstrap interval over problems.", ""]
    header = ["step"] + [h for b in benches for h in ((f"{b} accuracy", "95% CI") if len(benches) > 1
                                                       else ("accuracy", "95% CI"))]
    body = []
    for s in sorted(set(acc) | {k for k, r in trained.items() if r.get("metrics")}):
        cells = [str(s)]
        for b in benches:
            e = bench_entry(trained.get(s) or {}, b, bench)
            cells += [fmt(e.get("accuracy")), fmt_ci(e.get("accuracy_ci95")).strip() or "–"]
        body.append(cells)
    lines += md_table(header, body) + [""]

    return lines


def _method_lines(results: dict, trained: dict, acc: dict, benches: list[str], bench: str) -> list[str]:
    """One table per prediction method: accuracy, paired difference from trained, weight error."""
    lines: list[str] = []
    for title, rows, cols in (
        ("RELEX (rank-1, linear fit on step values)", results.get("relex", []), ["history", "target"]),
        ("Weight extrapolation (LIN, two points)", results.get("weight_extrapolation", []), ["base_step", "second_step", "target"]),
        ("Logits extrapolation (LIN, decoding time)", results.get("logits_extrapolation", []), ["base_step", "second_step", "target"]),
    ):
        if not rows:
            continue
        lines += [f"## {title}", "", "Accuracy with its 95% bootstrap interval; the difference from the trained "
                  "checkpoint at the target step is paired on the same problems (exact McNemar for one sample per "
                  "problem, else a paired bootstrap); weight error: relative L2 and cosine of the predicted vs "
                  "trained change from step 0.", ""]
        body = []
        others = benches[1:]
        for r in rows:
            vs, err = r.get("vs_trained"), r.get("weight_error") or {}
            extra = []
            for b in others:  # the other benchmarks: accuracy and its paired difference from trained
                e = bench_entry(r, b, bench)
                bvs = e.get("vs_trained")
                extra += [fmt(e.get("accuracy")) + fmt_ci(e.get("accuracy_ci95")),
                          fmt(bench_entry(trained.get(r["target"]) or {}, b, bench).get("accuracy")),
                          f"{bvs['diff']:+.3f}, p = {bvs['p_value']:.2g}" if bvs else "–"]
            body.append([str(r[c]) for c in cols] + [
                fmt(r.get("accuracy")) + fmt_ci(r.get("accuracy_ci95")), fmt(acc.get(r["target"])),
                (f"{vs['diff']:+.3f}{fmt_ci(vs['diff_ci95'])}" if vs else "–"), (f"{vs['p_value']:.2g}" if vs else "–"),
                fmt(err.get("rel_l2")), fmt(err.get("cosine"))] + extra)
        first = f"{bench} " if others else ""
        lines += md_table(cols + [f"{first}accuracy [95% CI]", "trained at target", "− trained [95% CI]", "p (paired)",
                                  "weight rel. L2", "weight cosine"]
                          + [h for b in others for h in (f"{b} accuracy [95% CI]", f"{b} trained at target",
                                                         f"{b} − trained (paired)")], body) + [""]

    return lines


def _closing_lines(results: dict, images: list[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    if images:
        lines += ["## Figures", "", "Paper figures are drawn by the same code as `rlvr figures figures.inputs=[DIR]`; "
                  "`figures/README.md` lists them with their inputs, and the paper figures that need GPU-scale runs.", ""]
        lines += [f"![{t}](figures/{n})" for t, n in images] + [""]
    timings = results.get("timings") or {}
    if timings:
        lines += ["## Timings (seconds; 0 = reused from the stage cache)", ""]
        lines += md_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]) + [""]
    return lines
