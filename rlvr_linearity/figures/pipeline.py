"""Figures of a pipeline run: training curve and accuracy of trained vs predicted checkpoints."""

from __future__ import annotations

from pathlib import Path

from rlvr_linearity.figures.style import PALETTE, figure, save


def plot_training_curve(metrics: list[dict], path: str | Path, pdf: bool = False) -> Path | None:
    """Mean reward (and accuracy, if logged) per GRPO step, from train_metrics.jsonl rows."""
    rows = [m for m in metrics if m.get("step") is not None and m.get("reward") is not None]
    if not rows:
        return None
    fig, ax = figure()
    steps = [m["step"] for m in rows]
    ax.plot(steps, [m["reward"] for m in rows], marker="o", ms=3, label="mean reward")
    if all(m.get("accuracy") is not None for m in rows):
        ax.plot(steps, [m["accuracy"] for m in rows], marker="s", ms=3, label="train accuracy")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_title("Training reward")
    ax.legend()
    return save(fig, path, pdf)


def plot_accuracy_vs_step(results: dict, path: str | Path, pdf: bool = False) -> Path | None:
    """Held-out accuracy of RLVR checkpoints (line) with every prediction marked at its target."""
    rlvr = [r for r in results.get("rlvr", []) if r.get("accuracy") is not None]
    base = results.get("base") or {}
    if not rlvr and base.get("accuracy") is None:
        return None
    fig, ax = figure(6.0, 3.8)
    pts = ([(0, base["accuracy"])] if base.get("accuracy") is not None else []) + [(r["step"], r["accuracy"]) for r in rlvr]
    pts.sort()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", marker="o", ms=3, lw=1.5, label="RLVR (trained)")
    windows = sorted({r["history"] for r in results.get("relex", []) if r.get("accuracy") is not None})
    for i, h in enumerate(windows):
        rows = sorted((r["target"], r["accuracy"]) for r in results["relex"] if r["history"] == h and r.get("accuracy") is not None)
        ax.plot([r[0] for r in rows], [r[1] for r in rows], ls="--", marker="^", ms=6, color=PALETTE[i % len(PALETTE)],
                label=f"RELEX, observe steps ≤ {h}")
        ax.axvline(h, color=PALETTE[i % len(PALETTE)], lw=0.6, alpha=0.5)
    pairs = sorted({(r["base_step"], r["second_step"]) for r in results.get("weight_extrapolation", []) if r.get("accuracy") is not None})
    for j, (a, b) in enumerate(pairs):
        rows = sorted((r["target"], r["accuracy"]) for r in results["weight_extrapolation"]
                      if (r["base_step"], r["second_step"]) == (a, b) and r.get("accuracy") is not None)
        ax.plot([r[0] for r in rows], [r[1] for r in rows], ls=":", marker="D", ms=5,
                color=PALETTE[(len(windows) + j) % len(PALETTE)], label=f"weight extrap. ({a}→{b})")
    lrows = [r for r in results.get("logits_extrapolation", []) if r.get("accuracy") is not None]
    if lrows:
        ax.scatter([r["target"] for r in lrows], [r["accuracy"] for r in lrows], marker="*", s=80, color=PALETTE[-2],
                   zorder=5, label="logits extrap.")
    ax.set_xlabel("step (trained or predicted)")
    ax.set_ylabel(f"accuracy ({results.get('benchmark', 'test')})")
    ax.set_title("Trained vs extrapolated checkpoints")
    ax.legend(fontsize=8, loc="best")
    return save(fig, path, pdf)
