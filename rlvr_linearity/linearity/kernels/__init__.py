"""The fused numba kernels, one concern per module: `r2` (per-weight R² statistics), `gram` (Gram
matrices of deltas), `predict` (weighted sums of deltas); `common` holds their shared input
handling. Optional: without numba the torch paths run."""

from __future__ import annotations


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the kernels for the block types the
    streaming passes feed them (bf16 bits, float32, float64)."""
    import numpy as np
    import torch

    from . import gram, predict, r2

    for dtype in (torch.bfloat16, torch.float32):
        gram.gram_block(torch.ones(3, 5, dtype=dtype))
        predict.predict_block(torch.ones(3, 5, dtype=dtype), torch.ones(1, 2), torch.empty(1, 5))
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        ks = r2.KernelStats([0, 1, 2], [3], (0.5,), 0.0, 8)
        ks.start_tensor()
        ks.add(torch.arange(6, dtype=dtype).reshape(3, 2), None)
        ks.add(torch.arange(6, dtype=dtype).reshape(3, 2), np.empty((1, 2)))
        ks.finish_tensor()
        ks.finish()
