"""Per-tensor Gram matrices of a trajectory's deltas, streamed once and cached by content.

For a tensor with deltas Δ_s = W_s − W_0 (flattened) over observed steps s, G = D Dᵀ [T, T]
holds everything low-rank analysis and RELEX need: a window's Gram is the block of the
union's Gram at the window's rows, so one read of the union of all windows' steps serves a
whole sweep. Nothing of size steps × parameters is kept: blocks of rows are read through
`traj.iter_blocks`, differenced in float32 (exact enough: the base is subtracted before any
accumulation) and their products accumulated in float64.

Cache: `<cache_dir>/<fingerprint>/<hash of steps and names>.npz` holds the Grams of every tensor
(or of a partition job's share) over one step list (atomic: temp file + os.replace). A request whose steps (and names) are a subset of a
cached entry's is answered from it without reading any tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
import zipfile
from contextlib import closing, suppress
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 22  # elements per streamed block (all steps together)
_READ = {"bytes": 0}
_READ_LOCK = threading.Lock()  # read-ahead threads of two streams count at once


def bytes_read() -> int:
    """Tensor bytes (stored precision) read through `read_blocks` in this process, for tests
    and benchmarks that check a sweep reads its steps once."""
    return _READ["bytes"]


def read_blocks(traj, name: str, steps, max_elements: int = CHUNK_ELEMENTS, reuse: int = 0,
                check_finite: bool | None = None):
    """`traj.iter_blocks` (blocks as stored: the reader only copies bytes, the consumers widen
    in their own threads) with the bytes counted: the one reader of RELEX, the Grams and weight
    extrapolation. `reuse`, `check_finite`: see `iter_blocks` (Gram passes skip the reader's
    scan: `check_finite_gram` tells for free)."""
    steps = list(steps)
    stored = sum(traj.model(s).dtype(name).itemsize for s in steps)
    for start, stop, block in traj.iter_blocks(name, steps, max_elements, reuse=reuse, check_finite=check_finite):
        with _READ_LOCK:
            _READ["bytes"] += stored * block[0].numel()
        yield start, stop, block


def check_finite_gram(traj, name: str, steps, g: np.ndarray) -> None:
    """Raise TrajectoryError naming the step when `name` holds NaN/Inf over `steps` (base first),
    as `iter_blocks` would have: a NaN or Inf anywhere in the deltas (or the base) makes a
    diagonal entry of their Gram (a sum of squares) non-finite, so a finite diagonal proves the
    tensor finite and only a non-finite one costs a second, checked read (which also tells an
    overflow of the squares, which passes, from a bad weight)."""
    if not traj.check_finite or np.isfinite(np.diagonal(g)).all():
        return
    for _ in traj.iter_blocks(name, list(steps), CHUNK_ELEMENTS, check_finite=True):
        pass


def _deltas(block: torch.Tensor) -> torch.Tensor:
    """float32 deltas [T, n] of a block [1 + T, ...] (row 0 the base) for the torch path:
    float64 differenced as stored, then rounded (its deltas may be finer than float32 can
    hold next to the weights)."""
    b = block.reshape(block.shape[0], -1)
    if b.dtype == torch.float64:
        return (b[1:] - b[0]).float()
    return b[1:].float() - b[0].float()


def gram_update(g: np.ndarray, block: torch.Tensor) -> None:
    """g += D Dᵀ for the deltas D of a block [1 + T, ...] (row 0 the base, any float dtype as
    stored). bf16, fp16 and float32 blocks go to the fused numba kernel (`kernels.gram.gram_block`:
    widened, differenced and multiplied from L1 on every core, the upper triangle only,
    float32 sums over at most 512 columns, then float64, independent of the thread schedule):
    3.8x faster than torch's product of the deltas and about 15x more precise (relative error
    4e-8 against 7e-7, measured on bf16 blocks). float64 blocks (or no numba): one torch
    product of the float32 deltas."""
    from rlvr_linearity.linearity.kernels.gram import gram_block

    fused = gram_block(block)
    if fused is None:
        d = _deltas(block)
        fused = torch.mm(d, d.T).numpy()
    g += fused


def predict_update(block: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[:, cols] = W_0 + weights @ D for a block [1 + T, ...]: the predictions [K, n] (float32,
    ~1e-7 of the predicted delta) of every target at once, by the fused kernel
    (`kernels.predict.predict_block`) or, where `gram_update` uses torch, by one torch product; `out` is
    a reused buffer of at least K * n elements."""
    from rlvr_linearity.linearity.kernels.predict import predict_block

    b2 = block.reshape(block.shape[0], -1)
    pred = out[: weights.shape[0] * b2.shape[1]].view(weights.shape[0], b2.shape[1])
    if not predict_block(b2, weights, pred):
        torch.mm(weights, _deltas(b2), out=pred).add_(b2[0])
    return pred


