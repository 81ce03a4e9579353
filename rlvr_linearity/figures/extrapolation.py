"""Figures of `rlvr extrapolate` (RELEX): plain functions taking extrapolation.json's content
(or the pipeline's accuracy lists) and a PNG path; None when there is nothing to draw."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from rlvr_linearity.figures.style import PALETTE, figure, save, zoom_floor


def _window(res: dict, label: str | None) -> dict | None:
    wins = res.get("windows") or []
    if not wins:
        return None
    if label is None:
        return max(wins, key=lambda w: len(w["steps"]))
    return next((w for w in wins if w["label"] == label), None)


def plot_explained_variance_histogram(res: dict, path, window: str | None = None):
    """Histogram over tensors of the rank-r explained variance of one window (largest by default)."""
    w = _window(res, window)
    ev = [v for v in (w or {}).get("explained_variance", {}).values() if v is not None]
    if not ev:
        return None
    rank = res.get("parameters", {}).get("rank", 1)
    lo = zoom_floor(ev)
    fig, ax = figure()
    ax.hist(np.clip(ev, lo, 1), bins=40, range=(lo, 1), color=PALETTE[0], alpha=0.85)
    ax.axvline(float(np.median(ev)), color=PALETTE[1], ls="--", lw=1, label=f"median {np.median(ev):.3f}")
    ax.set_xlabel(f"explained variance of rank {rank}" + (f" (axis from {lo:.2f})" if lo > 0 else ""))
    ax.set_ylabel("tensors")
    ax.set_title(f"RELEX window {w['label']}: steps {w['steps'][0]}–{w['steps'][-1]} "
                 f"(cut at {w['steps'][-1]}), {len(ev)} tensors", fontsize=10)
    ax.legend()
    return save(fig, path)


def plot_relex_coefficient(res: dict, path, tensor: str | None = None, window: str | None = None):
    """Rank-1 coefficient vs step on the window, the fitted curve, and the predicted coefficient
    at each target. `tensor` defaults to the one with the largest top singular value."""
    w = _window(res, window)
    if not w or not w.get("coefficients"):
        return None
    if tensor is None:
        tensor = max(w["singular_values"], key=lambda n: (w["singular_values"][n] or [0])[0])
    c = np.asarray(w["coefficients"][tensor], float)
    if c.size == 0 or c.shape[1] == 0:
        return None
    c = c[:, 0]
    chat = np.asarray(w["predicted_coefficients"][tensor], float)[:, 0]
    sign = -1.0 if c[-1] < 0 else 1.0  # eigenvector signs are arbitrary: show rising curves
    c, chat = sign * c, sign * chat
    x = np.asarray(w["steps"], float)
    t = np.asarray([tg["target"] for tg in w["targets"]], float)
    params = res.get("parameters", {})
    deg = 1 if params.get("fit", "linear") == "linear" else int(params.get("degree", 2))
    fig, ax = figure()
    ax.plot(x, c, "o", ms=4, color=PALETTE[0], label="observed")
    if params.get("mode", "extrapolate") == "extrapolate" and len(x) > deg:
        grid = np.linspace(x.min(), max(x.max(), t.max()), 200)
        ax.plot(grid, np.polyval(np.polyfit(x, c, deg), grid), "--", lw=1, color=PALETTE[1],
                label=f"{params.get('fit', 'linear')} fit on steps")
    ax.plot(t, chat, "*", ms=9, mfc="none", color=PALETTE[2], label="predicted at targets (on the fit)")
    ax.axvline(x.max(), color="grey", ls=":", lw=1, label=f"window cut (step {x.max():g})")
    ax.set_xlabel("step")
    ax.set_ylabel("rank-1 coefficient")
    ax.set_title(f"{tensor} (window {w['label']})", fontsize=9)
    ax.legend()
    return save(fig, path)


def plot_accuracy_vs_target(relex: list[dict], rlvr: list[dict], path, base_accuracy: float | None = None,
                            metric: str = "accuracy"):
    """Accuracy of RELEX predictions vs target step, one curve per history (window end marked),
    against the RLVR checkpoints' accuracy. relex: [{history, target, accuracy}];
    rlvr: [{step, accuracy}]."""
    if not relex and not rlvr:
        return None
    fig, ax = figure(5.6, 3.6)
    if rlvr:
        pts = sorted((r["step"], r["accuracy"]) for r in rlvr)
        ax.plot(*zip(*pts), "-o", ms=3, color=PALETTE[7], label="RLVR")
    if base_accuracy is not None:
        ax.axhline(base_accuracy, color=PALETTE[7], ls=":", lw=1, label="base")
    by = defaultdict(list)
    for r in relex:
        by[r.get("history")].append((r["target"], r["accuracy"]))
    for i, (h, pts) in enumerate(sorted(by.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))):
        col = PALETTE[i % (len(PALETTE) - 1)]
        ax.plot(*zip(*sorted(pts)), "-*", ms=7, color=col, label=f"RELEX h={h}" if h is not None else "RELEX")
        if h is not None:
            ax.axvline(h, color=col, ls="--", lw=0.8, alpha=0.6)
    ax.set_xlabel("step (target for predictions)")
    ax.set_ylabel(metric)
    ax.set_title("Predicted checkpoints vs RLVR")
    ax.legend(fontsize=8)
    return save(fig, path)


def extrapolation_figures(out_dir, res: dict) -> dict:
    """Every figure extrapolation.json allows (relex), under out_dir -> {name: path}."""
    from pathlib import Path

    if res.get("method") != "relex":
        return {}
    made = {"relex_explained_variance": plot_explained_variance_histogram(res, Path(out_dir) / "relex_explained_variance"),
            "relex_coefficient": plot_relex_coefficient(res, Path(out_dir) / "relex_coefficient")}
    return {k: v for k, v in made.items() if v is not None}
