"""Generation engines behind one interface: `engine.generate(prompts, sampling) -> list[list[str]]`
(n completions per prompt, prompt text excluded). `make_engine(cfg, model)` picks one by `engine.name`."""

from __future__ import annotations

from rlvr_linearity.errors import ConfigError


def sampling_get(sampling, key, default=None):
    v = sampling.get(key, default) if hasattr(sampling, "get") else getattr(sampling, key, default)
    return default if v is None else v


def make_engine(cfg, model: str | None):
    name = cfg.engine.get("name", "hf")
    if name == "hf":
        from rlvr_linearity.evaluate.engines.hf import HFEngine

        return HFEngine(model, cfg.engine)
    if name == "vllm":
        from rlvr_linearity.evaluate.engines.vllm import VLLMEngine

        return VLLMEngine(model, cfg.engine)
    if name == "logits_extrapolation":
        from rlvr_linearity.extrapolate.logits import LogitsExtrapolationEngine

        return LogitsExtrapolationEngine.from_config(cfg)
    raise ConfigError(f"engine.name: unknown engine {name!r} (use hf, vllm or logits_extrapolation)")
