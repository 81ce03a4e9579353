"""Weight-space error of a predicted checkpoint against the trained one at the same step.

Deltas are taken from the base (step 0): relative L2 = ‖Δpred − Δtrained‖ / ‖Δtrained‖ and the
cosine of Δpred with Δtrained, over every floating tensor both hold, streamed one tensor at a
time (float64 sums), so it costs a read of three checkpoints and no more memory than a tensor.
"""

from __future__ import annotations

import math

import torch

from rlvr_linearity.trajectory.files import ModelFiles


def prediction_error(base: ModelFiles, trained: ModelFiles, predicted: ModelFiles) -> dict:
    """{"rel_l2", "cosine", "n_tensors"} of predicted vs trained deltas from `base`."""
    diff2 = true2 = pred2 = dot = 0.0
    common = set(predicted.tensor_names) & set(base.tensor_names)
    names = [n for n in trained.tensor_names if n in common and trained.dtype(n).is_floating_point]
    for name in names:
        b = base.read(name).double()
        dt = trained.read(name).double() - b
        dp = predicted.read(name).double() - b
        diff2 += float(torch.sum((dp - dt) ** 2))
        true2 += float(torch.sum(dt * dt))
        pred2 += float(torch.sum(dp * dp))
        dot += float(torch.sum(dp * dt))
    denom = math.sqrt(true2 * pred2)
    return {"rel_l2": math.sqrt(diff2 / true2) if true2 > 0 else None,
            "cosine": dot / denom if denom > 0 else None, "n_tensors": len(names)}
