"""The one model interface every engine implements (lighteval's `LightevalModel` in spirit)."""

from __future__ import annotations

from abc import ABC, abstractmethod


def sampling_get(sampling, key, default=None):
    """A sampling key from a config node or a plain object; None counts as unset."""
    v = sampling.get(key, default) if hasattr(sampling, "get") else getattr(sampling, key, default)
    return default if v is None else v


class Engine(ABC):
    """Generates completions for prompts: `generate(prompts, sampling)` returns, per prompt, its
    `sampling.n` completions without the prompt text."""

    @classmethod
    @abstractmethod
    def from_config(cls, cfg, model: str | None) -> "Engine":
        """Build from the composed config (`cfg.engine`, and the trajectory where it needs one)."""

    @abstractmethod
    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        ...
