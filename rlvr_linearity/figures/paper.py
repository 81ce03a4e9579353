"""Paper figures and tables that no other figure module draws: LIN's robustness box plot,
weight-extrapolation curves (Fig. 5), Table 1 (logits extrapolation), Table 2 and Fig. 6
(re-grounding), RELEX's accuracy per T_cut and its rank/fit ablations.

Plain functions: parsed JSON in (schemas in `figures.schemas`), PNG path out (None when the
input holds nothing to draw). Tables are computed by pure functions and written as Markdown
next to a figure, so the numbers can be tested without drawing.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from rlvr_linearity.figures import paper_numbers as pn
from rlvr_linearity.figures.extrapolation import plot_accuracy_vs_target
from rlvr_linearity.figures.style import PALETTE, also_pdf, figure, save
from rlvr_linearity.io import write_json_atomic


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


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


# -- LIN Fig. 2: robustness over settings --------------------------------------------------
def plot_robustness(settings: list[dict], path, pdf: bool = False, reference: bool = True) -> Path | None:
    """Box plot of weight R² and token log-prob R² per training setting.

    settings: [{"label", "weights": weights_r2 dict or None, "logprobs": logprob_r2 dict or None}].
    Weight boxes come from the 100-bin histogram (every weight), log-prob boxes from the tokens' R².
    Settings labelled like the paper's (RL, SFT, Zero-RL) get its approximate medians as crosses.
    """
    boxes = []
    for s in settings:
        w = s.get("weights") or {}
        lp = (s.get("logprobs") or {}).get("logprob") or {}
        boxes.append((box_stats(counts=w.get("histogram"), label=s["label"]),
                      box_stats(values=lp.get("r2_values"), label=s["label"])))
    if not any(b for pair in boxes for b in pair):
        return None
    fig, ax = figure(max(4.0, 1.3 * len(settings) + 1.5), 3.6)
    width = 0.35
    for j, (kind, colour) in enumerate([("weights", PALETTE[0]), ("log-probs", PALETTE[1])]):
        stats = [(i, pair[j]) for i, pair in enumerate(boxes) if pair[j] is not None]
        if not stats:
            continue
        ax.bxp([s for _, s in stats], positions=[i + (j - 0.5) * width for i, _ in stats], widths=width * 0.9,
               patch_artist=True, showfliers=False,
               boxprops={"facecolor": colour, "alpha": 0.55, "edgecolor": colour},
               medianprops={"color": "black"}, whiskerprops={"color": colour}, capprops={"color": colour})
        ax.plot([], [], "s", color=colour, alpha=0.55, label=kind)
    paper_med = {k.lower(): v for k, v in pn.LIN_ROBUSTNESS_MEDIANS.items()}
    refs = [(i, paper_med[s["label"].lower()]) for i, s in enumerate(settings) if reference and s["label"].lower() in paper_med]
    for n, (i, (w, o)) in enumerate(refs):
        ax.plot([i - 0.5 * width, i + 0.5 * width], [w, o], "x", color="black", ms=7, label="LIN Fig. 2 median" if n == 0 else None)
    ax.axhline(0.7, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(settings)), [s["label"] for s in settings], rotation=20 if len(settings) > 4 else 0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("R²")
    ax.set_title("Linearity across training settings")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8)
    return save(fig, path, pdf)


# -- LIN Fig. 5: weight extrapolation --------------------------------------------------------
def plot_weight_extrapolation(results: dict, path, pdf: bool = False, reference: bool = True) -> Path | None:
    """Accuracy vs target step t' for each (t0, t1) pair, starting from the trained t1, with the
    RLVR curve; the paper's Fig. 5 (read off the plot) in a side panel when `reference`."""
    rows = [r for r in results.get("weight_extrapolation") or [] if r.get("accuracy") is not None]
    if not rows:
        return None
    rlvr = {r["step"]: r["accuracy"] for r in results.get("rlvr") or [] if r.get("accuracy") is not None}
    base = (results.get("base") or {}).get("accuracy")
    if base is not None:
        rlvr.setdefault(0, base)
    fig, axes = figure(10.0 if reference else 5.5, 3.6, ncols=2 if reference else 1, squeeze=False)
    ax = axes[0][0]
    if rlvr:
        xs = sorted(rlvr)
        ax.plot(xs, [rlvr[x] for x in xs], color="black", lw=1.2, marker="o", ms=2.5, label="RLVR (trained)")
    pairs = sorted({(r["base_step"], r["second_step"]) for r in rows}, key=lambda p: (p[1], p[0]))
    for i, (a, b) in enumerate(pairs):
        pts = sorted((r["target"], r["accuracy"]) for r in rows if (r["base_step"], r["second_step"]) == (a, b))
        if b in rlvr:
            pts = [(b, rlvr[b])] + [p for p in pts if p[0] != b]
        c = PALETTE[i % len(PALETTE)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker="D", ms=4, color=c,
                label=f"t₀={a}, t₁={b}")
        ax.axvline(b, color=c, lw=0.6, alpha=0.4)
    ax.set_xlabel("target step t′")
    ax.set_ylabel(f"accuracy ({results.get('benchmark', 'test')})")
    ax.set_title("Weight extrapolation W(t′) = W(t₀) + α·(W(t₁) − W(t₀))")
    ax.legend(fontsize=8)
    if reference:
        rax = axes[0][1]
        for i, (t1, pts) in enumerate(pn.LIN_FIG5.items()):
            xs = sorted(pts)
            rax.plot(xs, [pts[x] for x in xs], ls="--", marker="D", ms=4, color=PALETTE[i % len(PALETTE)], label=f"t₁={t1}")
            rax.axvline(t1, color=PALETTE[i % len(PALETTE)], lw=0.6, alpha=0.4)
        rax.set_xlabel("target step t′")
        rax.set_ylabel("AIME24 avg@64")
        rax.set_title("LIN Fig. 5 (paper, read off the plot)")
        rax.legend(fontsize=8)
    return save(fig, path, pdf)


