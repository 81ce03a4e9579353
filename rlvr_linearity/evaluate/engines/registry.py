"""The engines by name (`engine.name`); an engine's module is imported only when it is used
(vLLM is GPU-only)."""

from __future__ import annotations

import importlib

from rlvr_linearity.errors import ConfigError

ENGINES = {
    "hf": "rlvr_linearity.evaluate.engines.hf:HFEngine",
    "vllm": "rlvr_linearity.evaluate.engines.vllm:VLLMEngine",
    "logits_extrapolation": "rlvr_linearity.evaluate.engines.logits:LogitsExtrapolationEngine",
}


def build_engine(cfg, model: str | None):
    """The engine `cfg.engine.name` for `model`, in this process."""
    name = cfg.engine.name
    if name not in ENGINES:
        raise ConfigError(f"engine.name: unknown engine {name!r} (use {', '.join(ENGINES)})")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg, model)
