"""Math answer grading: last-\\boxed{} extraction, then math-verify in killable worker processes.

math-verify's own timeouts are signal based and some inputs still hang a worker (ecosystem.md),
so every item runs in a pebble process pool with a per-item timeout; a hung worker is killed
and replaced. Plain integers and identical strings are decided in the caller without sympy,
which keeps ordinary grading well above 200 answers/s.
"""

from __future__ import annotations

import atexit
import multiprocessing
import re
import threading
from fractions import Fraction
from functools import lru_cache
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, asdict
from typing import Literal

Status = Literal["ok", "timeout", "error", "no_answer"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?\d*\.?\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([+-]?\d+)\}\{(\d+)\}|([+-]?\d+)/(\d+)")
# Address-space cap for grading workers: a giant factorial must fail, not take the host down.
_WORKER_MEMORY_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class MathGrade:
    correct: bool
    extracted: str | None
    status: Status

    def to_dict(self) -> dict:
        return asdict(self)


def extract_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched), else None.

    ``\\boxed 5`` (no braces) yields the token after the space, as models sometimes write it.
    """
    if not text:
        return None
    start = -1
    for cmd in _BOX_COMMANDS:
        pos = text.rfind(cmd)
        while pos != -1:
            nxt = pos + len(cmd)
            # \boxed must not be a prefix of a longer command name (e.g. \boxedx)
            if nxt >= len(text) or not text[nxt].isalpha():
                break
            pos = text.rfind(cmd, 0, pos)
        if pos > start:
            start = pos
            cmd_len = len(cmd)
    if start == -1:
        return None
    i = start + cmd_len
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        if start + cmd_len < i:  # "\boxed 5": a bare token after whitespace
            m = re.match(r"[^\s$]+", text[i:])
            return m.group(0).rstrip(".") if m else None
        return None
    depth = 0
    j = i
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2  # skip escaped characters such as \{ and \}
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None  # unbalanced: the answer was cut off


def _normalise(s: str) -> str:
    return "".join(s.split()).rstrip(".")


def _rational(s: str) -> Fraction | None:
    """An integer, decimal or \\frac{p}{q} / p/q with integer parts as an exact Fraction."""
    m = _FRAC.fullmatch(s)
    try:
        if m:
            num, den = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            return Fraction(int(num), int(den)) if int(den) != 0 else None
        if _DEC.fullmatch(s) and len(s) < 40:
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def fast_verdict(extracted: str, gold: str) -> bool | None:
    """Decide without sympy where it is unambiguous; else None (math-verify decides).

    Identical strings and equal plain integers are correct, different integers wrong; equal
    exact rationals (0.5 vs \\frac{1}{2}) are correct. Unequal non-integers go to math-verify,
    which allows for rounding.
    """
    a, b = _normalise(extracted), _normalise(gold)
    if a == b:
        return True
    if _INT.fullmatch(a) and _INT.fullmatch(b):
        return int(a) == int(b)
    ra, rb = _rational(a), _rational(b)
    if ra is not None and rb is not None and ra == rb:
        return True
    return None


def _parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed = parse("\\boxed{" + text + "}", extraction_config=cfg)
    return parsed if parsed else parse(text, extraction_config=cfg)


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    """Golds repeat (n samples per problem, GRPO groups): parse each once per worker."""
    return _parse(gold)


def _verify_worker(extracted: str, gold: str) -> bool:
    """Runs in a worker process (main thread, so math-verify's signal timeouts work)."""
    from math_verify import verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = _parse(extracted)
    if not gold_parsed or not pred_parsed:
        return False
    # verify compares the parsed objects; never str() them (one known input hangs str()).
    return bool(verify(gold_parsed, pred_parsed))


def _worker_init(memory_bytes: int) -> None:
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass
    import logging

    import math_verify  # noqa: F401  (import once per worker, not per item)

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole adversarial inputs


class MathGrader:
    """A reusable pool of grading workers; thread-safe ``grade`` calls share it."""

    def __init__(self, workers: int = 2, timeout: float = 5.0, memory_bytes: int = _WORKER_MEMORY_BYTES):
        from pebble import ProcessPool

        self.timeout = timeout
        self.workers = workers
        self._pool = ProcessPool(
            max_workers=workers,
            initializer=_worker_init,
            initargs=(memory_bytes,),
            context=multiprocessing.get_context("forkserver"),
        )

    def grade(self, responses: list[str], golds: list[str]) -> list[MathGrade]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        results: list[MathGrade | None] = [None] * len(responses)
        pending = []
        for idx, (response, gold) in enumerate(zip(responses, golds)):
            extracted = extract_boxed(response or "")
            if extracted is None or extracted == "":
                results[idx] = MathGrade(False, extracted, "no_answer")
                continue
            quick = fast_verdict(extracted, str(gold))
            if quick is not None:
                results[idx] = MathGrade(quick, extracted, "ok")
                continue
            fut = self._pool.schedule(_verify_worker, args=(extracted, str(gold)), timeout=self.timeout)
            pending.append((idx, extracted, fut))
        for idx, extracted, fut in pending:
            try:
                results[idx] = MathGrade(bool(fut.result()), extracted, "ok")
            except FutureTimeout:
                results[idx] = MathGrade(False, extracted, "timeout")
            except Exception:  # a worker error or a killed worker (ProcessExpired, MemoryError)
                results[idx] = MathGrade(False, extracted, "error")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Let idle workers exit cleanly (a stop() mid-respawn leaves a forkserver traceback)."""
        self._pool.close()
        try:
            self._pool.join(timeout=5)
        except TimeoutError:
            self._pool.stop()
            self._pool.join()


_graders: dict[tuple[int, float], MathGrader] = {}
_graders_lock = threading.Lock()


def get_grader(workers: int = 2, timeout: float = 5.0) -> MathGrader:
    """The process-wide grader for these settings (workers start once and are reused)."""
    key = (workers, float(timeout))
    with _graders_lock:
        grader = _graders.get(key)
        if grader is None:
            grader = _graders[key] = MathGrader(workers=workers, timeout=timeout)
        return grader


@atexit.register
def _close_graders() -> None:
    for grader in list(_graders.values()):
        grader.close()
    _graders.clear()


def grade_math(responses: list[str], golds: list[str], timeout: float = 5.0, workers: int = 2) -> list[MathGrade]:
    """Grade each response against its gold answer: a verdict for every item within ``timeout``."""
    return get_grader(workers, timeout).grade(list(responses), list(golds))
