"""Fused CPU kernel for the Gram matrix D Dᵀ of a block's deltas against its base row (numba):
the deltas are formed chunk by chunk in a thread's L1 scratch and multiplied in 4 x 4 register
tiles, float32 sums over at most GRAM_CHUNK columns, then float64."""

from __future__ import annotations

import numpy as np
import torch

from .common import GRAM_CHUNK, GRAM_SPAN, _fill_deltas, fused_input, nb

if nb is not None:

    @nb.njit(nogil=True, cache=True, fastmath={"nsz", "contract", "reassoc"})
    def _gram_chunk(d, rows, m, acc):  # pragma: no cover - compiled
        """acc[i, j] += Σ_k d[i, k] d[j, k] (k < m) for the upper triangle in 4 x 4 tiles of the
        scratch d [rows, GRAM_CHUNK] float32 (rows a multiple of 4, padding rows zero); each tile's
        16 sums stay in vector registers over the chunk (float32: at most GRAM_CHUNK terms), then
        go to the float64 acc. Its own function so that only these sums are reassociated."""
        for i in range(0, rows, 4):
            for j in range(i, rows, 4):
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
                for k in range(m):
                    a0, a1, a2, a3 = d[i, k], d[i + 1, k], d[i + 2, k], d[i + 3, k]
                    b0, b1, b2, b3 = d[j, k], d[j + 1, k], d[j + 2, k], d[j + 3, k]
                    s00 += a0 * b0
                    s01 += a0 * b1
                    s02 += a0 * b2
                    s03 += a0 * b3
                    s10 += a1 * b0
                    s11 += a1 * b1
                    s12 += a1 * b2
                    s13 += a1 * b3
                    s20 += a2 * b0
                    s21 += a2 * b1
                    s22 += a2 * b2
                    s23 += a2 * b3
                    s30 += a3 * b0
                    s31 += a3 * b1
                    s32 += a3 * b2
                    s33 += a3 * b3
                acc[i, j] += s00
                acc[i, j + 1] += s01
                acc[i, j + 2] += s02
                acc[i, j + 3] += s03
                acc[i + 1, j] += s10
                acc[i + 1, j + 1] += s11
                acc[i + 1, j + 2] += s12
                acc[i + 1, j + 3] += s13
                acc[i + 2, j] += s20
                acc[i + 2, j + 1] += s21
                acc[i + 2, j + 2] += s22
                acc[i + 2, j + 3] += s23
                acc[i + 3, j] += s30
                acc[i + 3, j + 1] += s31
                acc[i + 3, j + 2] += s32
                acc[i + 3, j + 3] += s33

    @nb.njit(parallel=True, cache=True, nogil=True, fastmath={"nsz", "contract"})
    def gram_accumulate(x, bf16, parts):  # pragma: no cover - compiled
        """parts[s] = the upper 4 x 4 tiles of D Dᵀ over span s of the columns of x [1 + T, n]
        (row 0 the base; bf16 bits as uint16, or float32), D = rows 1.. minus row 0, differenced
        in float32 (exact for bf16 neighbours). One float64 partial per span, whichever thread
        takes it: the caller sums them in span order, so the result does not depend on the
        schedule."""
        n_rows, n = x.shape
        t_rows = n_rows - 1
        padded = parts.shape[1]
        xf = x.reshape(-1)
        span = GRAM_CHUNK * GRAM_SPAN
        for s in nb.prange((n + span - 1) // span):
            d = np.zeros((padded, GRAM_CHUNK), dtype=np.float32)
            base = np.empty(GRAM_CHUNK, dtype=np.float32)
            acc = parts[s]
            acc[:] = 0.0
            for j0 in range(s * span, min(n, (s + 1) * span), GRAM_CHUNK):
                m = min(GRAM_CHUNK, n - j0)
                _fill_deltas(xf, bf16, n, j0, m, t_rows, base, d)
                _gram_chunk(d, padded, m, acc)


def gram_block(block: torch.Tensor) -> np.ndarray | None:
    """D Dᵀ [T, T] float64 of a block [1 + T, ...] (row 0 the base) stored as bf16, fp16 or
    float32, by `gram_accumulate`; None without numba or for float64 (the caller's torch path)."""
    fused = fused_input(block)
    if fused is None:
        return None
    x, bf16, t, padded = fused
    parts = np.empty((-(-x.shape[1] // (GRAM_CHUNK * GRAM_SPAN)), padded, padded))
    gram_accumulate(x, bf16, parts)
    g = parts.sum(0)[:t, :t]
    return np.triu(g) + np.triu(g, 1).T
