"""RELEX's analyses of evaluated checkpoints, from pipeline results (no matplotlib; docs/methods.md
§A3, §E): Finding 1 (accuracy of rank-r reconstructions of trained steps against the originals),
the denoising comparison (a rank-r reconstruction or a RELEX prediction against the trained
checkpoint at the same step, with the share of the update it removed) and the main table (base,
RLVR at its final step, RELEX per window; a column per benchmark), as Markdown and JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlvr_linearity.figures.tables import write_markdown_table
from rlvr_linearity.io import write_json_atomic


def benchmarks_of(results: dict) -> list[str]:
    """The run's benchmarks in order (the first is the in-domain one, e.g. MATH)."""
    return list(results.get("benchmarks") or [results.get("benchmark", "test")])


def scores(row: dict | None, benches: list[str]) -> dict[str, float | None]:
    """Accuracy per benchmark of a results row: its `metrics`, else (results written before
    per-benchmark metrics) the top-level accuracy for the first benchmark."""
    row = row or {}
    if row.get("metrics"):
        return {b: ((row["metrics"].get(b) or {}).get("accuracy")) for b in benches}
    return {b: (row.get("accuracy") if i == 0 else None) for i, b in enumerate(benches)}


def _trained(results: dict, benches: list[str]) -> dict[int, dict[str, float | None]]:
    """step -> scores of the trained checkpoints (base as step 0)."""
    out = {r["step"]: scores(r, benches) for r in results.get("rlvr") or []}
    if (results.get("base") or {}).get("accuracy") is not None:
        out[0] = scores(results["base"], benches)
    return out


def _method(row: dict) -> str:
    h = "all steps" if row.get("history") is None else f"steps ≤ {row['history']}"
    return f"rank-{row['rank']} reconstruction ({h})"


# -- Finding 1 -----------------------------------------------------------------------------------
def finding1(results: dict) -> dict | None:
    """Reconstructions per (rank, history) against the originals: per step both accuracies, and
    the share of the RL gain the reconstructions keep, Σ(rec − base) / Σ(orig − base) over the
    steps with both (None without a gain)."""
    rows = [r for r in results.get("reconstruction") or [] if r.get("accuracy") is not None]
    if not rows:
        return None
    benches = benchmarks_of(results)
    trained = _trained(results, benches)
    base = trained.get(0, {})
    series = []
    for rank, history in sorted({(r["rank"], r.get("history")) for r in rows}, key=lambda k: (k[0], k[1] or 0)):
        pts = sorted((r for r in rows if (r["rank"], r.get("history")) == (rank, history)), key=lambda r: r["step"])
        kept = {}
        for b in benches:
            pairs = [(scores(r, benches)[b], trained.get(r["step"], {}).get(b)) for r in pts]
            pairs = [(rec, orig) for rec, orig in pairs if rec is not None and orig is not None]
            gain = sum(o - base[b] for _, o in pairs) if base.get(b) is not None else 0.0
            kept[b] = sum(rc - base[b] for rc, _ in pairs) / gain if pairs and gain > 0 else None
        series.append({"rank": rank, "history": history, "label": _method({"rank": rank, "history": history}),
                       "points": [{"step": r["step"], "accuracy": scores(r, benches),
                                   "original": trained.get(r["step"], {b: None for b in benches}),
                                   "rel_l2": (r.get("weight_error") or {}).get("rel_l2")} for r in pts],
                       "gain_kept": kept})
    return {"benchmarks": benches, "base": base, "trained": {s: trained[s] for s in sorted(trained)}, "series": series}


# -- denoising -------------------------------------------------------------------------------------
def denoising(results: dict) -> dict | None:
    """Each denoised checkpoint (a rank-r reconstruction of step s, or a RELEX prediction with
    target s) against the trained checkpoint at s: accuracies and their change per benchmark,
    `removed` = ‖Δ − Δ̃‖/‖Δ‖ (the share of the trained update it drops: `weight_error.rel_l2`),
    the paired test's p-value; and per method the mean change and how often it is >= 0."""
    benches = benchmarks_of(results)
    trained = _trained(results, benches)
    cands = [(r["step"], _method(r), r) for r in results.get("reconstruction") or []]
    cands += [(r["target"], f"RELEX (T_cut {r['history']}, rank {r.get('rank', 1)}"
               + (f", {r['fit']})" if r.get("fit", "linear") != "linear" else ")"), r) for r in results.get("relex") or []]
    rows = []
    for step, method, r in cands:
        if r.get("accuracy") is None or step not in trained or step == 0:
            continue
        den, orig = scores(r, benches), trained[step]
        change = {b: (den[b] - orig[b]) if den[b] is not None and orig[b] is not None else None for b in benches}
        err = r.get("weight_error") or {}
        rows.append({"method": method, "step": step, "trained": orig, "denoised": den, "change": change,
                     "removed": err.get("rel_l2"), "cosine": err.get("cosine"),
                     "p_value": (r.get("vs_trained") or {}).get("p_value")})
    if not rows:
        return None
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        per = {}
        for b in benches:
            ch = [r["change"][b] for r in mine if r["change"][b] is not None]
            per[b] = {"n": len(ch), "mean_change": float(np.mean(ch)) if ch else None,
                      "n_not_worse": int(sum(c >= 0 for c in ch))}
        removed = [r["removed"] for r in mine if r["removed"] is not None]
        summary.append({"method": method, "benchmarks": per, "mean_removed": float(np.mean(removed)) if removed else None})
    return {"benchmarks": benches, "rows": rows, "summary": summary}


