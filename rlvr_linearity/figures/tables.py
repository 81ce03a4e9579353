"""The papers' tables computed from results: LIN Table 1 (logits extrapolation), Table 2 and
Fig. 6's speed-ups (re-grounding), box statistics of LIN Fig. 2, written as Markdown and JSON.

Plain functions on parsed JSON (schemas in `figures.schemas`), without matplotlib: the pipeline's
reports and tests use the numbers without drawing; `figures.paper` draws them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rlvr_linearity.figures import paper_numbers as pn
from rlvr_linearity.io import write_json_atomic, write_text_atomic


# -- helpers ------------------------------------------------------------------------------
def bench_key(name: str) -> str:
    """Benchmark identity for matching against the paper: "AIME24 avg@64" / "aime24" -> "aime24",
    "MATH-500" -> "math500", "LiveCodeBench" -> "lcb"."""
    head = re.split(r"\s", str(name).strip())[0].lower()
    key = re.sub(r"[^a-z0-9]", "", head)
    return {"livecodebench": "lcb", "math": "math500"}.get(key, key)


def pct(x: float | None, signed: bool = True) -> str:
    """0.0419 -> "+4.2%" (the papers' one-decimal percentages)."""
    if x is None or not np.isfinite(x):
        return "—"
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def write_markdown_table(path: Path, title: str, header: list[str], rows: list[list], note: str = "") -> Path:
    """A Markdown table file (atomic), for the README and the paper draft."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if note:
        lines += ["", note]
    path = Path(path)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


# -- LIN Fig. 2: box statistics ----------------------------------------------------------------
def weighted_quantiles(counts, qs) -> list[float]:
    """Quantiles of R² values given as counts in equal bins of [0, 1] (linear within a bin)."""
    c = np.asarray(counts, float)
    edges = np.linspace(0, 1, c.size + 1)
    cum = np.concatenate([[0.0], np.cumsum(c)])
    return [float(np.interp(q * cum[-1], cum, edges)) for q in qs]


def box_stats(values=None, counts=None, label: str = "") -> dict | None:
    """Box-plot statistics (quartiles, 5-95% whiskers) from raw R² values or bin counts."""
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    if values is not None and len(values):
        q = np.quantile(np.asarray(values, float), qs).tolist()
    elif counts is not None and np.sum(counts) > 0:
        q = weighted_quantiles(counts, qs)
    else:
        return None
    return {"whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "label": label, "fliers": []}


# -- LIN Table 1: logits extrapolation --------------------------------------------------------
def relative_improvements(rows: list[dict]) -> dict:
    """Per-benchmark relative change (ours / std − 1; None when std is 0) and the Average row in BOTH conventions:
    `rel_of_average` (relative change of the averaged score: the paper's "+4.2%") and
    `mean_of_relative` (mean of the per-benchmark relative changes: 6.1% on the paper's values)."""
    if not rows:
        raise ValueError("no benchmark rows")

    def rel(ours: float, std: float) -> float | None:  # undefined against a zero baseline
        return ours / std - 1.0 if std else None

    out = [{**r, "rel": rel(r["ours"], r["std_rl"])} for r in rows]
    std = float(np.mean([r["std_rl"] for r in rows]))
    ours = float(np.mean([r["ours"] for r in rows]))
    defined = [r["rel"] for r in out if r["rel"] is not None]
    return {"rows": out, "average": {"std_rl": std, "ours": ours, "rel_of_average": rel(ours, std),
                                     "mean_of_relative": float(np.mean(defined)) if defined else None}}


def logits_rows_from_results(results: dict) -> list[dict]:
    """Table 1 rows from a pipeline results.json, one per (logits-extrapolation run, benchmark):
    the run against the RLVR checkpoint at its target step (or, if that was not trained, at its
    second step); `setting` names the run. Every benchmark of the rows' `metrics`, else the
    first benchmark's `accuracy` (results written before per-benchmark metrics)."""
    first = results.get("benchmark", "test")
    rlvr = {r["step"]: r for r in results.get("rlvr") or [] if r.get("accuracy") is not None}

    def scores(row: dict) -> dict[str, float | None]:
        if row.get("metrics"):
            return {b: (m or {}).get("accuracy") for b, m in row["metrics"].items()}
        return {first: row.get("accuracy")}

    out = []
    for r in results.get("logits_extrapolation") or []:
        if r.get("accuracy") is None:
            continue
        ref = r["target"] if r["target"] in rlvr else r.get("second_step")
        if ref not in rlvr:
            continue
        trained = scores(rlvr[ref])
        for bench, ours in scores(r).items():
            if ours is not None and trained.get(bench) is not None:
                out.append({"benchmark": bench, "setting": f"t′={r['target']}, vs RL step {ref}",
                            "std_rl": trained[bench], "ours": ours})
    return out


def table1_settings(rows: list[dict]) -> list[dict]:
    """Rows grouped by `setting` (one logits-extrapolation run; "" when unnamed), each with its
    `relative_improvements`, in the order first seen."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("setting") or "", []).append(r)
    return [{"setting": k, **relative_improvements(v)} for k, v in groups.items()]


def write_table1(settings: list[dict], out_dir: Path, reference: bool = True) -> tuple[Path, Path]:
    """`lin_table1.md`, one column per benchmark and the Average, as the paper lays it out (with
    the paper's rows when `reference`), and `lin_table1.json` ({benchmarks, settings})."""
    benches = list(dict.fromkeys(r["benchmark"] for st in settings for r in st["rows"]))
    md_rows = []
    for st in settings:
        by = {r["benchmark"]: r for r in st["rows"]}
        a, tag = st["average"], f" ({st['setting']})" if st["setting"] else ""

        def cells(key, form, by=by):
            return [form(by[b][key]) if b in by else "—" for b in benches]

        md_rows.append([f"Std. RL{tag}", *cells("std_rl", "{:.4f}".format), f"{a['std_rl']:.4f}"])
        md_rows.append([f"Ours{tag}", *cells("ours", "{:.4f}".format), f"{a['ours']:.4f}"])
        md_rows.append([f"Rel. improvement{tag}", *cells("rel", pct),
                        f"{pct(a['rel_of_average'])} (of the average) / {pct(a['mean_of_relative'])} (mean of relative)"])
    if reference:
        paper = {bench_key(k): v for k, v in pn.LIN_TABLE1.items()}
        got = [paper.get(bench_key(b)) for b in benches]
        avg = pn.LIN_TABLE1_AVERAGE
        md_rows.append(["Paper: Std. RL", *[f"{p[0]:.4f}" if p else "" for p in got], f"{avg[0]:.4f}"])
        md_rows.append(["Paper: Ours", *[f"{p[1]:.4f}" if p else "" for p in got], f"{avg[1]:.4f}"])
        md_rows.append(["Paper: Rel. improvement", *[f"{p[2]:+.1f}%" if p else "" for p in got],
                        f"+{avg[2]:.1f}% / {pn.LIN_TABLE1_MEAN_OF_RELATIVE:.1f}%"])
    md = write_markdown_table(out_dir / "lin_table1.md", "LIN Table 1: logits extrapolation",
                              ["", *benches, "Average"], md_rows,
                              "Average column: relative change of the averaged score (the paper's convention in "
                              "Table 1) and the mean of the per-benchmark relative changes.")
    js = out_dir / "lin_table1.json"
    write_json_atomic(js, {"benchmarks": benches, "settings": settings})
    return md, js


# -- LIN Table 2 and Fig. 6: re-grounding ----------------------------------------------------
def method_label(m: dict) -> str:
    return m.get("label") or f"({m['M']},{m['N']})"


def _at_budget(points: list[dict], budget: int) -> dict | None:
    """The model available after `budget` real steps: the last point with real_steps <= budget."""
    ok = [p for p in points if p["real_steps"] <= budget]
    return max(ok, key=lambda p: p["real_steps"]) if ok else None


def common_benchmarks(*point_lists) -> list[str]:
    """Benchmarks evaluated in every point list, in first-seen order."""
    seen: list[str] = []
    for pts in point_lists:
        for p in pts:
            for b in p.get("accuracy") or {}:
                if b not in seen:
                    seen.append(b)
    return [b for b in seen if all(any(b in (p.get("accuracy") or {}) for p in pts) for pts in point_lists)]


def budget_table(data: dict, budgets=None) -> list[dict]:
    """LIN Table 2: for each re-grounding config and real-step budget, per-benchmark accuracy of
    standard RL vs re-grounding, the averages and %Imp = mean of per-benchmark relative changes
    (the paper's Table 2 convention) next to the relative change of the average. Budgets
    default to the paper's (200, 400, 800, 1200) where both runs were evaluated, else every
    budget they share."""
    std = sorted(data.get("std_rl") or [], key=lambda p: p["real_steps"])
    out = []
    for m in data.get("methods") or []:
        pts = sorted(m.get("points") or [], key=lambda p: p["real_steps"])
        benches = common_benchmarks(std, pts)
        if not benches:
            continue
        common = sorted({p["real_steps"] for p in pts} & {p["real_steps"] for p in std})
        for b in budgets or [b for b in pn.LIN_TABLE2 if b in common] or common:
            s, o = _at_budget(std, b), _at_budget(pts, b)
            if s is None or o is None:
                continue
            pairs = {k: (s["accuracy"][k], o["accuracy"][k]) for k in benches if k in s["accuracy"] and k in o["accuracy"]}
            if not pairs:
                continue
            rel = [o_ / s_ - 1.0 for s_, o_ in pairs.values() if s_]
            avg_s = float(np.mean([v[0] for v in pairs.values()]))
            avg_o = float(np.mean([v[1] for v in pairs.values()]))
            out.append({"method": method_label(m), "budget": int(b), "std_real_steps": s["real_steps"],
                        "real_steps": o["real_steps"], "virtual_step": o.get("virtual_step"),
                        "accuracy": pairs, "avg_std": avg_s, "avg_ours": avg_o,
                        "imp_mean_of_relative": float(np.mean(rel)) if rel else None,
                        "imp_of_average": avg_o / avg_s - 1.0 if avg_s else None})
    return out


def write_table2(rows: list[dict], out_dir: Path, reference: bool = True) -> Path:
    """`lin_table2.md` (the paper's averages and %Imp in the note when `reference`) and
    `lin_table2.json` from `budget_table` rows."""
    bl = list(rows[0]["accuracy"])
    md_rows = [[r["method"], r["budget"], *[f"{r['accuracy'][b][0]:.4f}→{r['accuracy'][b][1]:.4f}" if b in r["accuracy"] else "—"
                                           for b in bl],
                f"{r['avg_std']:.4f}→{r['avg_ours']:.4f}", pct(r["imp_mean_of_relative"]), pct(r["imp_of_average"])]
               for r in rows]
    note = ("%Imp = mean of the per-benchmark relative improvements (LIN Table 2's convention); "
            "Δavg = relative change of the averaged score.")
    if reference:
        note += " Paper (LIN Table 2, avg and %Imp): " + "; ".join(
            f"{k} steps {v[0]:.4f}→{v[1]:.4f} ({pn.LIN_TABLE2_IMP[k]:+.1f}%)" for k, v in pn.LIN_TABLE2_AVG.items())
    md = write_markdown_table(out_dir / "lin_table2.md", "LIN Table 2: fixed real-step budgets",
                              ["Config", "Steps", *bl, "Avg", "%Imp", "Δavg"], md_rows, note)
    write_json_atomic(out_dir / "lin_table2.json", rows)
    return md


def steps_to_threshold(points: list[dict], benchmark: str, threshold: float) -> int | None:
    """Fewest real RL steps at which `benchmark` accuracy reaches `threshold` (None: never)."""
    for p in sorted(points, key=lambda p: p["real_steps"]):
        v = (p.get("accuracy") or {}).get(benchmark)
        if v is not None and v >= threshold:
            return int(p["real_steps"])
    return None


def speedups(data: dict, thresholds, benchmark: str) -> list[dict]:
    """LIN Fig. 6: real steps to each threshold for standard RL and every config, and the
    speed-up = standard RL steps / config steps."""
    std = data.get("std_rl") or []
    out = []
    for t in thresholds:
        s = steps_to_threshold(std, benchmark, t)
        row = {"threshold": float(t), "std_rl": s, "methods": {}}
        for m in data.get("methods") or []:
            k = steps_to_threshold(m.get("points") or [], benchmark, t)
            row["methods"][method_label(m)] = {"steps": k, "speedup": (s / k) if s and k else None}
        out.append(row)
    return out


def default_thresholds(data: dict, benchmark: str) -> list[float]:
    """The paper's AIME24 thresholds for AIME24; else three levels within standard RL's range."""
    if bench_key(benchmark) == "aime24":
        return list(pn.LIN_FIG6_THRESHOLDS)
    vals = [p["accuracy"][benchmark] for p in data.get("std_rl") or [] if benchmark in (p.get("accuracy") or {})]
    if len(vals) < 2 or max(vals) <= min(vals):
        return []
    lo, hi = min(vals), max(vals)
    return [round(lo + f * (hi - lo), 4) for f in (0.5, 0.75, 0.95)]


def write_fig6_table(sp: list[dict], benchmark: str, labels: list[str], out_dir: Path, reference: bool = True) -> Path:
    """`lin_fig6_speedups.json` and `lin_fig6_speedups.md` from `speedups` rows (the paper's steps
    in the note when `reference`)."""
    write_json_atomic(out_dir / "lin_fig6_speedups.json", {"benchmark": benchmark, "rows": sp})
    md_rows = [[f"≥{r['threshold']:.2f}", r["std_rl"] if r["std_rl"] is not None else "—",
                *[(f"{v['steps']} ({v['speedup']:.1f}×)" if v["speedup"] else (v["steps"] if v["steps"] is not None else "—"))
                  for v in r["methods"].values()]] for r in sp]
    note = ""
    if reference:
        note = "Paper (LIN Fig. 6, AIME24): " + "; ".join(
            f"≥{t:.2f}: " + ", ".join(f"{k} {v[t] if v[t] is not None else '—'}" for k, v in pn.LIN_FIG6_STEPS.items())
            for t in pn.LIN_FIG6_THRESHOLDS)
    return write_markdown_table(out_dir / "lin_fig6_speedups.md", f"LIN Fig. 6: real RL steps to reach {benchmark}",
                                ["Threshold", "Std RL", *labels], md_rows, note)
