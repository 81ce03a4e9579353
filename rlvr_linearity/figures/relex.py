"""RELEX's figures of evaluated checkpoints: Finding 1 (rank-r reconstructions against the
originals), the denoising comparison and the main table, drawn from the numbers of
`figures.relex_tables` (plain functions: parsed results in, PNG path or {png, md, json} out,
None when there is nothing to draw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlvr_linearity.figures import relex_tables as rt
from rlvr_linearity.figures.style import PALETTE, figure, save


def plot_finding1(results: dict, path) -> Path | None:
    """Left: accuracy vs step of the trained checkpoints and of their rank-r reconstructions.
    Right: at the last reconstructed step, base / trained / each rank per benchmark, with the
    share of the RL gain each rank keeps (over every reconstructed step)."""
    data = rt.finding1(results)
    if data is None:
        return None
    benches, b0 = data["benchmarks"], data["benchmarks"][0]
    fig, (ax, bax) = figure(11.0, 3.8, ncols=2, gridspec_kw={"width_ratios": [1.3, 1]})
    trained = [(s, v[b0]) for s, v in data["trained"].items() if v[b0] is not None]
    if trained:
        ax.plot(*zip(*trained), "-o", ms=3, color="black", lw=1.2, label="trained (original)")
    for i, s in enumerate(data["series"]):
        pts = [(p["step"], p["accuracy"][b0]) for p in s["points"] if p["accuracy"][b0] is not None]
        if pts:
            ax.plot(*zip(*pts), "--s", ms=5, color=PALETTE[i % 7], label=s["label"])
    ax.set_xlabel("training step")
    ax.set_ylabel(f"accuracy ({b0})")
    ax.set_title("RELEX Finding 1: rank-r reconstructions vs trained checkpoints", fontsize=10)
    ax.legend(fontsize=8)

    steps = sorted({p["step"] for s in data["series"] for p in s["points"]})
    last = steps[-1]
    bars = [("base", PALETTE[7], data["base"])] if data["base"] else []
    bars.append((f"trained, step {last}", "black", data["trained"].get(last, {})))
    for i, s in enumerate(data["series"]):
        at = next((p["accuracy"] for p in s["points"] if p["step"] == last), {})
        kept = s["gain_kept"].get(b0)
        bars.append((s["label"] + (f": keeps {100 * kept:.0f}% of the RL gain over steps {steps[0]}–{last}"
                                   if kept is not None else ""),
                     PALETTE[i % 7], at))
    width = 0.8 / len(bars)
    for j, (label, colour, vals) in enumerate(bars):
        ys = [np.nan if vals.get(b) is None else vals[b] for b in benches]
        xs = np.arange(len(benches)) + (j - (len(bars) - 1) / 2) * width
        bax.bar(xs, ys, width * 0.95, color=colour, alpha=0.35 if label == "base" else 0.85, label=label)
        for x, y in zip(xs, ys):
            if y == y:
                bax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
    bax.set_xticks(range(len(benches)), benches)
    bax.set_ylabel("accuracy")
    bax.set_title(f"Step {last}: base, trained and reconstructions", fontsize=10)
    bax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return save(fig, path)


def denoising_outputs(results: dict, path) -> dict | None:
    """`relex_denoising.{png,md,json}`. Left: accuracy of each denoised checkpoint against the
    trained one at the same step (diagonal: no change). Right: the change against the share of the
    update it removed, ‖Δ − Δ̃‖/‖Δ‖: points on or above zero far from the axis mean what was
    removed was noise for the task."""
    data = rt.denoising(results)
    if data is None:
        return None
    path = Path(path).with_suffix(".png")
    md, js = rt.write_denoising(data, path.with_suffix(".md"), path.with_suffix(".json"))
    b0 = data["benchmarks"][0]
    fig, (ax, cax) = figure(10.0, 3.8, ncols=2)
    methods = list(dict.fromkeys(r["method"] for r in data["rows"]))
    lo, hi = 1.0, 0.0
    for i, m in enumerate(methods):
        mine = [r for r in data["rows"] if r["method"] == m and r["change"][b0] is not None]
        if not mine:
            continue
        x = [r["trained"][b0] for r in mine]
        y = [r["denoised"][b0] for r in mine]
        lo, hi = min(lo, *x, *y), max(hi, *x, *y)
        mark = "*" if m.startswith("RELEX") else "s"
        ax.scatter(x, y, marker=mark, s=40, color=PALETTE[i % 7], label=m, alpha=0.85)
        for r in mine:
            ax.annotate(str(r["step"]), (r["trained"][b0], r["denoised"][b0]), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
        rem = [(r["removed"], r["change"][b0]) for r in mine if r["removed"] is not None]
        if rem:
            cax.scatter(*zip(*rem), marker=mark, s=40, color=PALETTE[i % 7], alpha=0.85)
    pad = 0.02
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8, ls=":", label="no change")
    ax.set_xlabel(f"trained checkpoint accuracy ({b0})")
    ax.set_ylabel(f"denoised checkpoint accuracy ({b0})")
    ax.set_title("Denoised vs trained, same step (labels: step)", fontsize=10)
    ax.legend(fontsize=7)
    cax.axhline(0, color="grey", lw=0.8)
    cax.set_xlabel("share of the trained update dropped, ‖Δ̃ − Δ‖ / ‖Δ‖")
    cax.set_ylabel(f"accuracy change ({b0})")
    cax.set_title("Update dropped vs accuracy change", fontsize=10)
    return {"png": save(fig, path), "md": md, "json": js}


def main_table_outputs(groups: list[tuple[str, dict]], path) -> dict | None:
    """`relex_main_table.{png,md,json}`: one panel per model, bars per benchmark (and the average)
    for base, RLVR at its final step and each RELEX row (a colour per window, hatched beyond the
    final trained step)."""
    data = rt.main_table(groups)
    if data is None:
        return None
    path = Path(path).with_suffix(".png")
    md, js = rt.write_main_table(data, path.with_suffix(".md"), path.with_suffix(".json"))
    benches = data["benchmarks"] + (["Avg."] if len(data["benchmarks"]) > 1 else [])
    models = list(dict.fromkeys(r["model"] for r in data["rows"]))
    fig, axes = figure(max(5.0, 1.1 * len(benches) + 3) * len(models), 3.8, ncols=len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in data["rows"] if r["model"] == model]
        final = max(r["target"] for r in rows if r["method"].startswith("RLVR"))
        windows = list(dict.fromkeys(r["rl_steps"] for r in rows if r["method"].startswith("RELEX")))
        width = 0.8 / len(rows)
        for j, r in enumerate(rows):
            vals = [r["scores"].get(b) for b in data["benchmarks"]] + ([r["average"]] if len(benches) > len(data["benchmarks"]) else [])
            ys = [np.nan if v is None else v for v in vals]
            relex_row = r["method"].startswith("RELEX")
            colour = (PALETTE[windows.index(r["rl_steps"]) % 7] if relex_row else
                      PALETTE[7] if r["method"] == "Base" else "black")
            xs = np.arange(len(benches)) + (j - (len(rows) - 1) / 2) * width
            ax.bar(xs, ys, width * 0.95, color=colour, alpha=0.4 if r["method"] == "Base" else 0.85, label=r["method"],
                   hatch="//" if relex_row and r["target"] > final else None, edgecolor="white")
            for x, y in zip(xs, ys):
                if y == y:
                    ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(benches)), benches, fontsize=8)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{model}: base, RLVR and RELEX", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return {"png": save(fig, path), "md": md, "json": js}
