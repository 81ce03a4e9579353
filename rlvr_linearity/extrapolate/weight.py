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
from contextlib import ExitStack
from pathlib import Path

import torch

from rlvr_linearity.errors import ConfigError, TrajectoryError, where

_NORM = re.compile(r"(^|\.)([^.]*norm[^.]*|ln_[^.]*)\.")


def is_norm(name: str) -> bool:
    """Whether a tensor belongs to a normalisation module (see the module docstring)."""
    return bool(_NORM.search(name.lower()))


def alpha(target: int, base_step: int, second_step: int) -> float:
    if int(second_step) == int(base_step):
        raise ConfigError(f"extrapolate.second_step={second_step} equals extrapolate.base_step: α is undefined")
    return (int(target) - int(base_step)) / (int(second_step) - int(base_step))


def run_weight(traj, base_step: int, second_step: int, targets, out_root: Path, *, extrapolate_norms: bool = False,
               dtype=None, max_elements: int = 1 << 22) -> dict:
    """Write DIR/extrapolate/step_<t>/ for every target; return extrapolation.json's content."""
    from tqdm import tqdm

    from rlvr_linearity.linearity.gram import read_blocks
    from rlvr_linearity.trajectory import ModelWriter

    t0 = time.perf_counter()
    a_step, b_step = int(base_step), int(second_step)
    targets = [int(t) for t in targets]
    if not targets:
        raise ConfigError("extrapolate.targets is empty: give the target steps, e.g. extrapolate.targets=[20]")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"extrapolate.targets={targets}: duplicate targets")
    alphas = [alpha(t, a_step, b_step) for t in targets]
    for s, key in ((a_step, "base_step"), (b_step, "second_step")):
        if s not in traj.steps:
            raise ConfigError(f"extrapolate.{key}={s}: not a step of the trajectory {traj.path} "
                              f"(saved: {traj.steps})")
    base = traj.base
    names = list(base.tensor_names)
    copied, extrapolated = [], []
    al = torch.tensor(alphas, dtype=torch.float64)[:, None]
    with ExitStack() as stack:
        writers = [stack.enter_context(ModelWriter(Path(out_root) / f"step_{t}", template=base, dtype=dtype))
                   for t in targets]
        for name in tqdm(names, desc="weight extrapolation", unit="tensor", leave=False):
            floating = base.dtype(name).is_floating_point
            if not floating or (is_norm(name) and not extrapolate_norms):
                value = traj.model(b_step).read(name)
                if floating and traj.check_finite and not torch.isfinite(value).all():
                    raise TrajectoryError(f"{where(traj.model(b_step).info(name).file, b_step, name)}: "
                                          "NaN/Inf weights")
                for w in writers:
                    w.write(name, value)
                copied.append(name)
                continue
            if base.numel(name) == 0:  # no rows, no blocks
                for w in writers:
                    w.write(name, base.read(name))
            for start, _, block in read_blocks(traj, name, [a_step, b_step], max_elements):
                b = block.reshape(2, -1).to(torch.float64)
                pred = b[0] + al * (b[1] - b[0])
                for w, p in zip(writers, pred):  # block by block: no output whole in memory
                    w.write_rows(name, start, p)
            extrapolated.append(name)
    return {"base_step": a_step, "second_step": b_step,
            "targets": [{"target": t, "alpha": a, "path": str(Path(out_root) / f"step_{t}")}
                        for t, a in zip(targets, alphas)],
            "extrapolate_norms": bool(extrapolate_norms), "extrapolated": extrapolated, "copied_from_second": copied,
            "tied_embeddings": base.tied_embeddings, "timings": {"total_s": time.perf_counter() - t0}}
