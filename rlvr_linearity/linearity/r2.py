"""Per-weight R² over steps: pure functions on blocks of values plus a streaming statistics
accumulator, so every weight of a model is covered in one read with bounded memory.

A weight's R² is the squared Pearson correlation between step and value over the selected
steps (base = step 0), i.e. OLS R² with intercept; undefined (NaN) when the weight never moves.
All arithmetic is float64 on deltas against step 0 and on centred steps (no cancellation from
large absolute values); several prefix windows come out of one pass via small matrix products.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from rlvr_linearity.errors import ConfigError

HIST_BITS = 19
HIST_BINS = 1 << HIST_BITS  # median error bound: half a bin = 2**-20 < 1e-6
MEDIAN_ERROR_BOUND = 0.5 / HIST_BINS
EXACT_LIMIT = 1 << 22  # up to this many values the median is exact (values kept); beyond: histogram


def window_lengths(steps: list[int], windows) -> list[tuple[str, int]]:
    """`[(label, n)]`: window T = the first n selected steps (steps <= T); "all" = every step.

    Steps include the base (0). Raises ConfigError for a window beyond the last step or one
    that holds fewer than two steps (no slope to fit).
    """
    steps = list(steps)
    out: list[tuple[str, int]] = []
    for w in windows or ["all"]:
        if w is None or str(w).lower() == "all":
            label, n = "all", len(steps)
        else:
            t = int(w)
            if t > steps[-1]:
                raise ConfigError(f"linearity window {t} is larger than the last selected step {steps[-1]}")
            label, n = str(t), sum(1 for s in steps if s <= t)
        if n < 2:
            raise ConfigError(f"linearity window {w} holds {n} step(s) of {steps}; need at least 2")
        if label not in (lbl for lbl, _ in out):
            out.append((label, n))
    return sorted(out, key=lambda p: p[1])


@dataclass
class WindowDesign:
    """The per-window weights that turn a block of deltas into the R² sufficient statistics."""

    lengths: list[int]
    m: torch.Tensor  # [T-1, 2W]: indicator columns, then centred-step columns
    ind: torch.Tensor  # [T-1, W] indicator columns
    sxx: torch.Tensor  # [W, 1]
    n: torch.Tensor  # [W, 1]

    @classmethod
    def build(cls, steps, lengths, device="cpu") -> "WindowDesign":
        x = np.asarray(steps, dtype=np.float64)
        t = len(x)
        ind = np.zeros((t - 1, len(lengths)))
        cx = np.zeros((t - 1, len(lengths)))
        sxx = np.zeros((len(lengths), 1))
        for j, n in enumerate(lengths):
            xc = x[:n] - x[:n].mean()
            ind[: n - 1, j] = 1.0
            cx[: n - 1, j] = xc[1:]
            sxx[j, 0] = float(np.sum(xc * xc))
        dev = torch.device(device)
        as_t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        return cls(list(lengths), as_t(np.concatenate([ind, cx], 1)), as_t(ind), as_t(sxx),
                   as_t(np.asarray(lengths, dtype=np.float64)[:, None]))


def block_deltas(block: torch.Tensor) -> torch.Tensor:
    """[T, C] stored-precision values -> [T-1, C] float64 deltas against row 0 (the base)."""
    b = block.reshape(block.shape[0], -1)
    return b[1:].to(torch.float64) - b[0].to(torch.float64)


def block_r2(d: torch.Tensor, design: WindowDesign) -> torch.Tensor:
    """R² of every column of deltas `d` [T-1, C] for each prefix window -> [W, C], NaN undefined."""
    w = len(design.lengths)
    s = design.m.T @ d  # [2W, C]: sum of deltas, sum of centred step * delta
    q = design.ind.T @ (d * d)  # [W, C]
    sd, sxy = s[:w], s[w:]
    syy = q - sd * sd / design.n
    r2 = (sxy * sxy) / (design.sxx * syy)
    r2 = r2.clamp_(0.0, 1.0)
    return r2.masked_fill_(q == 0, float("nan"))


UNIQUE_DTYPES = {"stored": None, "bfloat16": torch.bfloat16}  # linearity.unique_filter_dtype


def block_keep(block: torch.Tensor, d: torch.Tensor, lengths, min_abs_change: float,
               min_unique: int, unique_dtype: str = "stored") -> torch.Tensor | None:
    """LIN's filters per window -> bool [W, C] (None when no filter is active).

    min_abs_change: keep if max - min over the window's steps > threshold (LIN: 1e-4).
    min_unique: keep if the window's values take >= this many distinct values (LIN: 4), counted
    on the stored values or, with unique_dtype "bfloat16", on the values rounded to bf16 (round to
    nearest even, as LIN's bf16 load does: an fp32 trajectory's steps that differ only below bf16's
    resolution count once).
    """
    if not min_abs_change and min_unique <= 1:
        return None
    keep = torch.ones(len(lengths), d.shape[1], dtype=torch.bool, device=d.device)
    if min_abs_change:
        zero = torch.zeros(1, d.shape[1], dtype=d.dtype, device=d.device)
        hi = torch.cummax(torch.cat([zero, d]), 0).values
        lo = torch.cummin(torch.cat([zero, d]), 0).values
        rows = torch.as_tensor([n - 1 for n in lengths], device=d.device)
        keep &= (hi[rows] - lo[rows]) > min_abs_change
    if min_unique > 1:
        b = block.reshape(block.shape[0], -1)
        if UNIQUE_DTYPES[unique_dtype] is not None:
            b = b.to(UNIQUE_DTYPES[unique_dtype])
        for j, n in enumerate(lengths):
            srt = torch.sort(b[:n], dim=0).values
            distinct = 1 + (srt[1:] != srt[:-1]).sum(0)
            keep[j] &= distinct >= min_unique
    return keep


def sample_size(numel: int, fraction: float | None, min_samples: int) -> int:
    """LIN's per-tensor sample size: max(min_samples, floor(numel * fraction)), capped at numel."""
    if fraction is None:
        return numel
    return min(numel, max(int(min_samples), int(math.floor(numel * float(fraction)))))


