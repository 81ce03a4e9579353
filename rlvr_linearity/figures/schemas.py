"""The JSON inputs of `rlvr figures`, one TypedDict per file.

These document what each figure reads. Keys marked NotRequired may be absent: the figure
that needs them is then listed as missing in `figures/index.json`, never drawn from guesses.
Files are found by name anywhere under the given results directories (symlinked pipeline
stages included); see `FILE_KINDS`.
"""

from __future__ import annotations

from typing import NotRequired, Optional, TypedDict

# file name -> kind, as discovered under the results directories
FILE_KINDS = {
    "weights_r2.json": "weights",
    "logprob_r2.json": "logprobs",
    "lowrank.json": "lowrank",
    "extrapolation.json": "extrapolation",
    "results.json": "results",
    "metrics.json": "metrics",
    "robustness.json": "robustness",
    "regrounding.json": "regrounding",
    "logits_extrapolation.json": "logits",
    "token_snr.json": "token_snr",
    "decomposition.json": "decomposition",
    "activation_r2.json": "activations",
}


class TensorR2(TypedDict):
    name: str
    numel: int
    n_defined: int
    mean: Optional[float]
    median: Optional[float]
    module: NotRequired[str]
    layer: NotRequired[Optional[int]]


class Heatmap(TypedDict):
    """Mean R² per (module type, layer): `mean[i][j]` for `modules[i]`, `layers[j]`; `side`
    holds the non-layer tensors (embedding, final norm, lm_head)."""

    modules: list[str]
    layers: list[int]
    mean: list[list[Optional[float]]]
    side: dict[str, Optional[float]]


class WeightsR2(TypedDict):
    """`linearity/weights_r2.json` (`rlvr linearity`). Contract keys plus the extras the figures use:
    `histogram` (100 equal bins of [0, 1], counts of every defined weight) for the histogram and
    the robustness box plot, `heatmap` for the module x layer map, `examples` for trajectories."""

    steps: list[int]
    n_weights: int
    n_defined: int
    mean: float
    median: float
    frac_above: dict[str, float]  # "0.5", "0.7", "0.9"
    per_tensor: list[TensorR2]
    histogram: NotRequired[list[int]]
    heatmap: NotRequired[Heatmap]
    examples: NotRequired[list[dict]]  # {tensor, index, steps, values, r2}
    windows: NotRequired[dict[str, dict]]  # label -> same keys, per prefix window


class TokenStats(TypedDict):
    n_tokens: int
    median: NotRequired[float]
    frac_above: NotRequired[dict[str, float]]
    r2_values: list[float]  # every eligible token's R²


class LogprobR2(TypedDict):
    """`linearity/logprob_r2.json`: per-token R² of log-probs (`logprob`) and raw logits
    (`logit`) over `steps`; `examples` = [{token, r2, logprobs: [per step]}]."""

    steps: list[int]
    logprob: TokenStats
    logit: NotRequired[TokenStats]
    examples: NotRequired[list[dict]]


class LowRank(TypedDict):
    """`linearity/lowrank.json`: `windows[label].per_tensor[name][str(rank)]` = explained
    variance; `coefficients.model` / `coefficients.per_tensor[name]` = {steps, coefficients,
    n_history, slope, intercept, r2_in_sample, r2_out_of_sample} (rank-1 coefficient vs step)."""

    steps: list[int]
    ranks: list[int]
    windows: dict[str, dict]
    coefficients: NotRequired[dict]


class StepAccuracy(TypedDict):
    step: int
    accuracy: Optional[float]


class RelexRow(TypedDict):
    """One RELEX prediction; `rank` and `fit` present in ablation sweeps (default 1, "linear")."""

    history: int
    target: int
    accuracy: Optional[float]
    rank: NotRequired[int]
    fit: NotRequired[str]


class WeightRow(TypedDict):
    base_step: int
    second_step: int
    target: int
    accuracy: Optional[float]


class ReconstructionRow(TypedDict):
    """A rank-r reconstruction of trained step `step` (RELEX Finding 1; pipeline stage reconstruct)."""

    step: int
    rank: int
    history: Optional[int]
    accuracy: Optional[float]
    weight_error: NotRequired[dict]  # {rel_l2, cosine, n_tensors} against the trained step


class PipelineResults(TypedDict):
    """`results.json` of `rlvr pipeline` (contract). Several results.json of one benchmark (a
    sweep's jobs) are merged: rows are concatenated, the RLVR curve is deduplicated by step."""

    benchmark: NotRequired[str]
    base: StepAccuracy
    rlvr: list[StepAccuracy]
    relex: list[RelexRow]
    weight_extrapolation: list[WeightRow]
    logits_extrapolation: NotRequired[list[dict]]  # {base_step, second_step, target, alpha, accuracy}
    reconstruction: NotRequired[list[ReconstructionRow]]
    linearity: NotRequired[dict]  # median_r2, frac_above_0.7, coefficient_history, coefficient_r2_out_of_sample, ...
    train: NotRequired[dict]  # {lr, steps, seed} when the pipeline trained the trajectory (figure lr_sweep)


class BenchmarkPair(TypedDict):
    benchmark: str  # e.g. "AIME24 avg@64"
    std_rl: float  # standard RL checkpoint
    ours: float  # logits extrapolation


class LogitsTable(TypedDict):
    """`logits_extrapolation.json` (LIN Table 1): per benchmark the standard RL score and the
    logits-extrapolated score; optional run metadata (`base_step`, `second_step`, `target`, `alpha`)."""

    rows: list[BenchmarkPair]
    alpha: NotRequired[float]


class RegroundingPoint(TypedDict):
    real_steps: int  # RL steps actually trained so far
    virtual_step: NotRequired[int]  # step the model stands for (real + extrapolated)
    accuracy: dict[str, float]  # benchmark -> accuracy


class RegroundingMethod(TypedDict):
    label: NotRequired[str]  # default "(M,N)"
    M: int  # real RL steps per segment
    N: int  # extrapolated steps per segment (alpha = (M + N) / M)
    points: list[RegroundingPoint]


class Regrounding(TypedDict):
    """`regrounding.json` (LIN Table 2 and Fig. 6, docs/methods.md §B4): the standard RL run and each
    re-grounding configuration (M, N) evaluated after a number of real RL steps. `benchmark`
    names the one whose thresholds define the speed-up (default: the first one)."""

    benchmark: NotRequired[str]
    std_rl: list[RegroundingPoint]
    methods: list[RegroundingMethod]


class RobustnessSetting(TypedDict):
    label: str
    weights: NotRequired[str]  # path to a weights_r2.json (relative to robustness.json)
    logprobs: NotRequired[str]  # path to a logprob_r2.json


class Robustness(TypedDict):
    """`robustness.json` (LIN Fig. 2): the linearity results of several training settings."""

    settings: list[RobustnessSetting]
