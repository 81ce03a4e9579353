"""Fused CPU kernel for per-weight R² (numba): one pass over a block of stored values computes,
per column, cumulative float64 sums of the deltas against the base, snapshots them at every
prefix-window end, and adds the window's R² straight into the statistics (count, sum, counts
above thresholds, 2**19-bin histogram). Windows therefore cost little extra and nothing
of size [windows, columns] is materialised. The torch path (`r2.py`) is the reference and the
CUDA path; both are tested against numpy.

Optional: without numba the torch path runs.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    import numba as nb

    if "NUMBA_THREADING_LAYER" not in os.environ:
        # no spin-waiting workers: on a shared CPU an OpenMP pool that spins starves everything else
        nb.config.THREADING_LAYER = "workqueue"
except ImportError:  # pragma: no cover - numba is an optional accelerator
    nb = None

TILE = 256
PARALLEL_TILES = 8  # tiles per hand-out of the dynamic schedule


def available() -> bool:
    return nb is not None


if nb is not None:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _bits_to_float32(typingctx, bits):  # pragma: no cover - compiled
        """Reinterpret a uint32 as float32 (no conversion instruction: a register bitcast)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @nb.njit(inline="always")
    def _bf16(bits):  # pragma: no cover - compiled
        """A bfloat16 (its uint16 bits) widened exactly to float32: the bits are float32's top half."""
        return _bits_to_float32(np.uint32(bits) << np.uint32(16))


    @nb.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"nsz", "contract"})
    def r2_accumulate(x, bf16, steps, ends, xbar, sxx, thresholds, min_abs_change, hist, sums, cnts,
                      above, out, bad):  # pragma: no cover - compiled
        """x [T, C] (base in row 0): float32/float64 values, or with `bf16` the raw bfloat16
        bits as uint16 (widened exactly in here: no conversion pass, half the bytes read);
        ends [W] ascending window lengths; hist [P, W, B] int32 (size 0 in the last axis to
        skip); sums [P, W]; cnts [P, W]; above [P, W, K]; out [W, C] float64 (every window's
        R², NaN undefined; size 0 to skip); bad [P]: count of columns holding NaN/Inf (their
        sums are not finite), so the caller can name the step. P: numba's thread ids (slot =
        thread).

        Spans of PARALLEL_TILES tiles are handed to the threads as they come free (dynamic
        scheduling, chunk size 1): a thread slowed by the prefetching reader does fewer, none
        waits idle at the end of the block.

        Flat indexing keeps every inner loop unit-stride (LLVM vectorises them; row views of a
        2-D array compiled to gathers); bf16 is widened inside the loop by a bit shift; the
        statistics are separate loops so only the histogram scatter stays scalar."""
        n_steps, n_cols = x.shape
        xf = x.reshape(-1)
        n_win = ends.shape[0]
        n_bins = hist.shape[2]
        use_hist = n_bins > 0
        use_out = out.shape[1] > 0
        use_range = min_abs_change > 0.0
        n_thr = thresholds.shape[0]
        span = TILE * PARALLEL_TILES
        for c in nb.prange((n_cols + span - 1) // span):  # handed out as threads come free
            p = nb.get_thread_id()
            s = np.empty(TILE)
            q = np.empty(TILE)
            sx = np.empty(TILE)
            mn = np.empty(TILE)
            mx = np.empty(TILE)
            x0 = np.empty(TILE)
            rr = np.empty(TILE)
            bi = np.empty(TILE, dtype=np.int64)
            for j0 in range(c * span, min(n_cols, (c + 1) * span), TILE):
                m = min(TILE, n_cols - j0)
                w = 0
                for t in range(n_steps):
                    # unsigned: numba skips its negative-index wraparound, which had made every
                    # load below a scalar insert (3-4x slower); the indices are never negative
                    at = np.uint64(t * n_cols + j0)
                    if t == 0:
                        for k in range(m):
                            x0[k] = np.float64(_bf16(xf[at + np.uint64(k)])) if bf16 else np.float64(xf[at + np.uint64(k)])
                            s[k] = 0.0
                            q[k] = 0.0
                            sx[k] = 0.0
                            mn[k] = 0.0
                            mx[k] = 0.0
                        continue
                    xt = steps[t]
                    if bf16:
                        for k in range(m):
                            d = np.float64(_bf16(xf[at + np.uint64(k)])) - x0[k]
                            s[k] += d
                            q[k] += d * d
                            sx[k] += xt * d
                    else:  # float64 input must not pass through float32
                        for k in range(m):
                            d = np.float64(xf[at + np.uint64(k)]) - x0[k]
                            s[k] += d
                            q[k] += d * d
                            sx[k] += xt * d
                    if use_range:
                        for k in range(m):
                            d = (np.float64(_bf16(xf[at + np.uint64(k)])) if bf16 else np.float64(xf[at + np.uint64(k)])) - x0[k]
                            mn[k] = min(mn[k], d)
                            mx[k] = max(mx[k], d)
                    if t == n_steps - 1:
                        nbad = 0
                        for k in range(m):
                            nbad += not np.isfinite(q[k] + sx[k])
                        bad[p] += nbad
                    while w < n_win and ends[w] == t + 1:
                        n = ends[w]
                        xb = xbar[w]
                        sw = sxx[w]
                        for k in range(m):  # branch-free: R², or -1 when undefined
                            syy = q[k] - s[k] * s[k] / n
                            sxy = sx[k] - xb * s[k]
                            r2 = min(max(sxy * sxy / (sw * syy), 0.0), 1.0)
                            ok = q[k] > 0.0 and (mx[k] - mn[k] > min_abs_change or not use_range)
                            rr[k] = r2 if ok else -1.0
                            bi[k] = min(np.int64(r2 * n_bins), n_bins - 1) if ok else n_bins
                        cnt, tot = _count_defined(rr, m, thresholds, above[p, w])
                        if use_out:
                            for k in range(m):
                                out[w, j0 + k] = rr[k] if rr[k] >= 0.0 else np.nan
                        if use_hist:
                            hw = hist[p, w]
                            for k in range(m):
                                if bi[k] < n_bins:
                                    hw[bi[k]] += 1
                        sums[p, w] += tot
                        cnts[p, w] += cnt
                        w += 1

    @nb.njit(nogil=True, cache=True, fastmath={"nsz", "contract", "reassoc"})
    def _count_defined(rr, m, thresholds, above):  # pragma: no cover - compiled
        """(count, sum) of the defined (>= 0) values of rr[:m], and per threshold the count above
        it added into `above`. Its own function so that only these sums may be reassociated
        (vectorised reductions), not the kernel's accumulation."""
        cnt = 0
        tot = 0.0
        for k in range(m):
            ok = rr[k] >= 0.0
            cnt += ok
            tot += rr[k] if ok else 0.0
        for i in range(thresholds.shape[0]):
            th = thresholds[i]
            a = 0
            for k in range(m):
                a += rr[k] > th
            above[i] += a
        return cnt, tot


    @nb.njit(cache=True, nogil=True)
    def fold_tensor(hist, glob, n_defined, median_bins, w_from):  # pragma: no cover - compiled
        """Per window: add the slots of the tensor's int32 histograms [P, W, B] into the global
        int64 ones [W, B], zero them, and find the bins of the tensor's two middle order
        statistics (median_bins [W, 2]) in the same single sweep. Windows before w_from are left."""
        n_slots, n_win, n_bins = hist.shape
        for w in range(w_from, n_win):
            n = n_defined[w]
            k1 = (n - 1) // 2
            k2 = n // 2
            seen = 0
            median_bins[w, 0] = -1
            median_bins[w, 1] = -1
            for b in range(n_bins):
                v = 0
                for p in range(n_slots):
                    v += hist[p, w, b]
                    hist[p, w, b] = 0
                if v == 0:
                    continue
                glob[w, b] += v
                if median_bins[w, 0] < 0 and seen + v > k1:
                    median_bins[w, 0] = b
                if median_bins[w, 1] < 0 and seen + v > k2:
                    median_bins[w, 1] = b
                seen += v


class KernelStats:
    """State of the fused kernel for one trajectory pass: per-slot (thread) per-window int32
    histograms of the current tensor (cache-sized: 2**19 bins = 2 MiB), folded into int64
    global histograms at the end of every tensor; exact sums and counts."""

    def __init__(self, steps, lengths, thresholds, min_abs_change: float, n_bins: int):
        x = np.asarray(steps, dtype=np.float64)
        self.steps = x
        self.ends = np.asarray(lengths, dtype=np.int64)
        self.xbar = np.array([x[:n].mean() for n in lengths])
        self.sxx = np.array([np.sum((x[:n] - x[:n].mean()) ** 2) for n in lengths])
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.min_abs_change = float(min_abs_change or 0.0)
        self.slots = max(1, nb.get_num_threads())  # numba's thread ids index the slots
        w, k = len(lengths), len(thresholds)
        self.hist = np.zeros((self.slots, w, n_bins), dtype=np.int32)
        self.glob = np.zeros((w, n_bins), dtype=np.int64)  # tensors on the histogram path
        self.glob_n = np.zeros(w, dtype=np.int64)
        self.glob_sum = np.zeros(w)
        self.glob_above = np.zeros((w, k), dtype=np.int64)
        self.pending = np.zeros(w, dtype=np.int64)  # counts in the int32 slots not yet folded
        self.dirty = False
        self.no_hist = np.zeros((self.slots, w, 0), dtype=np.int32)
        self.no_out = np.zeros((w, 0))
        self.sums = np.zeros((self.slots, w))
        self.cnts = np.zeros((self.slots, w), dtype=np.int64)
        self.above = np.zeros((self.slots, w, k), dtype=np.int64)
        self.bad = np.zeros(self.slots, dtype=np.int64)

    def start_tensor(self) -> None:
        self.sums[:] = 0
        self.cnts[:] = 0
        self.above[:] = 0

    def add(self, block: torch.Tensor, out: np.ndarray | None) -> bool:
        """Accumulate a block [T, C] (bf16 read as stored, fp16 widened to float32 first); `out`
        [W, C] receives every R² (small tensors: exact medians and no histogram), else the
        per-tensor histograms count them (at most 2**31 - 1 per bin).
        Returns False when the block holds NaN/Inf (the statistics are then unusable)."""
        x, bf16 = kernel_input(block)
        if out is None:
            self.dirty = True
        self.bad[:] = 0
        threads = nb.get_num_threads()
        if threads > self.slots:  # thread ids index the slots
            nb.set_num_threads(self.slots)
        try:
            with nb.parallel_chunksize(1):
                r2_accumulate(x, bf16, self.steps, self.ends, self.xbar, self.sxx, self.thresholds,
                              self.min_abs_change, self.no_hist if out is not None else self.hist, self.sums,
                              self.cnts, self.above, self.no_out if out is None else out, self.bad)
        finally:
            nb.set_num_threads(threads)
        return not self.bad.any()

    def tensor_counts(self):
        """(n [W], sum [W], above [W, K]) of the current tensor."""
        return self.cnts.sum(0), self.sums.sum(0), self.above.sum(0)

    def finish_tensor(self) -> float:
        """Fold the current (histogram-path) tensor into the global statistics; returns its
        median R² over the largest window (bin midpoint: error <= half a bin). The smaller
        windows' histograms are folded only when their int32 counts could overflow (and at
        `finish`): per-tensor medians are reported for the largest window only."""
        n, tot, above = self.tensor_counts()
        self.glob_n += n
        self.glob_sum += tot
        self.glob_above += above
        self.pending += n
        bins = np.full((len(n), 2), -1, dtype=np.int64)
        if self.dirty:
            w_from = 0 if self.pending[:-1].max(initial=0) > (1 << 30) else len(n) - 1
            fold_tensor(self.hist, self.glob, n, bins, w_from)
            self.pending[w_from:] = 0
            self.dirty = bool(self.pending.any())
        return float((bins[-1].astype(np.float64) + 0.5).mean() / self.hist.shape[2]) if n[-1] else float("nan")

    def finish(self) -> None:
        """Fold whatever the smaller windows still hold (end of the pass)."""
        if self.dirty:
            fold_tensor(self.hist, self.glob, np.zeros(len(self.ends), dtype=np.int64),
                        np.zeros((len(self.ends), 2), dtype=np.int64), 0)
            self.pending[:] = 0
            self.dirty = False


def kernel_input(block: torch.Tensor) -> tuple[np.ndarray, bool]:
    """(2-D C-contiguous array, is-bf16-bits) for `r2_accumulate`: float32/float64 as they are,
    bfloat16 as its uint16 bits (no copy), anything else widened to float32."""
    block = block.reshape(block.shape[0], -1)
    if block.dtype == torch.bfloat16:
        return block.contiguous().view(torch.int16).numpy().view(np.uint16), True
    if block.dtype not in (torch.float32, torch.float64):
        block = block.float()
    return block.contiguous().numpy(), False


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the kernels for the block types the
    streaming pass feeds them (bf16 bits, float32, float64)."""
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        ks = KernelStats([0, 1, 2], [3], (0.5,), 0.0, 8)
        ks.start_tensor()
        ks.add(torch.arange(6, dtype=dtype).reshape(3, 2), None)
        ks.add(torch.arange(6, dtype=dtype).reshape(3, 2), np.empty((1, 2)))
        ks.finish_tensor()
        ks.finish()