# -- LIN Table 1: logits extrapolation --------------------------------------------------------
def relative_improvements(rows: list[dict]) -> dict:
    """Per-benchmark relative change (ours / std − 1) and the Average row in BOTH conventions:
    `rel_of_average` (relative change of the averaged score: the paper's "+4.2%") and
    `mean_of_relative` (mean of the per-benchmark relative changes: 6.1% on the paper's values)."""
    if not rows:
        raise ValueError("no benchmark rows")
    out = [{**r, "rel": r["ours"] / r["std_rl"] - 1.0} for r in rows]
    std = float(np.mean([r["std_rl"] for r in rows]))
    ours = float(np.mean([r["ours"] for r in rows]))
    return {"rows": out, "average": {"std_rl": std, "ours": ours, "rel_of_average": ours / std - 1.0,
                                     "mean_of_relative": float(np.mean([r["rel"] for r in out]))}}


def logits_rows_from_results(results: dict) -> list[dict]:
    """Table 1 rows from a pipeline results.json: each logits-extrapolation run against the RLVR
    checkpoint at its target step (or, if that was not trained, at its second step)."""
    rlvr = {r["step"]: r["accuracy"] for r in results.get("rlvr") or [] if r.get("accuracy") is not None}
    out = []
    for r in results.get("logits_extrapolation") or []:
        if r.get("accuracy") is None:
            continue
        ref = r["target"] if r["target"] in rlvr else r.get("second_step")
        if ref in rlvr:
            out.append({"benchmark": f"{results.get('benchmark', 'test')} (t′={r['target']}, vs RL step {ref})",
                        "std_rl": rlvr[ref], "ours": r["accuracy"]})
    return out