def _num(x, form: str = "{:.3f}") -> str:
    return "—" if x is None else form.format(x)


def write_denoising(data: dict, md_path: Path, json_path: Path) -> tuple[Path, Path]:
    """`relex_denoising.md` (per denoised checkpoint: trained → denoised per benchmark) and `.json`."""
    benches = data["benchmarks"]
    rows = [[r["method"], r["step"], _num(r["removed"]),
             *[f"{_num(r['trained'][b])} → {_num(r['denoised'][b])} ({_num(r['change'][b], '{:+.3f}')})" for b in benches],
             _num(r["p_value"], "{:.2g}")] for r in data["rows"]]
    note = "\n".join(
        f"- {s['method']}: " + "; ".join(f"{b} mean change {_num(v['mean_change'], '{:+.3f}')}, not worse at "
                                         f"{v['n_not_worse']}/{v['n']} steps" for b, v in s["benchmarks"].items())
        + f"; mean ‖Δ̃ − Δ‖/‖Δ‖ {_num(s['mean_removed'])}" for s in data["summary"])
    md = write_markdown_table(md_path, "RELEX denoising: denoised checkpoints vs the trained ones at the same step",
                              ["method", "step", "removed ‖Δ−Δ̃‖/‖Δ‖", *[f"{b}: trained → denoised" for b in benches],
                               "p (paired)"], rows, note)
    write_json_atomic(json_path, data)
    return md, Path(json_path)


# -- main table ----------------------------------------------------------------------------------
def main_table(groups: list[tuple[str, dict]]) -> dict | None:
    """Rows per model (label, merged results): base, RLVR at its final evaluated step, and per
    RELEX window (rank, fit) its prediction at that step and at its furthest target;
    columns: every benchmark (first = in-domain) and their average."""
    benches = list(dict.fromkeys(b for _, res in groups for b in benchmarks_of(res)))
    rows = []
    for model, res in groups:
        trained = _trained(res, benches)
        final = max((s for s in trained if s != 0), default=None)
        if final is None:
            continue
        if 0 in trained:
            rows.append({"model": model, "method": "Base", "rl_steps": 0, "target": 0, "scores": trained[0]})
        rows.append({"model": model, "method": f"RLVR (step {final})", "rl_steps": final, "target": final,
                     "scores": trained[final]})
        relex = [r for r in res.get("relex") or [] if r.get("accuracy") is not None]
        for key in sorted({(r["history"], r.get("rank", 1), r.get("fit", "linear")) for r in relex}, key=str):
            mine = {r["target"]: r for r in relex if (r["history"], r.get("rank", 1), r.get("fit", "linear")) == key}
            h, rank, fit = key
            extra = (f", rank {rank}" if rank != 1 else "") + (f", {fit}" if fit != "linear" else "")
            for t in sorted({t for t in mine if t == final} | {max(mine)}):  # at the final step, and the furthest
                rows.append({"model": model, "method": f"RELEX (T_cut {h} → {t}{extra})", "rl_steps": h, "target": t,
                             "scores": scores(mine[t], benches)})
    if not rows:
        return None
    for r in rows:
        vals = [r["scores"].get(b) for b in benches]
        r["average"] = float(np.mean(vals)) if len(benches) > 1 and all(v is not None for v in vals) else None
    return {"benchmarks": benches, "rows": rows}


def write_main_table(data: dict, md_path: Path, json_path: Path) -> tuple[Path, Path]:
    """`relex_main_table.md` (a column per benchmark, the first in-domain, and the average) and `.json`."""
    benches = data["benchmarks"]
    avg = len(benches) > 1
    rows = [[r["model"], r["method"], r["rl_steps"], *[_num(r["scores"].get(b)) for b in benches],
             *([_num(r["average"])] if avg else [])] for r in data["rows"]]
    md = write_markdown_table(md_path, "RELEX main table: base, RLVR and RELEX per benchmark",
                              ["model", "method", "RL steps", *benches, *(["Avg."] if avg else [])], rows,
                              f"{benches[0]} is in-domain; the other columns are out-of-domain. RL steps: the "
                              "trained steps each row needed (RELEX: its window, T_cut).")
    write_json_atomic(json_path, data)
    return md, Path(json_path)
