"""Fused CPU kernel for per-weight R² (numba): one pass over a block of stored values computes,
per column, cumulative float64 sums of the deltas against the base, snapshots them at every
prefix-window end, and adds the window's R² straight into the statistics (count, sum, counts
above thresholds, 2**19-bin histogram). The histogram bins are queued per thread and counted
in batches, one window at a time, into uint8 counters that spill into int32 ones every 256
counts: one 512 KiB array hot at a time, which stays in a core's L2, where interleaving the
windows' scattered increments missed it. Windows therefore cost little extra and nothing of
size [windows, columns] is materialised. The torch path (`linearity/r2.py`) is the reference and the
CUDA path; both are tested against numpy.

Optional: without numba the torch path runs.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import _bf16, kernel_input, nb

TILE = 256
QUEUE = 1 << 15  # histogram bins queued per thread and window before they are counted
SPILL_LIMIT = 1 << 38  # counts a window's slots may hold unfolded: 256 * int32 spill counters hold 2**39
PARALLEL_TILES = 8  # tiles per hand-out of the dynamic schedule

if nb is not None:

    @nb.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"nsz", "contract"})
    def r2_accumulate(x, bf16, steps, ends, xbar, sxx, thresholds, min_abs_change, hist, spill, spilled, queue,
                      queued, sums, cnts, above, out, bad):  # pragma: no cover - compiled
        """x [T, C] (base in row 0): float32/float64 values, or with `bf16` the raw bfloat16
        bits as uint16 (widened exactly in here: no conversion pass, half the bytes read);
        ends [W] ascending window lengths; hist [P, W, B] uint8 (size 0 in the last axis to
        skip) and spill [P, W, B] int32: a bin's count is hist + 256 * spill (each uint8 counter
        wraps to 0 on its 256th increment and its spill counter takes it; spilled [P, W] counts
        the spills, so that folding reads a slot's spill counters only when it has some), once
        the bins waiting in queue [P, W, Q] uint32 (queued [P] per slot; bin B = undefined) are
        counted (`count_queued`: here when a queue is full, by the caller before reading the
        histograms); sums [P, W]; cnts [P, W]; above [P, W, K]; out [W, C] float64 (every window's
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
            no_queue = np.empty(TILE, dtype=np.uint32)  # the bins' destination without histograms
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
                        inv_n = 1.0 / ends[w]  # a product in the loop: vector divisions are slow
                        xb = xbar[w]
                        sxx_w = sxx[w]
                        # the bins go straight to this window's queue (n_bins: undefined)
                        bins = queue[p, w] if use_hist else no_queue
                        at0 = np.uint64(queued[p]) if use_hist else np.uint64(0)
                        for k in range(m):  # branch-free: R², or -1 when undefined
                            syy = q[k] - s[k] * s[k] * inv_n
                            sxy = sx[k] - xb * s[k]
                            r2 = min(max(sxy * sxy / (sxx_w * syy), 0.0), 1.0)
                            ok = q[k] > 0.0 and (mx[k] - mn[k] > min_abs_change or not use_range)
                            rr[k] = r2 if ok else -1.0
                            bin_k = min(np.int64(r2 * n_bins), n_bins - 1) if ok else n_bins
                            bins[at0 + np.uint64(k)] = np.uint32(bin_k)
                        cnt, tot = _count_defined(rr, m, thresholds, above[p, w])
                        if use_out:
                            for k in range(m):
                                out[w, j0 + k] = rr[k] if rr[k] >= 0.0 else np.nan
                        sums[p, w] += tot
                        cnts[p, w] += cnt
                        w += 1
                if use_hist:
                    queued[p] += m
                    if queued[p] + TILE > queue.shape[2]:
                        count_queued(hist, spill, spilled, queue, queued, p)

    @nb.njit(nogil=True, cache=True)
    def count_queued(hist, spill, spilled, queue, queued, p):  # pragma: no cover - compiled
        """Count slot p's queued bins into its histograms, window after window, and empty its queue."""
        n_bins = hist.shape[2]
        for w in range(queue.shape[1]):
            hw = hist[p, w]
            sw = spill[p, w]
            qw = queue[p, w]
            wraps = 0
            for i in range(queued[p]):
                b = qw[i]
                if b < n_bins:
                    v = np.uint8(hw[b] + np.uint8(1))
                    hw[b] = v
                    if v == 0:  # wrapped: 256 counts move to the spill counter
                        sw[b] += 1
                        wraps += 1
            spilled[p, w] += wraps
        queued[p] = 0

    @nb.njit(parallel=True, cache=True, nogil=True)
    def count_all_queued(hist, spill, spilled, queue, queued):  # pragma: no cover - compiled
        """`count_queued` for every slot, in parallel (each slot's arrays are its own)."""
        for p in nb.prange(queued.shape[0]):
            count_queued(hist, spill, spilled, queue, queued, p)

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
    def fold_tensor(hist, spill, spilled, glob, counts, n_defined, median_bins,
                    w_from):  # pragma: no cover - compiled
        """Per window from w_from: the tensor's count per bin (into `counts` [B] int64) = the
        slots' uint8 counters [P, W, B] + 256 * their int32 spill counters [P, W, B] (read only
        for slots that spilled), added into the global int64 histograms [W, B]; the slots are
        zeroed; the bins of the tensor's two middle order statistics go to median_bins [W, 2]
        (-1 when there are none). Unit-stride loops over the bins, so they vectorise."""
        n_slots, n_win, n_bins = hist.shape
        for w in range(w_from, n_win):
            counts[:] = 0
            for p in range(n_slots):
                hp = hist[p, w]
                for b in range(n_bins):
                    counts[b] += hp[b]
                hp[:] = 0
                if spilled[p, w]:  # zeroed only where set: untouched pages stay unmapped
                    sp = spill[p, w]
                    for b in range(n_bins):
                        if sp[b]:
                            counts[b] += 256 * np.int64(sp[b])
                            sp[b] = 0
                    spilled[p, w] = 0
            gw = glob[w]
            for b in range(n_bins):
                gw[b] += counts[b]
            n = n_defined[w]
            k1 = (n - 1) // 2
            k2 = n // 2
            median_bins[w, 0] = -1
            median_bins[w, 1] = -1
            seen = 0
            for b in range(n_bins):
                seen += counts[b]
                if median_bins[w, 0] < 0 and seen > k1:
                    median_bins[w, 0] = b
                if seen > k2:
                    median_bins[w, 1] = b
                    break


class KernelStats:
    """State of the fused kernel for one trajectory pass: per-slot (thread) per-window histograms
    of the current tensor (2**19 uint8 counters = 512 KiB plus int32 spill counters in units of
    256, touched once per 256 counts of a bin), folded into int64 global histograms at the end
    of every tensor; exact sums and counts."""

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
        self.hist = np.zeros((self.slots, w, n_bins), dtype=np.uint8)
        self.spill = np.zeros((self.slots, w, n_bins), dtype=np.int32)
        self.spilled = np.zeros((self.slots, w), dtype=np.int64)
        self.counts = np.empty(n_bins, dtype=np.int64)  # scratch of `fold_tensor`
        self.queue = np.empty((self.slots, w, QUEUE if n_bins else 0), dtype=np.uint32)
        self.queued = np.zeros(self.slots, dtype=np.int64)
        self.glob = np.zeros((w, n_bins), dtype=np.int64)  # tensors on the histogram path
        self.glob_n = np.zeros(w, dtype=np.int64)
        self.glob_sum = np.zeros(w)
        self.glob_above = np.zeros((w, k), dtype=np.int64)
        self.pending = np.zeros(w, dtype=np.int64)  # counts in the slots not yet folded
        self.dirty = False
        self.no_hist = np.zeros((self.slots, w, 0), dtype=np.uint8)
        self.no_spill = np.zeros((self.slots, w, 0), dtype=np.int32)
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
        per-tensor histograms count them (at most 256 * (2**31 - 1) per bin).
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
                              self.min_abs_change, self.no_hist if out is not None else self.hist,
                              self.no_spill if out is not None else self.spill, self.spilled, self.queue, self.queued,
                              self.sums, self.cnts, self.above, self.no_out if out is None else out, self.bad)
        finally:
            nb.set_num_threads(threads)
        return not self.bad.any()

    def _count_queued(self) -> None:
        if self.queued.any():
            with nb.parallel_chunksize(1):
                count_all_queued(self.hist, self.spill, self.spilled, self.queue, self.queued)

    def tensor_counts(self):
        """(n [W], sum [W], above [W, K]) of the current tensor."""
        return self.cnts.sum(0), self.sums.sum(0), self.above.sum(0)

    def finish_tensor(self) -> float:
        """Fold the current (histogram-path) tensor into the global statistics; returns its
        median R² over the largest window (bin midpoint: error <= half a bin). The smaller
        windows' histograms are folded only when their spill counters could overflow (and at
        `finish`): per-tensor medians are reported for the largest window only."""
        n, tot, above = self.tensor_counts()
        self.glob_n += n
        self.glob_sum += tot
        self.glob_above += above
        self.pending += n
        bins = np.full((len(n), 2), -1, dtype=np.int64)
        if self.dirty:
            self._count_queued()
            w_from = 0 if self.pending[:-1].max(initial=0) > SPILL_LIMIT else len(n) - 1
            fold_tensor(self.hist, self.spill, self.spilled, self.glob, self.counts, n, bins, w_from)
            self.pending[w_from:] = 0
            self.dirty = bool(self.pending.any())
        return float((bins[-1].astype(np.float64) + 0.5).mean() / self.hist.shape[2]) if n[-1] else float("nan")

    def finish(self) -> None:
        """Fold whatever the smaller windows still hold (end of the pass)."""
        if self.dirty:
            self._count_queued()
            fold_tensor(self.hist, self.spill, self.spilled, self.glob, self.counts,
                        np.zeros(len(self.ends), dtype=np.int64), np.zeros((len(self.ends), 2), dtype=np.int64), 0)
            self.pending[:] = 0
            self.dirty = False
