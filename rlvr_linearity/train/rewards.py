"""GRPO rewards for TRL: 1.0 when the last `\\boxed{}` of a completion matches the gold answer.

The TRL reward grades through the project's math grader
(`rlvr_linearity.evaluate.grading.grade_math`: math-verify in a pebble process pool with
timeouts). Until that module exists (or when `exact=True`), an exact integer match of the last
`\\boxed{}` is used: the same verdict on this task's integer answers.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_integer_match(responses: list[str], golds: list[str]) -> list[bool]:
    """Exact match of the last `\\boxed{...}` content against the gold (spaces ignored)."""
    out = []
    for r, g in zip(responses, golds):
        found = _BOXED.findall(r or "")
        out.append(bool(found) and found[-1].replace(" ", "") == str(g).strip())
    return out


def _completion_text(c) -> str:
    """TRL passes plain strings, or message lists for conversational prompts."""
    if isinstance(c, list):
        return "".join(m.get("content", "") for m in c if isinstance(m, dict))
    return str(c)


class BoxedAnswerReward:
    """A TRL reward function: `(prompts, completions, answer, **kw) -> list[float]`."""

    __name__ = "correct"

    def __init__(self, timeout: float = 5.0, workers: int = 1, exact: bool = False):
        self.timeout, self.workers = timeout, workers
        self.grade_math = None
        if not exact:
            try:
                from rlvr_linearity.evaluate.grading import grade_math

                self.grade_math = grade_math
            except ImportError:
                log.warning("rlvr_linearity.evaluate.grading not available: exact \\boxed{} integer match")

    def grade(self, responses: list[str], golds: list[str]) -> list[bool]:
        if self.grade_math is None:
            return boxed_integer_match(responses, golds)
        return [g.correct for g in self.grade_math(responses, golds, timeout=self.timeout, workers=self.workers)]

    def __call__(self, prompts=None, completions=None, answer=None, **kwargs) -> list[float]:
        texts = [_completion_text(c) for c in completions]
        return [1.0 if ok else 0.0 for ok in self.grade(texts, [str(a) for a in answer])]
