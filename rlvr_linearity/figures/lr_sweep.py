"""Where linearity holds: pipeline runs of a learning-rate sweep (`experiment=demo_lr_sweep`),
drawn against the learning rate. Per run: does the rank-1 coefficient stay on the line fitted on
the first 15% (its out-of-sample R²), does RELEX from that window reach the trained final
checkpoint, and how linear are the weights (median per-weight R²); per learning rate, the mean
and standard deviation over the runs (seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlvr_linearity.figures.style import PALETTE, figure, save
from rlvr_linearity.figures.tables import write_markdown_table
from rlvr_linearity.io import write_json_atomic

MATCH_POINTS = 2.0  # RELEX within this many accuracy points of the trained final checkpoint...
MIN_GAIN_POINTS = 10.0  # ...while GRPO gains at least this many over the base model: linearity "holds"
METRICS = ("base", "trained", "gain", "relex", "relex_minus_trained", "coefficient_r2_out_of_sample",
           "weight_r2_median")


def sweep_row(results: dict, run: str) -> dict | None:
    """The numbers of one pipeline run trained here (results.json with `train.lr`), else None.
    RELEX at 15% = the prediction from the window `linearity.coefficient_history` (else the
    smallest RELEX window) for the final evaluated trained step."""
    lr = (results.get("train") or {}).get("lr")
    trained = {r["step"]: r.get("accuracy") for r in results.get("rlvr") or [] if r.get("accuracy") is not None}
    if lr is None or not trained:
        return None
    final = max(trained)
    lin = results.get("linearity") or {}
    relex = {r["history"]: r.get("accuracy") for r in results.get("relex") or []
             if r.get("target") == final and r.get("rank", 1) == 1 and r.get("fit", "linear") == "linear"}
    history = lin.get("coefficient_history") if lin.get("coefficient_history") in relex else min(relex, default=None)
    base = (results.get("base") or {}).get("accuracy")
    pred = relex.get(history)
    return {"run": run, "trajectory": results.get("trajectory"), "lr": float(lr), "steps": (results.get("train") or {}).get("steps"),
            "seed": (results.get("train") or {}).get("seed"), "final_step": final, "relex_history": history,
            "base": base, "trained": trained[final], "gain": None if base is None else trained[final] - base,
            "relex": pred, "relex_minus_trained": None if pred is None else pred - trained[final],
            "coefficient_r2_out_of_sample": lin.get("coefficient_r2_out_of_sample"),
            "weight_r2_median": lin.get("median_r2")}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (learning rate, training steps), ascending: the runs' count and mean / sd (ddof 1; 0 for
    one run) of every metric, and whether linearity holds (RELEX within MATCH_POINTS of the trained
    final checkpoint while GRPO gains at least MIN_GAIN_POINTS, both on the means)."""
    out = []
    for lr, steps in sorted({(r["lr"], r["steps"] or 0) for r in rows}):
        runs = [r for r in rows if r["lr"] == lr and (r["steps"] or 0) == steps]
        s = {"lr": lr, "steps": steps, "n_runs": len(runs), "seeds": [r["seed"] for r in runs],
             "final_step": runs[0]["final_step"], "relex_history": runs[0]["relex_history"]}
        for key in METRICS:
            v = np.array([r[key] for r in runs if r[key] is not None], dtype=np.float64)
            s[key] = {"mean": float(v.mean()) if v.size else None,
                      "sd": float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else None), "n": int(v.size)}
        gap, gain = s["relex_minus_trained"]["mean"], s["gain"]["mean"]
        s["holds"] = (gap is not None and gain is not None and abs(100 * gap) <= MATCH_POINTS
                      and 100 * gain >= MIN_GAIN_POINTS)
        out.append(s)
    return out