def table1(rows: list[dict], out_dir, pdf: bool = False, reference: bool = True) -> dict[str, Path] | None:
    """LIN Table 1 from [{benchmark, std_rl, ours}]: Markdown + JSON table and a bar figure."""
    rows = [r for r in rows if r.get("std_rl") and r.get("ours") is not None]
    if not rows:
        return None
    res = relative_improvements(rows)
    out_dir = Path(out_dir)
    paper = {bench_key(k): v for k, v in pn.LIN_TABLE1.items()}
    md_rows = []
    for r in res["rows"]:
        p = paper.get(bench_key(r["benchmark"])) if reference else None
        md_rows.append([r["benchmark"], f"{r['std_rl']:.4f}", f"{r['ours']:.4f}", pct(r["rel"]),
                        f"{p[0]:.4f} → {p[1]:.4f} ({p[2]:+.1f}%)" if p else ""])
    a = res["average"]
    md_rows.append(["**Average**", f"{a['std_rl']:.4f}", f"{a['ours']:.4f}",
                    f"{pct(a['rel_of_average'])} (of the average) / {pct(a['mean_of_relative'])} (mean of relative)",
                    f"{pn.LIN_TABLE1_AVERAGE[0]:.4f} → {pn.LIN_TABLE1_AVERAGE[1]:.4f} (+4.2% / 6.1%)" if reference else ""])
    md = write_markdown_table(out_dir / "lin_table1.md", "LIN Table 1: logits extrapolation",
                              ["Benchmark", "Std. RL", "Ours", "Rel. improvement", "Paper"], md_rows,
                              "Average row: relative change of the averaged score (the paper's convention in "
                              "Table 1) and the mean of the per-benchmark relative changes.")
    js = out_dir / "lin_table1.json"
    write_json_atomic(js, res)
    labels = [r["benchmark"] for r in res["rows"]] + ["Average"]
    std = [r["std_rl"] for r in res["rows"]] + [a["std_rl"]]
    ours = [r["ours"] for r in res["rows"]] + [a["ours"]]
    rel = [r["rel"] for r in res["rows"]] + [a["rel_of_average"]]
    fig, ax = figure(max(4.5, 1.3 * len(labels) + 1), 3.6)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, std, 0.4, color=PALETTE[7], label="Std. RL")
    ax.bar(x + 0.2, ours, 0.4, color=PALETTE[0], label="logits extrapolation")
    for xi, o, rv in zip(x, ours, rel):
        ax.text(xi + 0.2, o, pct(rv), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [lbl.split(" (")[0].replace(" ", "\n") for lbl in labels])
    ax.set_ylabel("accuracy")
    ax.set_title("Output-space (logits) extrapolation vs standard RL")
    ax.legend()
    png = save(fig, out_dir / "lin_table1.png", pdf)
    return {"png": png, "md": md, "json": js}


# -- LIN Table 2 and Fig. 6: re-grounding ----------------------------------------------------
def method_label(m: dict) -> str:
    return m.get("label") or f"({m['M']},{m['N']})"


def _at_budget(points: list[dict], budget: int) -> dict | None:
    """The model available after `budget` real steps: the last point with real_steps <= budget."""
    ok = [p for p in points if p["real_steps"] <= budget]
    return max(ok, key=lambda p: p["real_steps"]) if ok else None


def _benchmarks(*point_lists) -> list[str]:
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
        benches = _benchmarks(std, pts)
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


