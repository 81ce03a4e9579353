"""Per-weight R² updated one saved step at a time (live forecasting, `rlvr_linearity.forecast`).

The batch analysis (`weights.py`) reads every step at once. While a run trains, steps arrive
one by one; `StreamingR2.update(step, model)` folds one checkpoint into running statistics so
the R² of every weight over all steps seen so far is available after each save, reading only
the base and the new step.

State (float64, flat per tensor): the running mean of the delta d = W_s − W_0, its centred sum
of squares M2_d and the co-moment C_xd with the step x, updated with Welford's recurrences
(no cancellation from large sums, unlike Σx, Σx², Σd, Σd², Σxd), plus three scalars for the
steps (count, mean, M2_x). R² = C_xd² / (M2_x · M2_d), clipped to [0, 1], undefined (NaN) where
M2_d = 0 (the weight never moved) — the same quantity as the batch OLS R² with intercept,
base counting as step 0. Step order and gaps do not matter.

Memory: 3 × 8 bytes per weight (24 B: 36 GB for a 1.5B model). `state_dir` puts the three
arrays of each tensor in float64 .npy memmaps on disk instead of RAM (the OS pages them);
reads and updates go chunk by chunk (`chunk_elements`) so temporaries stay small.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from rlvr_linearity.errors import ConfigError, TrajectoryError, where
from rlvr_linearity.linearity.r2 import R2Stats, _key


class StreamingR2:
    """Welford accumulators of (step, delta) for every weight of every tensor of `base`."""

    def __init__(self, base, names=None, *, state_dir=None, chunk_elements: int = 1 << 22,
                 thresholds=(0.5, 0.7, 0.9)):
        self.base = base
        self.names = list(base.tensor_names if names is None else names)
        self.chunk_elements = int(chunk_elements)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.steps: list[int] = [0]
        self.mean_x = 0.0
        self.m2_x = 0.0
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._state: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._memmaps: list[np.memmap] = []
        self.broken: str | None = None
        for name in self.names:
            numel = base.numel(name)
            if self.state_dir is None:
                arrs = tuple(torch.zeros(numel, dtype=torch.float64) for _ in range(3))
            else:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                stem = hashlib.sha1(name.encode()).hexdigest()[:16]
                maps = [np.lib.format.open_memmap(self.state_dir / f"{stem}.{k}.npy", mode="w+",
                                                  dtype=np.float64, shape=(numel,)) for k in ("mean", "m2", "cxd")]
                self._memmaps += maps
                arrs = tuple(torch.from_numpy(m) for m in maps)
            self._state[name] = arrs  # (mean_d, m2_d, c_xd); the base is observation 1: all zero

    @property
    def n(self) -> int:
        return len(self.steps)

    def _rows(self, name: str) -> tuple[int, int]:
        shape = tuple(self.base.shape(name))
        rows = shape[0] if shape else 1
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        return rows, row

    def update(self, step: int, model) -> None:
        """Fold step `step` (a ModelFiles with the base's tensors and shapes) into the statistics.

        Shapes are checked first; NaN/Inf are found while folding, chunk by chunk, so a step
        with NaN in a late tensor leaves the statistics half-updated: they are then marked
        broken (`self.broken`) and every later call raises."""
        if self.broken:
            raise ConfigError(f"R² statistics unusable: {self.broken}")
        step = int(step)
        if step in self.steps:
            raise ConfigError(f"step {step} was already folded into the R² statistics")
        if step < 0:
            raise ConfigError(f"step {step}: steps must be >= 0")
        for name in self.names:
            if tuple(model.shape(name)) != tuple(self.base.shape(name)):
                raise TrajectoryError(f"{where(model.path, step, name)}: shape {list(model.shape(name))} differs "
                                      f"from the base model's {list(self.base.shape(name))}")
        n = self.n + 1
        x = float(step)
        dx = x - self.mean_x
        mean_x = self.mean_x + dx / n
        for name in self.names:
            mu, m2, cxd = self._state[name]
            rows, row = self._rows(name)
            per = max(1, self.chunk_elements // row)
            for start in range(0, rows, per):
                stop = min(rows, start + per)
                w0 = self.base.read_rows(name, start, stop).reshape(-1).to(torch.float64)
                ws = model.read_rows(name, start, stop).reshape(-1).to(torch.float64)
                if not torch.isfinite(ws).all():
                    self.broken = f"step {step} has NaN/Inf in {name}"
                    raise TrajectoryError(f"{where(model.info(name).file, step, name)}: NaN/Inf weights "
                                          f"(rows {start}:{stop})")
                d = ws.sub_(w0)
                a, b = start * row, stop * row
                dd = d - mu[a:b]
                mu[a:b] += dd / n
                d.sub_(mu[a:b])  # d − new mean
                m2[a:b].addcmul_(dd, d)
                cxd[a:b].add_(d, alpha=dx)
        self.m2_x += dx * (x - mean_x)
        self.mean_x = mean_x
        self.steps.append(step)
        for m in self._memmaps:
            m.flush()

    def r2_chunks(self, name: str):
        """Yield float64 R² of consecutive chunks of `name` (flat), NaN where undefined."""
        _, m2, cxd = self._state[name]
        numel = m2.numel()
        step = max(1, self.chunk_elements)
        for a in range(0, numel, step):
            b = min(numel, a + step)
            if self.n < 2 or self.m2_x == 0:
                yield torch.full((b - a,), float("nan"), dtype=torch.float64)
                continue
            c, q = cxd[a:b], m2[a:b]
            r2 = (c * c).div_(q * self.m2_x).clamp_(0.0, 1.0)
            yield r2.masked_fill_(q == 0, float("nan"))

    def r2(self, name: str) -> torch.Tensor:
        """R² of every weight of `name`, float64, the tensor's shape, NaN where undefined."""
        return torch.cat(list(self.r2_chunks(name))).reshape(tuple(self.base.shape(name)))

    def summary(self, per_tensor: bool = True) -> dict:
        """`weights_r2.json`-style statistics over the steps seen so far (contract keys:
        steps, n_weights, n_defined, mean, median, frac_above, per_tensor)."""
        glob = R2Stats(self.thresholds)
        rows = []
        i07 = self.thresholds.index(0.7) if 0.7 in self.thresholds else None
        for name in self.names:
            st = R2Stats(self.thresholds)
            for r2 in self.r2_chunks(name):
                st.add(r2)
            s = st.summary()
            if per_tensor:
                rows.append({"name": name, "numel": int(self.base.numel(name)), "n_defined": s["n_defined"],
                             "mean": s["mean"], "median": s["median"],
                             "frac_above_0.7": s["frac_above"].get("0.7") if i07 is not None else None})
            glob.merge(st)
        s = glob.summary()
        out = {"steps": sorted(self.steps), "n_weights": int(sum(self.base.numel(n) for n in self.names)), **s}
        out["thresholds"] = [_key(t) for t in self.thresholds]
        if per_tensor:
            out["per_tensor"] = rows
        return out


def finite_or_none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