def _entry_key(steps, names) -> str:
    """An entry's file name: its steps and its tensors (a partition job's entry holds only its
    share, so partitions never overwrite or wait for one another's)."""
    return hashlib.sha256(json.dumps([[int(s) for s in steps], sorted(names)]).encode()).hexdigest()[:24]


class GramCache:
    """Gram matrices of one trajectory (keyed by its content fingerprint) on disk."""

    def __init__(self, cache_dir, fingerprint: str):
        self.dir = Path(cache_dir) / fingerprint[:40]

    def lookup(self, steps, names) -> dict[str, np.ndarray] | None:
        """Grams over `steps` for `names`, cut out of any cached entry covering them; None if none does."""
        if not self.dir.is_dir():
            return None
        steps = [int(s) for s in steps]
        for f in sorted(self.dir.glob("[!.]*.npz")):  # hidden: a writer's temp file (or a killed one's)
            try:
                with np.load(f) as z:
                    cached = [int(s) for s in z["__steps__"]]
                    if not set(steps) <= set(cached) or not all(n in z.files for n in names):
                        continue
                    idx = np.asarray([cached.index(s) for s in steps])
                    return {n: z[n][np.ix_(idx, idx)].copy() for n in names}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                # damaged (a torn copy, a bad disk): never trusted, and removed so it is recomputed
                log.warning("Gram cache entry %s unreadable (%s); deleted", f, e)
                with suppress(OSError):
                    f.unlink(missing_ok=True)
        return None

    def claim(self, steps, names):
        """An exclusive lock on computing the Grams of `names` over `steps` (a file lock: works across jobs)."""
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / f".{_entry_key(steps, names)}.lock"))

    def store(self, steps, grams: dict[str, np.ndarray]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{_entry_key(steps, grams)}.npz"
        tmp = self.dir / f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.npz"
        try:
            np.savez(tmp, __steps__=np.asarray([int(s) for s in steps], dtype=np.int64), **grams)
            os.replace(tmp, path)
        except OSError as e:  # a full or read-only cache: the run's own outputs do not depend on it
            log.warning("Gram cache entry %s not stored (%s)", path, e)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def _stream_grams(traj, names, steps, max_elements: int = CHUNK_ELEMENTS, progress: bool = True
                  ) -> dict[str, np.ndarray]:
    """{name: G [T, T] float64} of each tensor's deltas over `steps` (base excluded): one
    streaming read, prefetched in the background, NaN/Inf detected from the Grams."""
    from tqdm import tqdm

    from rlvr_linearity.trajectory.streaming import PREFETCH_RING, by_tensor, prefetch, tensor_stream

    steps = [int(s) for s in steps]
    read = lambda name: read_blocks(traj, name, [0, *steps], max_elements, reuse=PREFETCH_RING,  # noqa: E731
                                    check_finite=False)
    grams = {}
    with closing(prefetch(tensor_stream(names, read))) as blocks:
        for name, group in tqdm(by_tensor(blocks), total=len(names), desc="Gram matrices", unit="tensor",
                                leave=False, disable=not progress):
            g = np.zeros((len(steps), len(steps)))
            for _, _, block in group:
                gram_update(g, block)
            check_finite_gram(traj, name, [0, *steps], g)
            grams[name] = g
    return grams


def compute_grams(traj, steps, cache_dir=None, names=None, max_elements: int = CHUNK_ELEMENTS
                  ) -> dict[str, np.ndarray]:
    """Per floating tensor, the Gram [T, T] float64 of Δ_s = W_s − W_0 over `steps` (step 0, if
    given, is dropped: its delta is zero). Read from / stored to the cache under `cache_dir`
    (keyed by `traj.fingerprint()` and the step list) when given."""
    steps = sorted({int(s) for s in steps} - {0})
    names = [n for n in (names or traj.tensor_names) if traj.base.dtype(n).is_floating_point]
    cache = GramCache(cache_dir, traj.fingerprint()) if cache_dir is not None else None
    if cache is None:
        return _stream_grams(traj, names, steps, max_elements)
    hit = cache.lookup(steps, names)
    if hit is not None:
        return hit
    with cache.claim(steps, names):  # concurrent jobs of a sweep: one computes, the others then hit the cache
        hit = cache.lookup(steps, names)
        if hit is not None:
            return hit
        grams = _stream_grams(traj, names, steps, max_elements)
        cache.store(steps, grams)
    return grams