def regrounding_figures(data: dict, out_dir, pdf: bool = False, budgets=None, thresholds=None,
                        benchmark: str | None = None, reference: bool = True) -> dict[str, Path]:
    """Table 2 (Markdown + JSON + figure) and Fig. 6 (accuracy vs real steps + speed-ups)."""
    out_dir = Path(out_dir)
    made: dict[str, Path] = {}
    std = sorted(data.get("std_rl") or [], key=lambda p: p["real_steps"])
    methods = data.get("methods") or []
    if not std or not methods:
        return made
    benches = _benchmarks(std, *[m.get("points") or [] for m in methods])
    benchmark = benchmark or data.get("benchmark") or (benches[0] if benches else None)
    rows = budget_table(data, budgets)
    if rows:
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
        made["lin_table2_md"] = write_markdown_table(out_dir / "lin_table2.md", "LIN Table 2: fixed real-step budgets",
                                                     ["Config", "Steps", *bl, "Avg", "%Imp", "Δavg"], md_rows, note)
        write_json_atomic(out_dir / "lin_table2.json", rows)
        labels = sorted({r["method"] for r in rows})
        fig, ax = figure(5.5, 3.4)
        for i, lbl in enumerate(labels):
            rr = [r for r in rows if r["method"] == lbl]
            ax.plot([r["budget"] for r in rr],  # %Imp undefined (None) where standard RL scored 0
                    [np.nan if r["imp_mean_of_relative"] is None else 100 * r["imp_mean_of_relative"] for r in rr],
                    marker="o",
                    color=PALETTE[i % len(PALETTE)], label=f"{lbl} (this run)")
        if reference:
            ax.plot(list(pn.LIN_TABLE2_IMP), list(pn.LIN_TABLE2_IMP.values()), ls=":", marker="x", color="grey",
                    label="LIN Table 2 (paper)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("real RL steps (budget)")
        ax.set_ylabel("%Imp over standard RL")
        ax.set_title("Re-grounding at fixed real-step budgets")
        ax.legend(fontsize=8)
        made["lin_table2"] = save(fig, out_dir / "lin_table2.png", pdf)
    if benchmark is None:
        return made
    thr = list(thresholds) if thresholds else default_thresholds(data, benchmark)
    sp = speedups(data, thr, benchmark)
    write_json_atomic(out_dir / "lin_fig6_speedups.json", {"benchmark": benchmark, "rows": sp})
    fig, axes = figure(10.0, 3.6, ncols=2)
    ax, bax = axes
    ax.plot([p["real_steps"] for p in std], [p["accuracy"].get(benchmark) for p in std], color="black", marker="o",
            ms=3, label="standard RL")
    for i, m in enumerate(methods):
        pts = sorted(m.get("points") or [], key=lambda p: p["real_steps"])
        ax.plot([p["real_steps"] for p in pts], [p["accuracy"].get(benchmark) for p in pts], marker="s", ms=3,
                color=PALETTE[i % len(PALETTE)], label=method_label(m))
    for t in thr:
        ax.axhline(t, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("real RL steps")
    ax.set_ylabel(benchmark)
    ax.set_title("Periodic re-grounding (RL-Extra)")
    ax.legend(fontsize=8)
    labels = [method_label(m) for m in methods]
    w = 0.8 / max(len(labels), 1)
    for j, row in enumerate(sp):
        if row["std_rl"] is None:
            bax.text(j, 0.1, "not reached by\nstandard RL", ha="center", va="bottom", fontsize=7, color="grey")
    for i, lbl in enumerate(labels):
        for j, row in enumerate(sp):
            if row["std_rl"] is None:
                continue
            s = row["methods"][lbl]["speedup"]
            x = j + (i - (len(labels) - 1) / 2) * w
            if s is None:
                bax.text(x, 0.05, "—", ha="center", fontsize=8)
                continue
            bax.bar(x, s, w * 0.95, color=PALETTE[i % len(PALETTE)], label=lbl if j == 0 else None)
            bax.text(x, s, f"{s:.1f}×", ha="center", va="bottom", fontsize=7)
    bax.axhline(1, color="black", lw=0.6)
    bax.set_xticks(range(len(sp)), [f"≥{r['threshold']:.2f}" for r in sp])
    bax.set_xlabel(f"{benchmark} threshold")
    bax.set_ylabel("speed-up in real steps")
    bax.set_title("Steps to threshold: standard RL / re-grounding")
    if bax.get_legend_handles_labels()[0]:  # no bars when no configuration reached a threshold
        bax.legend(fontsize=8)
    made["lin_fig6"] = save(fig, out_dir / "lin_fig6_regrounding.png", pdf)
    md_rows = [[f"≥{r['threshold']:.2f}", r["std_rl"] if r["std_rl"] is not None else "—",
                *[(f"{v['steps']} ({v['speedup']:.1f}×)" if v["speedup"] else (v["steps"] if v["steps"] is not None else "—"))
                  for v in r["methods"].values()]] for r in sp]
    note = ""
    if reference:
        note = "Paper (LIN Fig. 6, AIME24): " + "; ".join(
            f"≥{t:.2f}: " + ", ".join(f"{k} {v[t] if v[t] is not None else '—'}" for k, v in pn.LIN_FIG6_STEPS.items())
            for t in pn.LIN_FIG6_THRESHOLDS)
    made["lin_fig6_md"] = write_markdown_table(out_dir / "lin_fig6_speedups.md", f"LIN Fig. 6: real RL steps to reach {benchmark}",
                                               ["Threshold", "Std RL", *labels], md_rows, note)
    return made


# -- RELEX: accuracy per T_cut and ablations --------------------------------------------------
def _default_relex(row: dict) -> bool:
    return int(row.get("rank", 1)) == 1 and str(row.get("fit", "linear")) == "linear"


def plot_relex_accuracy(results: dict, path, pdf: bool = False) -> Path | None:
    """Accuracy vs target step per T_cut (rank 1, linear fit) with the trained RLVR curve,
    drawn by `figures.extrapolation.plot_accuracy_vs_target`."""
    relex = [r for r in results.get("relex") or [] if r.get("accuracy") is not None and _default_relex(r)]
    if not relex:
        return None
    rlvr = [r for r in results.get("rlvr") or [] if r.get("accuracy") is not None]
    with also_pdf() if pdf else nullcontext():
        return plot_accuracy_vs_target(relex, rlvr, path, base_accuracy=(results.get("base") or {}).get("accuracy"),
                                       metric=f"accuracy ({results.get('benchmark', 'test')})")


def plot_relex_ablations(results: dict, path, pdf: bool = False) -> Path | None:
    """Accuracy vs target for each rank (linear fit) and each fit (rank 1), one panel per
    ablated key, trained RLVR curve in grey; None unless rows vary rank or fit."""
    rows = [r for r in results.get("relex") or [] if r.get("accuracy") is not None]
    panels = []
    for key, default, other, other_default in (("rank", 1, "fit", "linear"), ("fit", "linear", "rank", 1)):
        vals = {r.get(key, default) for r in rows if r.get(other, other_default) == other_default}
        if len(vals) > 1:
            panels.append((key, sorted(vals, key=str), other, other_default, default))
    if not panels:
        return None
    rlvr = sorted((r["step"], r["accuracy"]) for r in results.get("rlvr") or [] if r.get("accuracy") is not None)
    fig, axes = figure(5.0 * len(panels), 3.6, ncols=len(panels), squeeze=False)
    for ax, (key, vals, other, other_default, default) in zip(axes[0], panels):
        if rlvr:
            ax.plot([p[0] for p in rlvr], [p[1] for p in rlvr], color="grey", lw=1, label="RLVR (trained)")
        histories = sorted({r["history"] for r in rows})
        for i, v in enumerate(vals):
            for k, h in enumerate(histories):
                pts = sorted((r["target"], r["accuracy"]) for r in rows if r.get(key, default) == v
                             and r.get(other, other_default) == other_default and r["history"] == h)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^Dv"[k % 5], ms=4, ls="--",
                            color=PALETTE[i % len(PALETTE)],
                            label=f"{key} {v}" + (f", T_cut {h}" if len(histories) > 1 else ""))
        ax.set_xlabel("target step")
        ax.set_ylabel(f"accuracy ({results.get('benchmark', 'test')})")
        ax.set_title(f"RELEX ablation: {key} ({other} {other_default})")
        ax.legend(fontsize=8)
    return save(fig, path, pdf)
