"""Plans of weight-space combinations: what each output model's tensors are, before any is read.

A method (RELEX, LIN's weight extrapolation, the rank-r reconstruction; chosen through
`extrapolate.methods.METHODS` or called directly by re-grounding, forecasting and `rlvr
linearity`) is a small object whose `plan(traj)` says, per tensor, for every output at once:

- `Copy(step)`: the tensor as stored at `step` (non-floating tensors; LIN's norms);
- `Combine(base, steps, weights)`: output k = W_base + Σ_j weights[k, j] (W_steps[j] − W_base);
- `FromGram(steps, weights)`: a `Combine` over deltas against step 0 whose weights are a function
  of the tensor's Gram D Dᵀ over `steps` (RELEX without a cached Gram): the executor forms the
  Gram from the same read, and predicts from the blocks still in memory when they fit.

`linearity.executor.execute` does all the reading, arithmetic and writing (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np


@dataclass(frozen=True)
class Copy:
    step: int


@dataclass(frozen=True)
class Combine:
    base: int
    steps: tuple[int, ...]
    weights: np.ndarray  # [outputs, steps] float64
    exact: bool = False  # float64 torch arithmetic from the stored values instead of the float32 kernel


@dataclass(frozen=True)
class FromGram:
    steps: tuple[int, ...]  # observed steps (deltas against step 0)
    weights: Callable[[str, np.ndarray], np.ndarray]  # (name, Gram [T, T]) -> weights [outputs, T]


TensorPlan = Union[Copy, Combine, FromGram]


@dataclass
class Plan:
    """Every output model (complete HF directories, written atomically) and every tensor's plan,
    in the template's order. `check_finite` for the reads of `Combine` tensors: None = the
    trajectory's setting, False where the method has proved them finite (a Gram's diagonal)."""

    outputs: list[Path]
    tensors: dict[str, TensorPlan]
    dtype: str | None = None
    check_finite: bool | None = None
    label: str = "combination"  # progress bar

