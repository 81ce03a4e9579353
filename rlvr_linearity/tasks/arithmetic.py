"""Procedurally generated integer arithmetic with exact answers: the demo's verifiable task.

A problem is an expression such as `7 + 12 * 3` (usual precedence, no division so answers are
integers). One seeded stream of unique expressions is cut into the test split (first `n_test`)
and the train split (the next `n_train`), so the splits never overlap and the test split does
not change when `n_train` does. Difficulty knobs: number of terms, operand range, operators.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.io import write_lines_atomic

PROMPT = "Compute {problem}. Put the final answer in \\boxed{{}}."
SPLITS = ("train", "test")


def format_prompt(problem: str) -> str:
    """The user message for one problem (asks for the answer in `\\boxed{}`)."""
    return PROMPT.format(problem=problem)


def evaluate_expression(terms: list[int], ops: list[str]) -> int:
    """Exact value with `*` binding tighter than `+`/`-` (left to right otherwise)."""
    total, product = 0, terms[0]
    sign = 1
    for op, t in zip(ops, terms[1:]):
        if op == "*":
            product *= t
        else:
            total += sign * product
            sign, product = (1 if op == "+" else -1), t
    return total + sign * product


KNOBS = ("seed", "n_train", "n_test", "min_terms", "max_terms", "min_operand", "max_operand")


def knobs(task) -> dict:
    """The generator's knobs from the typed `task` config (conf/task/arithmetic.yaml), checked."""
    k = {name: int(getattr(task, name)) for name in KNOBS}
    k["max_products"] = task.max_products
    k["operators"] = list(task.operators)
    bad = [o for o in k["operators"] if o not in ("+", "-", "*")]
    if bad or not k["operators"]:
        raise ConfigError(f"task.operators: unsupported operators {bad or 'none given'} (use +, -, *)")
    if not 1 <= k["min_terms"] <= k["max_terms"]:
        raise ConfigError(f"task: need 1 <= min_terms <= max_terms, got {k['min_terms']}, {k['max_terms']}")
    if k["min_operand"] > k["max_operand"] or k["min_operand"] < 0:
        raise ConfigError(f"task: need 0 <= min_operand <= max_operand, got {k['min_operand']}, {k['max_operand']}")
    if k["n_train"] < 0 or k["n_test"] < 0:
        raise ConfigError("task: n_train and n_test must be >= 0")
    return k


def _draw(rng: random.Random, k: dict) -> tuple[list[int], list[str]]:
    n = rng.randint(k["min_terms"], k["max_terms"])
    terms = [rng.randint(k["min_operand"], k["max_operand"]) for _ in range(n)]
    ops = [rng.choice(k["operators"]) for _ in range(n - 1)]
    if k["max_products"] is not None:  # cap the number of `*` (hardness knob)
        stars = [i for i, o in enumerate(ops) if o == "*"]
        for i in stars[int(k["max_products"]):]:
            ops[i] = rng.choice([o for o in k["operators"] if o != "*"] or ["+"])
    return terms, ops


def _problems(k: dict) -> list[dict]:
    """The seeded stream of unique problems, test first then train."""
    rng = random.Random(k["seed"])
    want = k["n_test"] + k["n_train"]
    seen: set[str] = set()
    out: list[dict] = []
    misses = 0
    while len(out) < want:
        terms, ops = _draw(rng, k)
        text = " ".join([str(terms[0])] + [f"{o} {t}" for o, t in zip(ops, terms[1:])])
        if text in seen:
            misses += 1
            if misses > 50 * want + 10_000:
                raise ConfigError(f"task: cannot draw {want} unique problems with these knobs "
                                  f"(got {len(out)}); widen max_operand/max_terms or lower n_train/n_test")
            continue
        seen.add(text)
        out.append({"problem": text, "answer": str(evaluate_expression(terms, ops))})
    return out


def make_split(task_cfg, split: str) -> list[dict]:
    """`split` in ("train", "test") -> [{problem_id, problem, answer, prompt}], deterministic."""
    return split_of(knobs(task_cfg), split)


def split_of(k: dict, split: str) -> list[dict]:
    """`make_split` from the knobs `knobs` returned (the tiny model's recipe records them)."""
    if split not in SPLITS:
        raise ConfigError(f"task: unknown split {split!r} (use one of {SPLITS})")
    rows = _problems(k)
    rows = rows[: k["n_test"]] if split == "test" else rows[k["n_test"]:]
    return [{"problem_id": f"{split}-{i}", "problem": r["problem"], "answer": r["answer"],
             "prompt": format_prompt(r["problem"])} for i, r in enumerate(rows)]


def write_jsonl(task_cfg, split: str, path) -> Path:
    """Write a split as JSONL (one problem per line), atomically."""
    path = Path(path)
    write_lines_atomic(path, (json.dumps(row) for row in make_split(task_cfg, split)))
    return path
