"""Weight-space error of a predicted checkpoint against the trained one at the same step.

Deltas are taken from the base (step 0): relative L2 = ‖Δpred − Δtrained‖ / ‖Δtrained‖ and the
cosine of Δpred with Δtrained, over every floating tensor both hold, streamed by blocks of rows
(`max_elements` over the three models together), so it costs a read of three checkpoints and a
few blocks of memory whatever the tensor's size (a 32B model's lm_head alone is 3.1 GB in float32).
Each block's sums are float64; the blocks' partial sums are added exactly (`math.fsum`), so the
result keeps float64 accuracy and does not depend on the block size beyond the last digit.
"""

from __future__ import annotations

import math

import torch

from rlvr_linearity.linearity.gram import CHUNK_ELEMENTS
from rlvr_linearity.trajectory.files import ModelFiles
from rlvr_linearity.trajectory.resources import torch_threads
from rlvr_linearity.trajectory.streaming import rows_per_block


def prediction_error(base: ModelFiles, trained: ModelFiles, predicted: ModelFiles,
                     max_elements: int = CHUNK_ELEMENTS) -> dict:
    """{"rel_l2", "cosine", "n_tensors"} of predicted vs trained deltas from `base`."""
    parts: dict[str, list[float]] = {"diff2": [], "true2": [], "pred2": [], "dot": []}
    common = set(predicted.tensor_names) & set(base.tensor_names)
    names = [n for n in trained.tensor_names if n in common and trained.dtype(n).is_floating_point]
    with torch_threads(1):  # memory-bound block arithmetic: no OpenMP spin-waiting on a shared CPU
        for name in names:
            _add_tensor(parts, name, base, trained, predicted, max_elements)
    diff2, true2, pred2, dot = (math.fsum(parts[k]) for k in ("diff2", "true2", "pred2", "dot"))
    denom = math.sqrt(true2 * pred2)
    return {"rel_l2": math.sqrt(diff2 / true2) if true2 > 0 else None,
            "cosine": dot / denom if denom > 0 else None, "n_tensors": len(names)}


def _add_tensor(parts: dict[str, list[float]], name: str, base, trained, predicted, max_elements: int) -> None:
    """Append the float64 sums of each block of rows of `name` to `parts`."""
    shape = base.shape(name)
    rows = shape[0] if shape else 1
    per = rows_per_block(shape, 3, max_elements)
    for start in range(0, rows, per):
        stop = min(rows, start + per)
        b = base.read_rows(name, start, stop).double()
        dt = trained.read_rows(name, start, stop).double().sub_(b)
        dp = predicted.read_rows(name, start, stop).double().sub_(b)
        parts["true2"].append(float(torch.sum(dt * dt)))
        parts["pred2"].append(float(torch.sum(dp * dp)))
        parts["dot"].append(float(torch.sum(dp * dt)))
        parts["diff2"].append(float(torch.sum(dp.sub_(dt).square_())))
