"""One figure style for every plot of the project (papers and reports)."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PALETTE = ["#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#595959"]

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 160,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
}


def figure(width: float = 5.0, height: float = 3.4, **kwargs):
    """A new figure and axes in the project style."""
    with plt.rc_context(RC):
        return plt.subplots(figsize=(width, height), **kwargs)


_ALSO_PDF = contextvars.ContextVar("rlvr_figures_also_pdf", default=False)


@contextmanager
def also_pdf(enabled: bool = True):
    """Within the block every `save` also writes the PDF, so figure functions that take no
    `pdf` argument still give `rlvr figures` both formats."""
    token = _ALSO_PDF.set(enabled)
    try:
        yield
    finally:
        _ALSO_PDF.reset(token)


def save(fig, path: str | Path, pdf: bool = False) -> Path:
    """Save as PNG (and PDF if asked, or inside `also_pdf()`) atomically; close the figure;
    return the PNG path."""
    pdf = pdf or _ALSO_PDF.get()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(RC):
        for suffix in [".png", ".pdf"] if pdf else [".png"]:
            target = path.with_suffix(suffix)
            tmp = target.with_name(f".{target.stem}.tmp{suffix}")
            fig.savefig(tmp)
            tmp.replace(target)
    plt.close(fig)
    return path


def zoom_floor(values, margin: float = 0.01) -> float:
    """A lower axis limit that shows where values near 1 differ (explained variance of 0.93 vs
    0.99), instead of squashing them against the top of a 0–1 axis: the smallest value less a
    margin, rounded down to 0.01, at least 0."""
    finite = [float(v) for v in values if v is not None and v == v]
    if not finite:
        return 0.0
    return max(0.0, int((min(finite) - margin) * 100) / 100)
