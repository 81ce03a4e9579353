"""The one streaming executor of weight-space plans (`linearity.plan`): it reads each streamed
tensor's blocks once, as stored, forms every output's combination and writes all outputs block by
block through ModelWriter (complete models, renamed into place only when whole; sharded above
ModelWriter's shard size). No output tensor is ever whole in memory.

Reading: every `Combine`/`FromGram` tensor is read in one stream, prefetched by a background
thread into a ring of reused buffers (`iter_blocks(reuse=...)`), so reads overlap the arithmetic.
A `FromGram` tensor's Gram is accumulated from that read (`gram.gram_update`, NaN/Inf found from
its diagonal by `check_finite_gram`); when its blocks fit in `memory_budget` bytes the ring is
made large enough to keep them, and its outputs come from the same read; bigger tensors are read
a second time for the outputs. Arithmetic: the fused float32 kernel (`gram.predict_update`), or
with `Combine.exact` float64 from the stored values in torch (LIN's weight extrapolation).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, closing

import numpy as np
import torch

from rlvr_linearity.errors import TrajectoryError, where
from rlvr_linearity.linearity.gram import (
    CHUNK_ELEMENTS,
    check_finite_gram,
    gram_update,
    predict_update,
    read_blocks,
)
from rlvr_linearity.linearity.plan import Combine, Copy, FromGram, Plan
from rlvr_linearity.trajectory import ModelWriter
from rlvr_linearity.trajectory.resources import torch_threads
from rlvr_linearity.trajectory.streaming import (
    PREFETCH_RING,
    by_tensor,
    prefetch,
    rows_per_block,
    tensor_stream,
)


def execute(traj, plan: Plan, *, max_elements: int = CHUNK_ELEMENTS, memory_budget: int = 0) -> dict:
    """Write every output of `plan`; returns timings {gram_s: the Gram pass (reads included),
    write_s: closing the outputs (flush, fsync, rename)}."""
    from tqdm import tqdm

    with ExitStack() as stack:
        stack.enter_context(torch_threads(1))  # memory-bound block arithmetic: no OpenMP spinning
        writers = [stack.enter_context(ModelWriter(d, template=traj.base, dtype=plan.dtype, names=list(plan.tensors)))
                   for d in plan.outputs]
        run = _Execution(traj, plan, writers, max_elements, memory_budget)
        for name, p in plan.tensors.items():
            if isinstance(p, Copy):
                value = traj.model(p.step).read(name)
                if value.is_floating_point() and traj.check_finite and not torch.isfinite(value).all():
                    raise TrajectoryError(f"{where(traj.model(p.step).info(name).file, p.step, name)}: NaN/Inf weights")
                for w in writers:
                    w.write(name, value)
        streamed = [n for n, p in plan.tensors.items() if not isinstance(p, Copy)]
        blocks = stack.enter_context(closing(prefetch(tensor_stream(streamed, run.read))))
        for name, group in tqdm(by_tensor(blocks), total=len(streamed), desc=plan.label, unit="tensor", leave=False):
            run.tensor(name, group)
        t_close = time.perf_counter()
    return {"gram_s": run.gram_s, "write_s": time.perf_counter() - t_close}


def _read_steps(p) -> list[int]:
    return [0, *p.steps] if isinstance(p, FromGram) else [p.base, *p.steps]


class _Execution:
    """The state of one `execute`: the writers, the reader's ring and the prediction buffer."""

    def __init__(self, traj, plan: Plan, writers, max_elements: int, memory_budget: int):
        self.traj, self.plan, self.writers = traj, plan, writers
        self.max_elements, self.memory_budget = max_elements, memory_budget
        self.gram_s = 0.0
        self.predicted = torch.empty(0, dtype=torch.float32)  # grown to the largest block's predictions
        # every block lands in the reader's ring of reused buffers (no page faults on fresh memory),
        # large enough that a kept tensor's blocks survive while the next two blocks are read ahead
        self.ring = PREFETCH_RING + max([self._block_count(n, p) for n, p in plan.tensors.items() if self._keep(n, p)],
                                        default=0)

    def _keep(self, name: str, p) -> bool:
        """Whether a `FromGram` tensor's blocks, as stored, fit the memory budget."""
        if not isinstance(p, FromGram):
            return False
        steps = _read_steps(p)
        item = self.traj.block_dtype(name, steps).itemsize
        return len(steps) * self.traj.base.numel(name) * item <= self.memory_budget

    def _block_count(self, name: str, p) -> int:
        """How many blocks `iter_blocks` cuts the tensor into for its read."""
        shape = self.traj.base.shape(name)
        rows = shape[0] if shape else 1
        return -(-rows // rows_per_block(shape, len(_read_steps(p)), self.max_elements))

    def read(self, name: str, reuse: int | None = None):
        """The tensor's blocks over its plan's steps, in a ring of `reuse` buffers (default: the
        one large enough to keep a tensor within the budget). A Gram's diagonal tells NaN/Inf for
        free (`check_finite_gram`): `FromGram` reads skip the reader's scan."""
        p = self.plan.tensors[name]
        check = False if isinstance(p, FromGram) else self.plan.check_finite
        return read_blocks(self.traj, name, _read_steps(p), self.max_elements, reuse=reuse or self.ring,
                           check_finite=check)

    def tensor(self, name: str, group) -> None:
        """Write one streamed tensor of every output from its group of blocks."""
        p = self.plan.tensors[name]
        if self.traj.base.numel(name) == 0:  # no rows, no blocks
            for w in self.writers:
                w.write(name, self.traj.base.read(name))
        if not isinstance(p, FromGram):
            self._combine(name, p, ((start, block) for start, _, block in group))
            return
        kept, g = self._gram(name, p, group)
        p = Combine(0, p.steps, p.weights(name, g))
        if kept:
            self._combine(name, p, kept)
            return
        # too big to keep: read again, in a thread of its own whose ring keeps nothing (one of the
        # kept tensors' size there would hold up to memory_budget more: 280 MiB at the defaults)
        reread = lambda n: self.read(n, PREFETCH_RING)  # noqa: E731
        with closing(prefetch(tensor_stream([name], reread))) as again:
            self._combine(name, p, ((start, block) for _, grp in by_tensor(again) for start, _, block in grp))

    def _gram(self, name: str, p: FromGram, group) -> tuple[list, np.ndarray]:
        """The tensor's Gram over its steps from its blocks, and the blocks themselves when kept."""
        keep = self._keep(name, p)
        g = np.zeros((len(p.steps), len(p.steps)))
        kept = []
        ts = time.perf_counter()
        for start, _, block in group:
            gram_update(g, block)
            if keep:
                kept.append((start, block))
        self.gram_s += time.perf_counter() - ts
        check_finite_gram(self.traj, name, _read_steps(p), g)
        return kept, g

    def _combine(self, name: str, p: Combine, blocks) -> None:
        """Every output's rows of `name`, block by block: no output tensor is ever whole in memory."""
        w = torch.from_numpy(np.ascontiguousarray(p.weights, dtype=np.float64))
        if not p.exact:
            w = w.to(torch.float32)
        for start, block in blocks:
            if p.exact:
                b = block.reshape(block.shape[0], -1).to(torch.float64)
                pred = b[0] + w @ (b[1:] - b[0])
            else:
                columns = block[0].numel()
                if self.predicted.numel() < len(w) * columns:
                    self.predicted = torch.empty(len(w) * columns, dtype=torch.float32)
                pred = predict_update(block, w, self.predicted)
            for writer, rows in zip(self.writers, pred):
                writer.write_rows(name, start, rows)
