"""Fused CPU kernel for predictions W_0 + Σ_t w_kt (W_t − W_0) of several targets at once from one
read of a block (numba): the deltas formed chunk by chunk in L1, four targets over four steps
per pass, float32."""

from __future__ import annotations

import numpy as np
import torch

from .common import GRAM_CHUNK, GRAM_SPAN, _fill_deltas, fused_input, nb

if nb is not None:

    @nb.njit(parallel=True, cache=True, nogil=True, fastmath={"nsz", "contract"})
    def predict_accumulate(x, bf16, weights, out):  # pragma: no cover - compiled
        """out[k] = x[0] + Σ_t weights[k, t] (x[1 + t] − x[0]) in float32 for x [1 + T, n] (bf16
        bits as uint16, or float32) and weights [K, T'] float32 (T' >= T a multiple of 4, zero
        beyond T): every target's prediction from one read of the block, the deltas formed chunk
        by chunk in L1, the sums of four targets over four steps per pass (each delta loaded
        once for four targets), the base added last."""
        n_rows, n = x.shape
        n_out, padded = weights.shape
        xf = x.reshape(-1)
        of = out.reshape(-1)
        span = GRAM_CHUNK * GRAM_SPAN
        for s in nb.prange((n + span - 1) // span):
            d = np.zeros((padded, GRAM_CHUNK), dtype=np.float32)
            base = np.empty(GRAM_CHUNK, dtype=np.float32)
            acc = np.empty((4, GRAM_CHUNK), dtype=np.float32)
            for j0 in range(s * span, min(n, (s + 1) * span), GRAM_CHUNK):
                m = min(GRAM_CHUNK, n - j0)
                _fill_deltas(xf, bf16, n, j0, m, n_rows - 1, base, d)
                for i0 in range(0, n_out, 4):
                    width = min(4, n_out - i0)
                    acc[:, :m] = 0.0
                    if width == 4:
                        for t in range(0, padded, 4):
                            _predict_tile(weights, i0, t, d, m, acc)
                    else:
                        for i in range(width):
                            a = acc[i]
                            for t in range(0, padded, 4):
                                w0, w1 = weights[i0 + i, t], weights[i0 + i, t + 1]
                                w2, w3 = weights[i0 + i, t + 2], weights[i0 + i, t + 3]
                                for k in range(m):
                                    a[k] += w0 * d[t, k] + w1 * d[t + 1, k] + w2 * d[t + 2, k] + w3 * d[t + 3, k]
                    for i in range(width):
                        o = np.uint64((i0 + i) * n + j0)
                        for k in range(m):
                            of[o + np.uint64(k)] = acc[i, k] + base[k]

    @nb.njit(inline="always")
    def _predict_tile(weights, i0, t, d, m, acc):  # pragma: no cover - compiled
        """acc[i, :m] += Σ_{u < 4} weights[i0 + i, t + u] d[t + u, :m] for four targets i."""
        w00, w01, w02, w03 = weights[i0, t], weights[i0, t + 1], weights[i0, t + 2], weights[i0, t + 3]
        w10, w11, w12, w13 = weights[i0 + 1, t], weights[i0 + 1, t + 1], weights[i0 + 1, t + 2], weights[i0 + 1, t + 3]
        w20, w21, w22, w23 = weights[i0 + 2, t], weights[i0 + 2, t + 1], weights[i0 + 2, t + 2], weights[i0 + 2, t + 3]
        w30, w31, w32, w33 = weights[i0 + 3, t], weights[i0 + 3, t + 1], weights[i0 + 3, t + 2], weights[i0 + 3, t + 3]
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for k in range(m):
            d0, d1, d2, d3 = d[t, k], d[t + 1, k], d[t + 2, k], d[t + 3, k]
            a0[k] += w00 * d0 + w01 * d1 + w02 * d2 + w03 * d3
            a1[k] += w10 * d0 + w11 * d1 + w12 * d2 + w13 * d3
            a2[k] += w20 * d0 + w21 * d1 + w22 * d2 + w23 * d3
            a3[k] += w30 * d0 + w31 * d1 + w32 * d2 + w33 * d3


def predict_block(block: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> bool:
    """out [K, n] = W_0 + weights [K, T] @ D for a block [1 + T, ...] stored as bf16, fp16 or
    float32, by `predict_accumulate`; False (nothing done) without numba or for float64."""
    fused = fused_input(block)
    if fused is None:
        return False
    x, bf16, t, padded = fused
    w = np.zeros((weights.shape[0], padded), dtype=np.float32)
    w[:, :t] = weights.numpy()
    predict_accumulate(x, bf16, w, out.numpy())
    return True
