"""Generation and teacher-forcing engines behind one interface (`engines.base.Engine`), chosen
by `engine.name` from a registry; an engine's module is imported only when it is used (vLLM is
GPU-only). `engine.data_parallel_size` > 1 runs the engine in that many processes
(`engines.parallel`)."""

from __future__ import annotations

import importlib

from rlvr_linearity.errors import ConfigError

ENGINES = {
    "hf": "rlvr_linearity.evaluate.engines.hf:HFEngine",
    "vllm": "rlvr_linearity.evaluate.engines.vllm:VLLMEngine",
    "logits_extrapolation": "rlvr_linearity.evaluate.engines.logits:LogitsExtrapolationEngine",
}


def make_engine(cfg, model: str | None):
    """The engine `cfg.engine.name` for `model` (logits extrapolation takes its pair from cfg)."""
    name = cfg.engine.name
    if name not in ENGINES:
        raise ConfigError(f"engine.name: unknown engine {name!r} (use {', '.join(ENGINES)})")
    if (cfg.engine.get("data_parallel_size") or 1) > 1:  # the pipeline's logits override is untyped
        from rlvr_linearity.evaluate.engines.parallel import DataParallelEngine

        return DataParallelEngine.from_config(cfg, model)
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg, model)