def sample_indices(numel: int, k: int, seed: int, name: str) -> np.ndarray:
    """k distinct flat indices in [0, numel), sorted, without allocating a permutation of numel.

    Seeded per tensor (seed, crc32 of the name) so the sample does not depend on tensor order.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    if k >= numel:
        return np.arange(numel, dtype=np.int64)
    if 4 * k >= numel:  # dense: a permutation is cheap relative to the sample
        return np.sort(rng.permutation(numel)[:k]).astype(np.int64)
    chosen = np.unique(rng.integers(0, numel, size=k + k // 8 + 16, dtype=np.int64))
    while chosen.size < k:
        chosen = np.unique(np.concatenate([chosen, rng.integers(0, numel, size=k, dtype=np.int64)]))
    return np.sort(rng.choice(chosen, size=k, replace=False))


@dataclass
class R2Stats:
    """Streaming statistics of R² values: count, mean, fractions above thresholds, median.

    The median is exact while at most `exact_limit` values were added (they are kept); beyond,
    it comes from a fixed 2**19-bin histogram of [0, 1] (bin midpoints: error <= 2**-20 < 1e-6).
    """

    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)
    exact_limit: int = EXACT_LIMIT
    n: int = 0
    total: float = 0.0
    above: list[int] = field(default_factory=list)
    _values: list | None = field(default_factory=list)
    _hist: torch.Tensor | None = None
    _median: float | None = None

    def __post_init__(self):
        self.above = [0] * len(self.thresholds)

    def add(self, v: torch.Tensor) -> None:
        """Add R² values (1-D float64); NaN (undefined or filtered out) are skipped."""
        if v.numel() == 0:
            return
        defined = ~torch.isnan(v)
        n = int(defined.sum())
        if n == 0:
            return
        self.n += n
        self.total += float(torch.nansum(v))
        for i, t in enumerate(self.thresholds):
            self.above[i] += int((v > t).sum())  # NaN compares False
        if self._values is not None:
            self._values.append(v[defined] if n < v.numel() else v.clone())
            if self.n <= self.exact_limit:
                return
            values, self._values = self._values, None
            for old in values:
                self._bin(old)
        else:
            self._bin(v)

    def _bin(self, v: torch.Tensor) -> None:
        """Histogram counts; NaN lands in an extra last bin that is never read."""
        idx = (torch.nan_to_num(v, nan=2.0) * HIST_BINS).to(torch.int64).clamp_(0, HIST_BINS)
        if self._hist is None:
            self._hist = torch.zeros(HIST_BINS + 1, dtype=torch.int64, device=v.device)
        self._hist.index_add_(0, idx, torch.ones_like(idx))

    @classmethod
    def counts_only(cls, thresholds, n: int, total: float, above, median: float) -> "R2Stats":
        """Statistics already reduced (the fused kernel's per-tensor output); cannot be merged."""
        st = cls(tuple(thresholds))
        st.n, st.total, st.above, st._values = int(n), float(total), [int(a) for a in above], None
        st._median = float(median)
        return st

    def add_hist(self, n: int, total: float, above, hist) -> None:
        """Add values given as counts and a histogram [HIST_BINS] (the fused kernel's output)."""
        if n == 0:
            return
        self.n += int(n)
        self.total += float(total)
        self.above = [a + int(b) for a, b in zip(self.above, above)]
        if self._values is not None:
            values, self._values = self._values, None
            for old in values:
                self._bin(old)
        if self._hist is None:
            self._hist = torch.zeros(HIST_BINS + 1, dtype=torch.int64)
        self._hist[:HIST_BINS] += torch.as_tensor(hist)

    def merge(self, other: "R2Stats") -> None:
        """Add another accumulator's values (same thresholds)."""
        if other._values is not None:
            for v in other._values:
                self.add(v)
            return
        self.n += other.n
        self.total += other.total
        self.above = [a + b for a, b in zip(self.above, other.above)]
        if self._values is not None:
            values, self._values = self._values, None
            for old in values:
                self._bin(old)
        self._hist = other._hist.clone() if self._hist is None else self._hist.add_(other._hist.to(self._hist.device))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The accumulator as numpy arrays (a partition's share, saved for the merge)."""
        out = {"n": np.asarray(self.n, dtype=np.int64), "total": np.asarray(self.total, dtype=np.float64),
               "above": np.asarray(self.above, dtype=np.int64)}
        if self._values is not None:
            out["values"] = (torch.cat(self._values).cpu().numpy() if self._values else np.zeros(0))
        else:
            out["hist"] = self._hist.cpu().numpy()
        return out

    @classmethod
    def from_arrays(cls, thresholds, arrays: dict) -> "R2Stats":
        st = cls(tuple(thresholds))
        st.n, st.total, st.above = int(arrays["n"]), float(arrays["total"]), [int(a) for a in arrays["above"]]
        if "values" in arrays:
            st._values = [torch.from_numpy(np.asarray(arrays["values"], dtype=np.float64))] if st.n else []
        else:
            st._values, st._hist = None, torch.from_numpy(np.asarray(arrays["hist"], dtype=np.int64))
        return st

    def median(self) -> float:
        if self.n == 0:
            return float("nan")
        if self._median is not None:
            return self._median
        if self._values is not None:
            allv = torch.cat(self._values).sort().values
            return float((allv[(self.n - 1) // 2] + allv[self.n // 2]) / 2)
        cum = torch.cumsum(self._hist[:HIST_BINS], 0)
        ks = torch.as_tensor([(self.n - 1) // 2, self.n // 2], device=cum.device)
        bins = torch.searchsorted(cum, ks, right=True).double()
        return float(((bins + 0.5) / HIST_BINS).mean())

    def histogram(self, bins: int = 100) -> list[int]:
        """Counts in `bins` equal bins of [0, 1] (fine-bin midpoints when in histogram mode)."""
        if self.n == 0:
            return [0] * bins
        if self._values is not None:
            idx = (torch.cat(self._values) * bins).to(torch.int64).clamp_(0, bins - 1)
            return torch.bincount(idx.cpu(), minlength=bins).tolist()
        mids = (torch.arange(HIST_BINS, dtype=torch.float64) + 0.5) / HIST_BINS
        coarse = (mids * bins).to(torch.int64).clamp_(0, bins - 1)
        return torch.zeros(bins, dtype=torch.int64).index_add_(0, coarse, self._hist[:HIST_BINS].cpu()).tolist()

    def summary(self) -> dict:
        n = self.n
        return {
            "n_defined": n,
            "mean": self.total / n if n else float("nan"),
            "median": self.median(),
            "frac_above": {_key(t): (a / n if n else float("nan")) for t, a in zip(self.thresholds, self.above)},
        }


def _key(t: float) -> str:
    return f"{float(t):g}"
