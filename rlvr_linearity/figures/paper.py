"""Paper figures that no other figure module draws: LIN's robustness box plot,
weight-extrapolation curves (Fig. 5), Table 1 (logits extrapolation), Table 2 and Fig. 6
(re-grounding), RELEX's accuracy per T_cut and its rank/fit ablations.

Plain functions: parsed JSON in (schemas in `figures.schemas`), PNG path out (None when the
input holds nothing to draw). The tables' numbers and their Markdown come from `figures.tables`,
so they can be tested, and used by the pipeline, without drawing.
"""

from __future__ import annotations

import textwrap
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from rlvr_linearity.figures import paper_numbers as pn
from rlvr_linearity.figures.extrapolation import plot_accuracy_vs_target
from rlvr_linearity.figures.style import PALETTE, also_pdf, figure, save
from rlvr_linearity.figures.tables import (box_stats, budget_table, common_benchmarks, default_thresholds, method_label,
                                           pct, speedups, table1_settings, write_fig6_table, write_table1, write_table2)


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
def table1(rows: list[dict], out_dir, pdf: bool = False, reference: bool = True) -> dict[str, Path] | None:
    """LIN Table 1 from [{benchmark, std_rl, ours, setting?}]: Markdown + JSON table (a column per
    benchmark) and a bar figure (a group per benchmark and setting, and each setting's average)."""
    rows = [r for r in rows if r.get("std_rl") is not None and r.get("ours") is not None]
    if not rows:
        return None
    settings = table1_settings(rows)
    out_dir = Path(out_dir)
    md, js = write_table1(settings, out_dir, reference)
    labels, std, ours, rel = [], [], [], []
    for st in settings:
        tag = f" ({st['setting']})" if st["setting"] else ""
        a = st["average"]
        labels += [f"{r['benchmark']}{tag}" for r in st["rows"]] + [f"Average{tag}"]
        std += [r["std_rl"] for r in st["rows"]] + [a["std_rl"]]
        ours += [r["ours"] for r in st["rows"]] + [a["ours"]]
        rel += [r["rel"] for r in st["rows"]] + [a["rel_of_average"]]
    fig, ax = figure(max(4.5, 1.3 * len(labels) + 1), 3.6)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, std, 0.4, color=PALETTE[7], label="Std. RL")
    ax.bar(x + 0.2, ours, 0.4, color=PALETTE[0], label="logits extrapolation")
    for xi, o, rv in zip(x, ours, rel):
        ax.text(xi + 0.2, o, pct(rv), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [_tick(lbl) for lbl in labels], fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_title("Output-space (logits) extrapolation vs standard RL")
    ax.legend()
    png = save(fig, out_dir / "lin_table1.png", pdf)
    return {"png": png, "md": md, "json": js}


def _tick(label: str) -> str:
    """"AIME24 (avg@64)" -> "AIME24\navg@64": the parenthesis kept (it tells apart runs of one
    benchmark at several targets), wrapped under the name."""
    name, _, rest = label.partition(" (")
    return name.replace(" ", "\n") + ("\n" + textwrap.fill(rest.rstrip(")"), 16) if rest else "")


# -- LIN Table 2 and Fig. 6: re-grounding ----------------------------------------------------
def regrounding_figures(data: dict, out_dir, pdf: bool = False, budgets=None, thresholds=None,
                        benchmark: str | None = None, reference: bool = True) -> dict[str, Path]:
    """Table 2 (Markdown + JSON + figure) and Fig. 6 (accuracy vs real steps + speed-ups)."""
    out_dir = Path(out_dir)
    made: dict[str, Path] = {}
    std = sorted(data.get("std_rl") or [], key=lambda p: p["real_steps"])
    methods = data.get("methods") or []
    if not std or not methods:
        return made
    benches = common_benchmarks(std, *[m.get("points") or [] for m in methods])
    benchmark = benchmark or data.get("benchmark") or (benches[0] if benches else None)
    rows = budget_table(data, budgets)
    if rows:
        made["lin_table2_md"] = write_table2(rows, out_dir, reference)
        made["lin_table2"] = plot_table2(rows, out_dir / "lin_table2.png", pdf, reference)
    if benchmark is None:
        return made
    thr = list(thresholds) if thresholds else default_thresholds(data, benchmark)
    sp = speedups(data, thr, benchmark)
    md = write_fig6_table(sp, benchmark, [method_label(m) for m in methods], out_dir, reference)
    made["lin_fig6"] = plot_fig6(std, methods, sp, thr, benchmark, out_dir / "lin_fig6_regrounding.png", pdf)
    made["lin_fig6_md"] = md
    return made


def plot_table2(rows: list[dict], path, pdf: bool = False, reference: bool = True) -> Path:
    """%Imp over standard RL per real-step budget, one line per configuration (`budget_table`
    rows), LIN Table 2's %Imp dotted when `reference`."""
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
    return save(fig, path, pdf)


def plot_fig6(std: list[dict], methods: list[dict], sp: list[dict], thresholds, benchmark: str, path,
              pdf: bool = False) -> Path:
    """LIN Fig. 6: accuracy vs real RL steps of standard RL and every configuration (left) and
    the speed-ups to each threshold (`speedups` rows, right)."""
    fig, axes = figure(10.0, 3.6, ncols=2)
    ax, bax = axes
    ax.plot([p["real_steps"] for p in std], [p["accuracy"].get(benchmark) for p in std], color="black", marker="o",
            ms=3, label="standard RL")
    for i, m in enumerate(methods):
        pts = sorted(m.get("points") or [], key=lambda p: p["real_steps"])
        ax.plot([p["real_steps"] for p in pts], [p["accuracy"].get(benchmark) for p in pts], marker="s", ms=3,
                color=PALETTE[i % len(PALETTE)], label=method_label(m))
    for t in thresholds:
        ax.axhline(t, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("real RL steps")
    ax.set_ylabel(benchmark)
    ax.set_title("Periodic re-grounding (RL-Extra)")
    ax.legend(fontsize=8)
    _speedup_bars(bax, sp, [method_label(m) for m in methods], benchmark)
    return save(fig, path, pdf)


def _speedup_bars(bax, sp: list[dict], labels: list[str], benchmark: str) -> None:
    """One group of bars per threshold (one bar per configuration), marked where standard RL or
    the configuration never reached it."""
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
