"""Figures of LIN's mechanism analyses (docs/mechanism.md), from the JSON files the pipeline's
`token_snr` and `mechanism` stages write: token_snr.json (Fig. 3), decomposition.json (Fig. 4),
activation_r2.json (activation linearity)."""

from __future__ import annotations

import numpy as np

from rlvr_linearity.figures.paper_numbers import LIN_FIG3_PEAK, LIN_FIG3_SFT
from rlvr_linearity.figures.style import PALETTE, figure, save

TERM_LABELS = {"input": "input change  W₀Δx", "weight": "weight change  ΔW x₀ (+Δb)",
               "second_order": "second order  ΔW Δx"}


def plot_token_snr(data: dict, path):
    """Weight R² (median and mean) of noisy-SFT runs against the SNR, the noise-free SFT run as
    a reference line (LIN Fig. 3)."""
    levels = [lv for lv in data.get("levels", []) if lv.get("median") is not None]
    noisy = sorted((lv for lv in levels if lv["snr_db"] is not None), key=lambda lv: -lv["snr_db"])
    clean = next((lv for lv in levels if lv["snr_db"] is None), None)
    if not noisy:
        return None
    fig, ax = figure(5.6, 3.6)
    x = [lv["snr_db"] for lv in noisy]
    ax.plot(x, [lv["median"] for lv in noisy], "o-", color=PALETTE[1], label="SFT + reward-style noise: median")
    ax.plot(x, [lv["mean"] for lv in noisy], "s--", color=PALETTE[1], alpha=0.55, ms=4, label="… mean")
    if clean is not None:
        ax.axhline(clean["median"], color=PALETTE[0], lw=1.5, label=f"SFT without noise: median {clean['median']:.3f}")
        ax.axhline(clean["mean"], color=PALETTE[0], lw=1, ls=":", label=f"… mean {clean['mean']:.3f}")
    best = max(noisy, key=lambda lv: lv["median"])
    ax.annotate(f"{best['median']:.3f}", (best["snr_db"], best["median"]), textcoords="offset points", xytext=(0, 6),
                ha="center", color=PALETTE[1])
    ax.text(0.01, 0.02, f"paper (1.5B): SFT median ≈ {LIN_FIG3_SFT[0]}, mean ≈ {LIN_FIG3_SFT[1]}; "
            f"peak {LIN_FIG3_PEAK[1]} at {LIN_FIG3_PEAK[0]:g} dB", transform=ax.transAxes, fontsize=7, color="0.4")
    ax.invert_xaxis()  # more noise to the right
    ax.set_xticks(x)
    ax.set_xlabel("token signal-to-noise ratio (dB)  →  more noise")
    ax.set_ylabel("per-weight R² over SFT steps")
    sft = data.get("sft") or {}
    ax.set_title(f"LIN Fig. 3: token SNR vs weight linearity\n(SFT {sft.get('steps', '?')} steps, "
                 f"noise per {data.get('noise', '?')})")
    ax.legend(fontsize=8, loc="best")
    return save(fig, path)


def plot_decomposition(data: dict, path):
    """Per layer: mean norm of each part of the output change (log scale, total marked) and each
    part's share (LIN Fig. 4)."""
    layers = data.get("layers") or []
    if not layers:
        return None
    mean, terms = data["mean"], data.get("terms") or list(TERM_LABELS)
    fig, (ax, sx) = figure(9.5, 3.6, ncols=2, gridspec_kw={"width_ratios": [1.3, 1.0], "wspace": 0.35})
    pos, width = np.arange(len(layers)), 0.8 / len(terms)
    for i, t in enumerate(terms):
        ax.bar(pos + (i - (len(terms) - 1) / 2) * width, [mean[l][t] for l in layers], width, color=PALETTE[i],
               label=TERM_LABELS.get(t, t))
    ax.scatter(pos, [mean[l]["total"] for l in layers], marker="_", s=600, color="black", zorder=3,
               label="total ‖Δy‖")
    ax.set_yscale("log")
    ax.set_xticks(pos, [_layer_name(l) for l in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("mean ‖·‖ per probe token")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    bottom = np.zeros(len(layers))
    for i, t in enumerate(terms):
        share = np.array([mean[l]["share"][t] or 0.0 for l in layers])
        sx.bar(pos, share, 0.6, bottom=bottom, color=PALETTE[i])
        for j, s in enumerate(share):
            if s > 0.08:
                sx.text(pos[j], bottom[j] + s / 2, f"{100 * s:.0f}%", ha="center", va="center", fontsize=8,
                        color="white")
        bottom += share
    sx.set_xticks(pos, [_layer_name(l) for l in layers])
    sx.set_ylim(0, 1)
    sx.set_xlabel("layer")
    sx.set_ylabel("share of the three terms' norms")
    steps = data.get("steps") or []
    fig.suptitle(f"LIN Fig. 4: source of the output change per layer (consecutive checkpoints, steps "
                 f"{steps[0] if steps else '?'}–{steps[-1] if steps else '?'})", fontsize=11)
    return save(fig, path)


def _layer_name(label: str) -> str:
    return f"layer {label}" if str(label).isdigit() else str(label)


def plot_activation_linearity(data: dict, path):
    """Per layer: R² of every hidden activation over steps (median, IQR, mean, share > 0.7), and
    the trajectories of the activations that moved most in the middle layer with their fits."""
    layers = [lay for lay in data.get("layers", []) if lay.get("median") is not None]
    if not layers:
        return None
    fig, (ax, tx) = figure(9.5, 3.6, ncols=2, gridspec_kw={"wspace": 0.3})
    pos = np.arange(len(layers))
    med = np.array([lay["median"] for lay in layers])
    ax.errorbar(pos, med, yerr=[med - [lay["q25"] for lay in layers], np.array([lay["q75"] for lay in layers]) - med],
                fmt="o", color=PALETTE[0], capsize=4, label="median (IQR)")
    ax.plot(pos, [lay["mean"] for lay in layers], "s", color=PALETTE[1], ms=4, label="mean")
    for p, lay in zip(pos, layers):
        frac = (lay.get("frac_above") or {}).get("0.7")
        if frac is not None:
            ax.text(p, 0.03, f"{100 * frac:.0f}% > 0.7", ha="center", fontsize=8, color=PALETTE[2])
    ax.axhline(0.7, color=PALETTE[2], ls="--", lw=1)
    ax.set_xticks(pos, [lay["name"] for lay in layers])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("hidden state (output of)")
    ax.set_ylabel("R² of activation vs step")
    ax.legend(fontsize=8, loc="center")
    steps = np.asarray(data["steps"], float)
    mid = layers[len(layers) // 2]
    for i, ex in enumerate(mid.get("examples", [])):
        c = PALETTE[i % len(PALETTE)]
        tx.plot(steps, ex["values"], "o", ms=3, color=c)
        tx.plot(steps, ex["intercept"] + ex["slope"] * steps, "-", lw=1, color=c,
                label=f"probe token {ex['token']}, unit {ex['unit']}: R² {ex['r2']:.2f}")
    tx.set_xlabel("training step")
    tx.set_ylabel("activation value")
    tx.set_title(f"largest moves, {mid['name']}", fontsize=9)
    tx.legend(fontsize=7)
    fig.suptitle("Activation linearity: R² of hidden activations over training steps (fixed probes)", fontsize=11)
    return save(fig, path)
