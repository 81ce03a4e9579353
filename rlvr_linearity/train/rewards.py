"""GRPO rewards for TRL: 1.0 when a completion's answer matches the gold under `train.reward_grader`.

The graders are the evaluation's (`rlvr_linearity.evaluate.grading`: math_verify, lin, relex),
run in a pebble process pool with timeouts, so training rewards and reported accuracies agree.
"""

from __future__ import annotations


def _completion_text(c) -> str:
    """TRL passes plain strings, or message lists for conversational prompts."""
    if isinstance(c, list):
        return "".join(m.get("content", "") for m in c if isinstance(m, dict))
    return str(c)


class BoxedAnswerReward:
    """A TRL reward function: `(prompts, completions, answer, **kw) -> list[float]`."""

    __name__ = "correct"

    def __init__(self, timeout: float = 5.0, workers: int = 1, grader: str = "math_verify"):
        from rlvr_linearity.evaluate.grading import check_grader

        self.timeout, self.workers, self.grader = timeout, workers, check_grader(grader)

    def grade(self, responses: list[str], golds: list[str]) -> list[bool]:
        from rlvr_linearity.evaluate.grading import grade_math

        return [g.correct for g in grade_math(responses, golds, timeout=self.timeout, workers=self.workers,
                                              grader=self.grader)]

    def __call__(self, prompts=None, completions=None, answer=None, **kwargs) -> list[float]:
        texts = [_completion_text(c) for c in completions]
        return [1.0 if ok else 0.0 for ok in self.grade(texts, [str(a) for a in answer])]
