"""`Trajectory`: the base model plus step checkpoints, validated before anything is written, read
block by block in stored precision."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from rlvr_linearity.errors import TrajectoryError, where

from .files import ModelFiles
from .resources import release_free_heap, torch_threads
from .streaming import rows_per_block

log = logging.getLogger(__name__)

class Trajectory:
    """Base model (step 0) and checkpoints, all with the same tensor names and shapes.

    Validated on construction (files, headers, names, shapes); NaN/Inf are checked while
    streaming (`iter_blocks`) when `check_finite`.
    """

    def __init__(self, models: Mapping[int, ModelFiles], path: Path | None = None, check_finite: bool = True):
        self._models = dict(sorted(models.items()))
        self.steps = list(self._models)
        self.path = path
        self.check_finite = check_finite
        self._buffers = threading.local()  # iter_blocks' reused buffers, one set per thread
        if not self.steps or self.steps[0] != 0:
            raise TrajectoryError(f"{where(path)}: missing base model (step 0)")
        self._validate()

    @property
    def base(self) -> ModelFiles:
        return self._models[0]

    def model(self, step: int) -> ModelFiles:
        try:
            return self._models[int(step)]
        except KeyError:
            raise TrajectoryError(f"{where(self.path, step)}: step not in the trajectory {self.steps}") from None

    @property
    def tensor_names(self) -> list[str]:
        return self.base.tensor_names

    def __repr__(self) -> str:
        return f"Trajectory({str(self.path)!r}, steps={self.steps})"

    def _validate(self) -> None:
        base = self.base
        names = set(base.tensor_names)
        for s, mf in self._models.items():
            if s == 0:
                continue
            have = set(mf.tensor_names)
            for name in base.tensor_names:
                if name not in have:
                    raise TrajectoryError(f"{where(mf.path, s, name)}: tensor missing (present in the base model)")
                if mf.shape(name) != base.shape(name):
                    raise TrajectoryError(f"{where(mf.path, s, name)}: shape {list(mf.shape(name))} differs from "
                                          f"the base model's {list(base.shape(name))}")
                if mf.dtype(name).is_floating_point != base.dtype(name).is_floating_point:
                    raise TrajectoryError(f"{where(mf.path, s, name)}: dtype {mf.dtype(name)} incompatible with "
                                          f"the base model's {base.dtype(name)}")
            extra = sorted(have - names)
            if extra:
                raise TrajectoryError(f"{where(mf.path, s, extra[0])}: tensor not in the base model "
                                      f"{base.path} ({len(extra)} such)")

    def fingerprint(self) -> str:
        """Identity for caches: sha256 over the step list and, per step, each weight file's
        name, size, mtime (ns), inode and full safetensors header (names, dtypes, shapes,
        offsets), four 64 KiB ranges sampled evenly through its data, and config.json. Hashing
        every byte would cost a full read; the file identities make a copy or any rewrite (one
        that keeps sizes and the sampled bytes included) a new trajectory, so a cache never
        serves one trajectory's results to another. Only an edit that also restores the mtime
        goes unseen, and the passes that read weights still check them for NaN/Inf."""
        h = hashlib.sha256(json.dumps(self.steps).encode())
        for s, mf in self._models.items():
            h.update(f"|{s}:{mf.sample_digest()}".encode())
        return h.hexdigest()

    def block_dtype(self, name: str, steps=None) -> torch.dtype:
        """The widest stored dtype of `name` over `steps` (default all): `iter_blocks`' default."""
        steps = list(self.steps if steps is None else steps)
        dtype = self.model(steps[0]).dtype(name)
        for s in steps[1:]:
            dtype = torch.promote_types(dtype, self.model(s).dtype(name))
        return dtype

    def _buffer(self, kind: str, nbytes: int) -> torch.Tensor:
        """`nbytes` of a uint8 buffer kept for this thread across calls, grown when too small.
        Fresh memory costs a page fault per 4 KiB on first touch: allocating every block anew
        made the reader 2-3x slower than the copy itself (measured: 2.3 s vs 0.9 s for 4.9 GB)."""
        buf = getattr(self._buffers, kind, None)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8)
            setattr(self._buffers, kind, buf)
        return buf[:nbytes]

    def iter_blocks(self, name: str, steps=None, max_elements: int = 1 << 24, dtype: torch.dtype | None = None,
                    reuse: int = 0, check_finite: bool | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (start, stop, block): rows [start:stop) of dim 0 of `name` for `steps` (default all),
        block `[len(steps), stop - start, *shape[1:]]` in stored dtype (the widest one if steps
        differ, e.g. bf16 base + fp32 steps: exact), or in `dtype` if given: it must hold every
        stored dtype exactly (e.g. float32 for bf16/fp16/fp32, float64 for anything), so the
        values are the same and the reader converts once instead of the caller converting again.
        A block holds at most `max_elements` elements, but always at least one row. Each block is
        a new tensor (callers may keep it), or with `reuse=n` a view of one of a ring of `n`
        buffers that this trajectory keeps per thread: overwritten `n` blocks later (counted over
        every `reuse` iteration of the thread), for callers that let go of a block within that
        (1: before asking for the next; 3: behind `prefetch`). No page faults on fresh memory.
        `check_finite` (default: the trajectory's) scans each block for NaN/Inf and raises
        TrajectoryError naming the step; a caller that detects them for free passes False.

        Each step's rows are read once, straight into the block (`ModelFiles.read_rows_into`: one
        pread into the block when the dtypes agree, else into a reused buffer and one conversion),
        with one torch thread on CPU while the block is filled and checked (small memory-bound
        copies; OpenMP spin-waiting costs a shared CPU dearly); the caller's thread count is
        restored before the block is yielded. Before the first block, freed heap memory beyond
        512 MiB is handed back to the OS (`release_free_heap`)."""
        steps = list(self.steps if steps is None else steps)
        check = self.check_finite if check_finite is None else check_finite
        models = [self.model(s) for s in steps]
        shape = self.base.shape(name)
        rows = shape[0] if shape else 1
        rest = tuple(shape[1:])
        row_size = 1
        for d in rest:
            row_size *= d
        wide = self.block_dtype(name, steps)
        if dtype is None:
            dtype = wide
        elif torch.promote_types(wide, dtype) != dtype:
            raise ValueError(f"iter_blocks({name!r}, dtype={dtype}): cannot hold the stored {wide} exactly")
        per = rows_per_block(shape, len(steps), max_elements)
        release_free_heap()
        # bytes of the conversion buffer: the largest stored item that is not read straight into the block
        convert = [m.dtype(name).itemsize for m in models if hasattr(m, "read_rows_into") and m.dtype(name) != dtype]
        scratch = self._buffer("scratch", min(per, rows) * row_size * max(convert)) if convert else None
        for start in range(0, rows, per):
            stop = min(rows, start + per)
            shape_b = (len(steps), stop - start, *rest)
            if reuse:
                n = len(steps) * (stop - start) * row_size
                turn = getattr(self._buffers, "turn", 0)
                self._buffers.turn = turn + 1
                block = self._buffer(f"block{turn % int(reuse)}", n * dtype.itemsize).view(dtype).view(shape_b)
            else:
                block = torch.empty(shape_b, dtype=dtype)
            with torch_threads(1):
                for i, m in enumerate(models):
                    if hasattr(m, "read_rows_into"):
                        m.read_rows_into(name, start, stop, block[i], scratch)
                    else:  # FSDP shard steps: assembled in memory by the reader
                        block[i] = m.read_rows(name, start, stop).reshape(stop - start, *rest)
                # a sum is finite iff every element is, barring overflow: exact check only then (fast path)
                bad = check and dtype.is_floating_point and not torch.isfinite(block.sum()) \
                    and not torch.isfinite(block).all()
            if bad:
                i = int((~torch.isfinite(block.reshape(len(steps), -1))).any(1).nonzero()[0])
                raise TrajectoryError(f"{where(models[i].info(name).file, steps[i], name)}: NaN/Inf weights "
                                      f"(rows {start}:{stop})")
            yield start, stop, block
