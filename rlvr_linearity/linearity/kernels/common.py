"""What the fused kernels share: numba (optional, on the workqueue threading layer), bf16 bits
widened exactly in registers, the block-to-array conversion, and the delta formation that the
Gram and prediction kernels run in L1."""

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


def kernel_input(block: torch.Tensor) -> tuple[np.ndarray, bool]:
    """(2-D C-contiguous array, is-bf16-bits) for `r2_accumulate`: float32/float64 as they are,
    bfloat16 as its uint16 bits (no copy), anything else widened to float32."""
    block = block.reshape(block.shape[0], -1)
    if block.dtype == torch.bfloat16:
        return block.contiguous().view(torch.int16).numpy().view(np.uint16), True
    if block.dtype not in (torch.float32, torch.float64):
        block = block.float()
    return block.contiguous().numpy(), False


GRAM_CHUNK = 512  # columns whose deltas are formed in a thread's scratch and multiplied from L1
GRAM_SPAN = 8  # chunks per hand-out (and per float64 partial Gram)

if nb is not None:

    @nb.njit(inline="always")
    def _fill_deltas(xf, bf16, n, j0, m, t_rows, base, d):  # pragma: no cover - compiled
        """base[:m] = row 0 and d[t, :m] = row 1 + t minus row 0 (float32) of columns j0:j0 + m of
        the flat block xf [1 + t_rows, n] (bf16 bits or float32)."""
        at = np.uint64(j0)  # unsigned: no negative-index wraparound (it made loads scalar inserts)
        if bf16:
            for k in range(m):
                base[k] = _bf16(xf[at + np.uint64(k)])
            for t in range(t_rows):
                at = np.uint64((t + 1) * n + j0)
                for k in range(m):
                    d[t, k] = _bf16(xf[at + np.uint64(k)]) - base[k]
        else:
            for k in range(m):
                base[k] = xf[at + np.uint64(k)]
            for t in range(t_rows):
                at = np.uint64((t + 1) * n + j0)
                for k in range(m):
                    d[t, k] = xf[at + np.uint64(k)] - base[k]


def fused_input(block: torch.Tensor):
    """(x, is-bf16, T, T rounded up to the 4 x 4 tiles) of a block [1 + T, ...] for the fused
    Gram and prediction kernels (bf16 bits as stored, fp16 widened exactly to float32), or None
    without numba or for float64 (its deltas are differenced before rounding, in torch)."""
    b = block.reshape(block.shape[0], -1)
    if nb is None or b.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return None
    x, bf16 = kernel_input(b)
    t = b.shape[0] - 1
    return x, bf16, t, -(-t // 4) * 4

