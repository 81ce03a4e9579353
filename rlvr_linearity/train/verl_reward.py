"""verl custom reward: this project's math graders (`train.reward_grader`: math_verify, lin, relex).

verl 0.9.1 loads it from `reward.custom_reward_function.path/name` (we set
`pkg://rlvr_linearity.train.verl_reward`; a file path works too), passes
`reward.custom_reward_function.reward_kwargs` (our `grader`) and calls `compute_score` from
reward-loop threads. math-verify's timeouts are signal based and raise outside the main thread,
and a pathological answer can hang a worker, so each grade runs in a long-lived pebble process
pool (one per process that imports this file) whose hung workers are killed.
(`train.reward_grader=verl_math` does not come here: verl's own MATH reward is named directly.)
"""

from __future__ import annotations

import multiprocessing
import os
import threading

TIMEOUT_S = float(os.environ.get("RLVR_REWARD_TIMEOUT", "10"))
WORKERS = int(os.environ.get("RLVR_REWARD_WORKERS", "4"))

_lock = threading.Lock()
_pool = None
_pool_pid = None


def _get_pool():
    """The process's grading pool, created on first use (and again after a fork)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid() or not _pool.active:
            import pebble

            _pool = pebble.ProcessPool(max_workers=WORKERS, context=multiprocessing.get_context("spawn"))
            _pool_pid = os.getpid()
        return _pool


def _grade(solution_str: str, ground_truth: str, timeout: float, grader: str = "math_verify") -> float:
    """Runs in a pool worker's main thread, where math-verify's signal timeouts work."""
    from rlvr_linearity.evaluate.grading import grade_math

    (result,) = grade_math([solution_str], [str(ground_truth)], timeout=timeout, workers=0, grader=grader)
    return 1.0 if result.correct else 0.0


def compute_score(data_source, solution_str, ground_truth, extra_info=None, grader="math_verify", **kwargs) -> dict:
    """verl's reward signature. Returns `{"score", "acc"}`; a grading timeout or crash scores 0."""
    # By its importable name even when verl loaded this file by path: the pool's spawned workers
    # unpickle `_grade` by module name.
    from rlvr_linearity.evaluate.grading import check_grader
    from rlvr_linearity.train.verl_reward import _get_pool as get_pool, _grade as grade

    check_grader(grader)  # a misspelt grader fails loudly, not as a reward of 0 for everything
    future = get_pool().schedule(grade, args=(solution_str, ground_truth, TIMEOUT_S, grader), timeout=TIMEOUT_S * 2)
    try:
        score = future.result()
    except Exception:  # timeout, killed worker or grader failure: not a correct answer
        score = 0.0
    return {"score": score, "acc": score}
