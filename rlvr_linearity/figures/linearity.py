"""Figures of the linearity analysis; plain functions taking the JSON dicts that
`rlvr linearity` writes (weights_r2.json, logprob_r2.json, lowrank.json) and a PNG path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from rlvr_linearity.figures.style import PALETTE, figure, save, zoom_floor


def plot_r2_histogram(values, frac_above: float | None, path, title: str, xlabel: str = "R²", weights=None, bins=50):
    fig, ax = figure()
    ax.hist(np.clip(np.asarray(values, float), 0, 1), bins=bins, range=(0, 1), weights=weights, color=PALETTE[0], alpha=0.85)
    ax.axvline(0.7, color=PALETTE[1], ls="--", lw=1)
    if frac_above is not None:
        ax.text(0.71, 0.95, f"{100 * frac_above:.1f}% > 0.7", transform=ax.get_xaxis_transform(), va="top", color=PALETTE[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return save(fig, path)


def plot_weight_r2_histogram(res: dict, path):
    """Histogram of the R² of every weight (the JSON's 100-bin counts), fraction above 0.7 marked."""
    counts = np.asarray(res.get("histogram") or [], float)
    if not counts.sum():
        return None
    centres = (np.arange(counts.size) + 0.5) / counts.size
    return plot_r2_histogram(centres, res["frac_above"].get("0.7"), path,
                             f"Per-weight R² ({res['n_defined']:,} weights, median {res['median']:.3f})",
                             weights=counts, bins=counts.size)


def plot_r2_heatmap(res: dict, path):
    """Module type x layer mean R², with a side column for non-layer tensors (any layer count)."""
    hm = res.get("heatmap") or {}
    modules, layers, side = hm.get("modules", []), hm.get("layers", []), hm.get("side", {})
    if not modules and not side:
        return None
    grid = np.array([[np.nan if v is None else v for v in row] for row in hm["mean"]], float) if modules else np.zeros((0, 0))
    width = 2.5 + 0.32 * max(len(layers), 1) + 1.2
    fig, axes = figure(width + 1.5, 1.2 + 0.35 * max(len(modules), len(side), 1), ncols=2,
                       gridspec_kw={"width_ratios": [max(len(layers), 1), 2.0], "wspace": 0.9})
    ax, sax = axes
    for a in axes:
        a.grid(False)
    if modules:
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(modules)), modules)
        step = max(1, len(layers) // 16)
        ax.set_xticks(range(0, len(layers), step), [str(l) for l in layers[::step]])
        ax.set_xlabel("layer")
        if len(layers) * len(modules) <= 160:
            for i in range(len(modules)):
                for j in range(len(layers)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if grid[i, j] < 0.6 else "black")
        fig.colorbar(im, ax=sax, fraction=0.35, pad=0.1, label="mean R²")
    names = list(side)
    col = np.array([[np.nan if side[n] is None else side[n]] for n in names], float) if names else np.zeros((0, 1))
    if names:
        sax.imshow(col, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        sax.set_yticks(range(len(names)), names)
        sax.set_xticks([])
        for i, v in enumerate(col[:, 0]):
            if np.isfinite(v):
                sax.text(0, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    else:
        sax.axis("off")
    ax.set_title("Mean weight R² by module and layer")
    return save(fig, path)


def plot_weight_examples(res: dict, path):
    """A few weights' values vs step with their OLS lines (full tensor names, wrapped)."""
    ex = res.get("examples") or []
    if not ex:
        return None
    fig, axes = figure(3.6 * len(ex), 3.2, ncols=len(ex), squeeze=False, layout="constrained")
    for ax, e in zip(axes[0], ex):
        name = textwrap.fill(f"{e['tensor'].removeprefix('model.')}[{e['index']}]", 30)
        _trajectory(ax, e["steps"], e["values"], f"{name}\nR² = {e['r2']:.3f}")
    axes[0][0].set_ylabel("weight value")
    fig.suptitle("Example weight trajectories with their least-squares lines", fontsize=10)
    return save(fig, path)


def _trajectory(ax, steps, values, title):
    from matplotlib.ticker import MaxNLocator

    x, y = np.asarray(steps, float), np.asarray(values, float)
    ax.plot(x, y, "o", ms=3, color=PALETTE[0], label="checkpoint")
    if np.ptp(x) > 0:
        b, a = np.polyfit(x, y, 1)
        ax.plot(x, a + b * x, "--", color=PALETTE[1], lw=1, label="linear fit")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=False)


def plot_logprob_histogram(res: dict, path, kind: str = "logprob"):
    v = (res.get(kind) or {}).get("r2_values")
    if not v:
        return None
    st = res[kind]
    return plot_r2_histogram(v, (st.get("frac_above") or {}).get("0.7"), path,
                             f"Token {'log-prob' if kind == 'logprob' else 'logit'} R² (n={st.get('n_tokens')})")


def plot_token_examples(res: dict, path):
    ex = res.get("examples") or []
    if not ex:
        return None
    fig, axes = figure(3.0 * len(ex), 2.8, ncols=len(ex), squeeze=False)
    for ax, e in zip(axes[0], ex):
        _trajectory(ax, res["steps"], e["logprobs"], f"{e['token']!r}  R² = {e['r2']:.3f}")
        ax.set_ylabel("log-prob")
    return save(fig, path)


def plot_explained_variance(res: dict, path):
    """Explained variance of each rank per tensor (largest window), tensors in model order."""
    win = max(res["windows"].values(), key=lambda w: len(w["steps"]))
    names = list(win["per_tensor"])
    if not names:
        return None
    fig, ax = figure(max(5.0, 0.05 * len(names) + 3), 3.4)
    for i, r in enumerate(res["ranks"]):
        ax.plot(range(len(names)), [win["per_tensor"][n][str(r)] for n in names], ".", ms=4,
                color=PALETTE[i % len(PALETTE)], label=f"rank {r}")
    lo = zoom_floor([v for n in names for v in win["per_tensor"][n].values()])
    ax.set_ylim(lo, 1.0 + (1.0 - lo) * 0.02)
    ax.set_xlabel("tensor (model order)")
    ax.set_ylabel("explained variance" + (f" (axis from {lo:.2f})" if lo > 0 else ""))
    ax.set_title(f"Explained variance by tensor, steps {win['steps'][0]}–{win['steps'][-1]} "
                 f"(cut at {win['steps'][-1]})", fontsize=10)
    ax.legend()
    return save(fig, path)


def plot_rank1_coefficients(res: dict, path, tensor: str | None = None):
    """Rank-1 coefficient vs step (the whole model's unless `tensor`), the linear fit on the
    history steps and the held-out later steps."""
    co = res["coefficients"]
    c = co["per_tensor"][tensor] if tensor else co["model"]
    x, y, n = np.asarray(c["steps"], float), np.asarray(c["coefficients"], float), c["n_history"]
    if y.size == 0:
        return None
    fig, ax = figure()
    ax.plot(x[:n], y[:n], "o", ms=4, color=PALETTE[0], label="history (fit)")
    if n < len(x):
        ax.plot(x[n:], y[n:], "s", ms=4, color=PALETTE[2], label="held out")
        ax.axvline((x[n - 1] + x[n]) / 2, color="grey", ls=":", lw=1, label=f"window cut (step {x[n - 1]:g})")
    if c.get("slope") is not None:
        ax.plot(x, c["intercept"] + c["slope"] * x, "--", color=PALETTE[1], lw=1,
                label=f"fit R²={c['r2_in_sample']:.3f}" + (f", held-out R²={c['r2_out_of_sample']:.3f}"
                                                        if c.get("r2_out_of_sample") is not None else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("rank-1 coefficient")
    ax.set_title(f"Rank-1 coefficient: {tensor or 'whole model'}")
    ax.legend()
    return save(fig, path)


def plot_r2_vs_window(res: dict, path):
    """Median and mean per-weight R², and the fraction above 0.7, against the window's length
    (steps from 0 to its end): how far training stays linear."""
    wins = sorted(((len(w["steps"]), w["steps"][-1], w) for w in (res.get("windows") or {}).values()
                   if w.get("steps") and w.get("median") is not None), key=lambda t: t[1])
    if len(wins) < 2:
        return None
    fig, ax = figure()
    ends = [t[1] for t in wins]
    ax.plot(ends, [t[2]["median"] for t in wins], marker="o", ms=4, label="median R²")
    ax.plot(ends, [t[2]["mean"] for t in wins], marker="s", ms=4, label="mean R²")
    frac = [(t[2].get("frac_above") or {}).get("0.7") for t in wins]
    if all(f is not None for f in frac):
        ax.plot(ends, frac, marker="^", ms=4, ls="--", label="fraction of weights with R² > 0.7")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("window end (steps 0 … end)")
    ax.set_ylabel("R²")
    ax.set_title("Weight linearity vs window length")
    ax.legend(fontsize=8)
    return save(fig, path)


def linearity_figures(out_dir: Path, weights=None, lowrank=None, logprobs=None) -> dict[str, Path]:
    """Every linearity figure that the given results allow, under `out_dir` -> {name: path}."""
    out_dir = Path(out_dir)
    jobs = []
    if weights:
        jobs += [("weight_r2_histogram", plot_weight_r2_histogram, weights, {}),
                 ("weight_r2_heatmap", plot_r2_heatmap, weights, {}),
                 ("weight_examples", plot_weight_examples, weights, {})]
    if logprobs:
        jobs += [("logprob_r2_histogram", plot_logprob_histogram, logprobs, {}),
                 ("token_examples", plot_token_examples, logprobs, {})]
    if lowrank:
        jobs += [("explained_variance", plot_explained_variance, lowrank, {}),
                 ("rank1_coefficients", plot_rank1_coefficients, lowrank, {})]
    out = {}
    for name, fn, res, kw in jobs:
        p = fn(res, out_dir / f"{name}.png", **kw)
        if p is not None:
            out[name] = p
    return out
