"""Figures of a pipeline run: training curve and accuracy of trained vs predicted checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlvr_linearity.figures.style import PALETTE, figure, save


def plot_training_curve(metrics: list[dict], path: str | Path, pdf: bool = False) -> Path | None:
    """Mean reward per GRPO step and its moving average, from train_metrics.jsonl rows; the
    training accuracy only when it is not the reward itself (a 0/1 correctness reward)."""
    rows = [m for m in metrics if m.get("step") is not None and m.get(_reward_key(m)) is not None]
    if not rows:
        return None
    fig, ax = figure()
    steps = np.array([m["step"] for m in rows])
    reward = np.array([m[_reward_key(m)] for m in rows], float)
    ax.plot(steps, reward, marker="o", ms=2, lw=0.8, alpha=0.6, label="mean reward per step")
    w = min(10, len(reward))
    if w > 2:  # the trend under the per-batch noise
        ax.plot(steps[w - 1:], np.convolve(reward, np.ones(w) / w, mode="valid"), lw=2, label=f"{w}-step moving average")
    acc = [m.get("accuracy") for m in rows]
    if all(a is not None for a in acc) and not np.allclose(acc, reward):
        ax.plot(steps, acc, marker="s", ms=3, label="train accuracy")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_title("Training reward")
    ax.legend()
    return save(fig, path, pdf)


def _reward_key(m: dict) -> str:
    return "reward_mean" if "reward_mean" in m else "reward"


DYNAMICS = (("kl", "KL to the reference"), ("entropy", "entropy (nats/token)"),
            ("completion_length_mean", "completion length (tokens)"))


def plot_training_dynamics(metrics: list[dict], path: str | Path, pdf: bool = False) -> Path | None:
    """KL, entropy and completion length per GRPO step: one panel each that the run logged."""
    panels = [(k, label) for k, label in DYNAMICS
              if any(m.get(k) is not None and m.get("step") is not None for m in metrics)]
    if not panels:
        return None
    fig, axes = figure(3.4 * len(panels), 3.0, ncols=len(panels), squeeze=False, layout="constrained")
    for ax, (key, label) in zip(axes[0], panels):
        rows = [(m["step"], m[key]) for m in metrics if m.get(key) is not None and m.get("step") is not None]
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", ms=2, lw=1)
        ax.set_xlabel("GRPO step")
        ax.set_title(label, fontsize=9)
    fig.suptitle("Training dynamics", fontsize=10)
    return save(fig, path, pdf)


def plot_prediction_error(results: dict, path: str | Path, pdf: bool = False) -> Path | None:
    """Weight-space error of every prediction at a trained step: relative L2 and cosine of the
    predicted vs trained change from step 0, against the target, one line per window / pair."""
    series: dict[str, list[tuple[int, dict]]] = {}
    for r in results.get("relex") or []:
        if r.get("weight_error"):
            series.setdefault(f"RELEX, window cut at {r['history']}", []).append((r["target"], r["weight_error"]))
    for r in results.get("weight_extrapolation") or []:
        if r.get("weight_error"):
            series.setdefault(f"weight extrap. {r['base_step']}→{r['second_step']}", []).append(
                (r["target"], r["weight_error"]))
    if not series:
        return None
    fig, (a1, a2) = figure(9.0, 3.4, ncols=2, layout="constrained")
    for i, (name, pts) in enumerate(series.items()):
        pts.sort(key=lambda p: p[0])
        c = PALETTE[i % len(PALETTE)]
        a1.plot([p[0] for p in pts], [p[1]["rel_l2"] for p in pts], marker="o", ms=4, color=c, label=name)
        a2.plot([p[0] for p in pts], [p[1]["cosine"] for p in pts], marker="o", ms=4, color=c, label=name)
    a1.set_ylabel("‖Δpred − Δtrained‖ / ‖Δtrained‖")
    a1.set_title("relative L2 error (lower is better)", fontsize=9)
    a2.set_ylabel("cos(Δpred, Δtrained)")
    a2.set_title("cosine of the changes (1 = same direction)", fontsize=9)
    for ax in (a1, a2):
        ax.set_xlabel("target step")
    a2.legend(fontsize=8)
    fig.suptitle("Weight-space error of the predictions vs the trained checkpoints (Δ from step 0)", fontsize=10)
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
    ci = {r["step"]: r["accuracy_ci95"] for r in [base, *rlvr] if r.get("accuracy_ci95") and "step" in r}
    if len(ci) == len(pts):
        ax.fill_between([p[0] for p in pts], [ci[p[0]][0] for p in pts], [ci[p[0]][1] for p in pts], color="black",
                        alpha=0.1, lw=0, label="95% bootstrap interval")
    windows = sorted({r["history"] for r in results.get("relex", []) if r.get("accuracy") is not None})
    for i, h in enumerate(windows):
        rows = sorted((r["target"], r["accuracy"]) for r in results["relex"] if r["history"] == h and r.get("accuracy") is not None)
        ax.plot([r[0] for r in rows], [r[1] for r in rows], ls="--", marker="^", ms=6, color=PALETTE[i % len(PALETTE)],
                label=f"RELEX, observe steps ≤ {h}")
        ax.axvline(h, color=PALETTE[i % len(PALETTE)], lw=0.8, ls=":", alpha=0.7, label=f"window cut at {h}")
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
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, path, pdf)
