"""Typed schemas for the config sections whose keys are the contract.

Registered in Hydra's ConfigStore and used as the base of the matching group files, so a typo
in an experiment preset (`extrapolate.histroy: 75`) or a wrong type fails at composition
instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrajectorySchema:
    path: Optional[str] = None
    base: Optional[str] = None
    hub_repo: Optional[str] = None
    hub_revision_prefix: str = "step_"
    steps: Optional[list[int]] = None
    max_step: Optional[int] = None
    check_finite: bool = True
    trust_remote_code: bool = False
    cache_dir: Optional[str] = None


@dataclass
class SamplingSchema:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    seed: int = 42


@dataclass
class RelexSchema:
    method: str = "relex"
    targets: list[int] = field(default_factory=list)
    history: Optional[int] = None
    window: Optional[list[int]] = None
    last: Optional[int] = None
    windows: Optional[list[Any]] = None
    rank: int = 1
    fit: str = "linear"
    degree: int = 2
    mode: str = "extrapolate"
    dtype: Optional[str] = None
    cache: bool = True
    gram_steps: str = "window"  # window | all: Gram pass over every selected step (one pass per sweep)
    memory_budget: int = 1 << 28  # bytes of float32 deltas kept per tensor to write from the first read
    # method=weight on this group (the contract's `extrapolate.method=weight extrapolate.second_step=B`)
    base_step: int = 0
    second_step: Optional[int] = None
    extrapolate_norms: bool = False


@dataclass
class WeightExtrapolationSchema:
    method: str = "weight"
    targets: list[int] = field(default_factory=list)
    base_step: int = 0
    second_step: Any = "???"
    extrapolate_norms: bool = False
    dtype: Optional[str] = None


@dataclass
class RegroundingSchema:
    """`regrounding.*` of `rlvr pipeline experiment=regrounding` (LIN periodic re-grounding)."""

    M: int = 10  # real RL steps per segment
    N: int = 10  # extrapolated steps per segment: alpha = (M + N) / M
    iterations: int = 3  # segments; real steps = M * iterations
    optimizer: str = "keep"  # keep: carry AdamW/scheduler/RNG state across segments | reset: fresh (LIN)
    data: str = "continue"  # continue: next prompts of the seeded order | replay: restart it (LIN as released)
    baseline: bool = True  # plain GRPO with the same real steps and prompt order
    eval_every: int = 5  # evaluate every k real steps (both arms) and at every segment boundary
    extrapolate_norms: bool = False  # LIN copies norm weights from the segment's end model
    dtype: Optional[str] = None  # extrapolated model dtype (null: the start model's)
    thresholds: Optional[list[float]] = None  # Fig. 6 accuracy thresholds (null: figures.fig6_thresholds / default)
    compare: list[Any] = field(default_factory=list)  # more configs: [{M, N, iterations?, optimizer?, data?, label?}]


def register_configs() -> None:
    from omegaconf import OmegaConf

    # `${rlvr_or:A,B}`: A unless it is null/empty, else B (hydra.run.dir follows output_dir).
    if not OmegaConf.has_resolver("rlvr_or"):
        OmegaConf.register_new_resolver("rlvr_or", lambda value, default: default if value in (None, "") else value)
    cs = ConfigStore.instance()
    cs.store(group="trajectory", name="schema", node=TrajectorySchema)
    cs.store(group="extrapolate", name="relex_schema", node=RelexSchema)
    cs.store(group="extrapolate", name="weight_schema", node=WeightExtrapolationSchema)
    cs.store(name="sampling_schema", node=SamplingSchema, package="sampling")
    cs.store(name="regrounding_schema", node=RegroundingSchema, package="regrounding")
