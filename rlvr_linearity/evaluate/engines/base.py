"""The one model interface every engine implements (lighteval's `LightevalModel` in spirit):
`generate` for sampling, `score` for teacher forcing.

Prompts are texts that already carry their special tokens (the chat template writes the BOS,
`evaluate.prompts` adds it to raw templates when the tokenizer expects one), so every engine
tokenises them once with `add_special_tokens=False` (`prompt_ids`): no second BOS, and the
linearity probes teacher-force exactly the ids the engine generated from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

# A generation chunk shows a progress bar only once it has run this long (quiet for short runs).
PROGRESS_DELAY_S = 10.0


def sampling_get(sampling, key, default=None):
    """A sampling key from a config node or a plain object; None counts as unset."""
    v = sampling.get(key, default) if hasattr(sampling, "get") else getattr(sampling, key, default)
    return default if v is None else v


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt text, its special tokens taken from the text only."""
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


def progress(iterable, desc: str, **kw):
    """A tqdm bar that appears only after PROGRESS_DELAY_S and only on a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, delay=PROGRESS_DELAY_S, leave=False, disable=None, **kw)


class Engine(ABC):
    """`generate(prompts, sampling)` returns, per prompt, its `sampling.n` completions without the
    prompt text; `score(seqs, firsts)` the teacher-forced log-probs and raw logits of tokens
    `firsts[i]:` of each token sequence."""

    tokenizer = None

    @classmethod
    @abstractmethod
    def from_config(cls, cfg, model: str | None) -> "Engine":
        """Build from the composed config (`cfg.engine`, and the trajectory where it needs one)."""

    @abstractmethod
    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        ...

    @abstractmethod
    def score(self, seqs: list[list[int]], firsts: list[int], chunk: int = 256) -> list[tuple]:
        """Per sequence (log-probs, raw logits) as float64 numpy arrays of length len - first."""

    def generate_many(self, calls: Iterable[tuple[list[str], dict]]) -> Iterator[list[list[str]]]:
        """`generate` of each (prompts, sampling) in turn; data parallelism runs calls concurrently."""
        for prompts, sampling in calls:
            yield self.generate(prompts, sampling)
