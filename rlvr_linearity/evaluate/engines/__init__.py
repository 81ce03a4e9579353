"""Generation and teacher-forcing engines behind one interface (`engines.base.Engine`), chosen
by `engine.name` from a registry (`engines.registry`). `engine.data_parallel_size` > 1 runs the
engine in that many processes (`engines.parallel`)."""

from __future__ import annotations

from rlvr_linearity.evaluate.engines.parallel import DataParallelEngine
from rlvr_linearity.evaluate.engines.registry import ENGINES, build_engine

__all__ = ["ENGINES", "make_engine"]


def make_engine(cfg, model: str | None):
    """The engine for `model` (logits extrapolation takes its pair from cfg), data parallel when asked."""
    if cfg.engine.data_parallel_size > 1:
        return DataParallelEngine.from_config(cfg, model)
    return build_engine(cfg, model)