def _cell(m: dict, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
    """A table cell: "mean ± sd" over the runs, the bare value for one run, "—" for none."""
    if m["mean"] is None:
        return "—"
    sign = "+" if signed else ""
    text = f"{scale * m['mean']:{sign}.{digits}f}"
    return text + (f" ± {scale * m['sd']:.{digits}f}" if m["n"] > 1 else "")


def plot_lr_sweep(summary: list[dict], rows: list[dict], path) -> Path:
    """Three panels against the learning rate (log axis): coefficient out-of-sample R² (symlog),
    RELEX − trained and GRPO's gain in accuracy points, weight R² median; runs as dots, means joined."""
    fig, axes = figure(12.0, 3.4, ncols=3, layout="constrained")
    lrs = sorted({s["lr"] for s in summary})
    lengths = sorted({s["steps"] for s in summary})
    panels = ((axes[0], [("coefficient_r2_out_of_sample", 1.0, "rank-1 coefficient", PALETTE[0])],
               "out-of-sample R² (fit on first 15%)"),
              (axes[1], [("relex_minus_trained", 100.0, "RELEX(15%) − trained", PALETTE[1]),
                         ("gain", 100.0, "GRPO gain over base", PALETTE[2])], "accuracy points at the final step"),
              (axes[2], [("weight_r2_median", 1.0, "per-weight R² (all steps)", PALETTE[4])], "median weight R²"))
    for ax, series, ylabel in panels:
        for key, scale, label, color in series:
            ax.scatter([r["lr"] for r in rows if r[key] is not None],
                       [scale * r[key] for r in rows if r[key] is not None], color=color, alpha=0.35, s=14)
            for k, steps in enumerate(lengths):  # one line per run length (a sweep over steps too)
                pts = [(s["lr"], scale * s[key]["mean"], scale * s[key]["sd"]) for s in summary
                       if s["steps"] == steps and s[key]["mean"] is not None]
                if pts:
                    x, y, e = map(np.array, zip(*pts))
                    ax.errorbar(x, y, yerr=e, color=color, marker="os^D"[k % 4], ls=("-", "--", ":", "-.")[k % 4],
                                lw=1.5, capsize=3, label=label + (f", {steps} steps" if len(lengths) > 1 else ""))
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:.0e}" for lr in lrs], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    axes[0].set_yscale("symlog", linthresh=1.0)
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[1].axhspan(-MATCH_POINTS, MATCH_POINTS, color=PALETTE[1], alpha=0.12)
    axes[1].axhline(MIN_GAIN_POINTS, color=PALETTE[2], lw=0.8, ls="--")
    fig.suptitle("Where linearity holds: GRPO at demo scale across learning rates", fontsize=10)
    return save(fig, path)


def lr_sweep(rows: list[dict], out_dir) -> dict[str, Path] | None:
    """lr_sweep.png, .md (the table) and .json (runs and per-lr summary) in `out_dir`, when the
    runs span at least two learning rates; else None."""
    seen: set = set()  # one row per trained trajectory: the demo and a sweep job may share one
    rows = [r for r in rows if r["trajectory"] is None or not (r["trajectory"] in seen or seen.add(r["trajectory"]))]
    summary = summarise(rows)
    if len({s["lr"] for s in summary}) < 2:
        return None
    out_dir = Path(out_dir)
    table = [[f"{s['lr']:.0e}", s["steps"], s["relex_history"], s["n_runs"], _cell(s["base"]), _cell(s["trained"]), _cell(s["gain"], 100, 1, True),
              _cell(s["relex"]), _cell(s["relex_minus_trained"], 100, 1, True),
              _cell(s["coefficient_r2_out_of_sample"]), _cell(s["weight_r2_median"]), "yes" if s["holds"] else "no"]
             for s in summary]
    note = ("Accuracy on the held-out split at the final trained step; RELEX observes the steps ≤ its window "
            "(the rank-1 coefficient's fit window, `linearity.coefficient_history`). Gain and RELEX − trained in accuracy points; mean ± sd over the runs (seeds). Holds: RELEX within "
            f"{MATCH_POINTS:g} points of the trained checkpoint while GRPO gains ≥ {MIN_GAIN_POINTS:g} points.")
    md = write_markdown_table(out_dir / "lr_sweep.md", "Where linearity holds: learning-rate sweep",
                              ["lr", "steps", "RELEX window", "runs", "base", "trained", "gain (pts)", "RELEX", "RELEX − trained (pts)",
                               "coef. R² out of sample", "weight R² median", "holds"], table, note)
    js = out_dir / "lr_sweep.json"
    write_json_atomic(js, {"match_points": MATCH_POINTS, "min_gain_points": MIN_GAIN_POINTS,
                           "summary": summary, "runs": rows})
    return {"png": plot_lr_sweep(summary, rows, out_dir / "lr_sweep.png"), "md": md, "json": js}
