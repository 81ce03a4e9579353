"""LIN's two-point weight extrapolation: W = W_A + α (W_B − W_A), α = (t − A)/(B − A).

Differences from the public script (docs/methods.md §B1, §F9): the steps come from the config, tensors
are streamed (one read of A and B per tensor for all targets), arithmetic is float64 from the
stored precision, and a tied embedding is extrapolated once and stays tied (the writer stores
only what the base stores).

Norms: as in LIN, normalisation weights are copied from the second checkpoint unless
`extrapolate_norms`. A tensor counts as a norm when a dot-separated component of its name
contains "norm" (input_layernorm, post_attention_layernorm, q_norm, model.norm, ...) or starts
with "ln_" (GPT-2 style ln_1 / ln_f), weight and bias alike. Attention/MLP biases are
extrapolated.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.plan import Combine, Copy, Plan

_NORM = re.compile(r"(^|\.)([^.]*norm[^.]*|ln_[^.]*)\.")


def is_norm(name: str) -> bool:
    """Whether a tensor belongs to a normalisation module (see the module docstring)."""
    return bool(_NORM.search(name.lower()))


def alpha(target: int, base_step: int, second_step: int) -> float:
    if int(second_step) == int(base_step):
        raise ConfigError(f"extrapolate.second_step={second_step} equals extrapolate.base_step: α is undefined")
    return (int(target) - int(base_step)) / (int(second_step) - int(base_step))


class WeightExtrapolation:
    """LIN's weight extrapolation as a weight-space method: per tensor W_A + α_t (W_B − W_A) for
    every target t (float64 from the stored values), norms (unless `extrapolate_norms`) and
    non-floating tensors copied from B. Re-grounding's segment is the case A = 0 (the segment's
    start model), B = M, target M + N."""

    def __init__(self, base_step: int, second_step: int, targets, out_root: Path, *, extrapolate_norms: bool = False,
                 dtype=None, names: list[str] | None = None):
        self.a_step, self.b_step = int(base_step), int(second_step)
        self.targets = [int(t) for t in targets]
        if not self.targets:
            raise ConfigError("extrapolate.targets is empty: give the target steps, e.g. extrapolate.targets=[20]")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"extrapolate.targets={self.targets}: duplicate targets")
        self.alphas = [alpha(t, self.a_step, self.b_step) for t in self.targets]
        self.out_root, self.extrapolate_norms, self.dtype = Path(out_root), bool(extrapolate_norms), dtype
        self.names = names  # a partition job's share of the tensors (None: all)
        self.copied: list[str] = []
        self.extrapolated: list[str] = []

    def plan(self, traj) -> Plan:
        for s, key in ((self.a_step, "base_step"), (self.b_step, "second_step")):
            if s not in traj.steps:
                raise ConfigError(f"extrapolate.{key}={s}: not a step of the trajectory {traj.path} "
                                  f"(saved: {traj.steps})")
        base = traj.base
        al = np.asarray(self.alphas, dtype=np.float64)[:, None]
        tensors = {}
        for name in (base.tensor_names if self.names is None else self.names):
            if not base.dtype(name).is_floating_point or (is_norm(name) and not self.extrapolate_norms):
                tensors[name] = Copy(self.b_step)
                self.copied.append(name)
            else:
                tensors[name] = Combine(self.a_step, (self.b_step,), al, exact=True)
                self.extrapolated.append(name)
        outputs = [self.out_root / f"step_{t}" for t in self.targets]
        return Plan(outputs, tensors, self.dtype, label="weight extrapolation")

    def report(self, traj, seconds: float) -> dict:
        return {"base_step": self.a_step, "second_step": self.b_step,
                "targets": [{"target": t, "alpha": a, "path": str(self.out_root / f"step_{t}")}
                            for t, a in zip(self.targets, self.alphas)],
                "extrapolate_norms": self.extrapolate_norms, "extrapolated": self.extrapolated,
                "copied_from_second": self.copied, "tied_embeddings": traj.base.tied_embeddings,
                "timings": {"total_s": seconds}}


def run_weight(traj, base_step: int, second_step: int, targets, out_root: Path, *, extrapolate_norms: bool = False,
               dtype=None, max_elements: int = 1 << 22, names=None) -> dict:
    """Write DIR/extrapolate/step_<t>/ for every target (`WeightExtrapolation`, through the
    executor; `names`: only these tensors); return extrapolation.json's content."""
    from rlvr_linearity.linearity.executor import execute

    t0 = time.perf_counter()
    method = WeightExtrapolation(base_step, second_step, targets, out_root, extrapolate_norms=extrapolate_norms,
                                 dtype=dtype, names=names)
    execute(traj, method.plan(traj), max_elements=max_elements)
    return method.report(traj, time.perf_counter() - t0)
