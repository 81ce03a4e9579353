"""Math answer grading: last-\\boxed{} extraction, then math-verify in killable worker processes.

math-verify's own timeouts are signal based and some inputs still hang a worker (docs/ecosystem.md),
so grading runs in a pebble process pool. Unique (answer, gold) pairs go to the workers in
chunks (one IPC round trip for many items, samples of one gold together so its parse is cached);
inside a worker every item gets its own ``timeout`` (SIGALRM, so the worker survives), and the
pool kills a chunk only on a hang no signal can interrupt, after which its items are retried one
per task. Plain integers, exact rationals (0.5 vs \\frac{1}{2}; unequal ones only without decimals)
and answers identical up to whitespace and \\left/\\right/\\dfrac are decided in the caller
without sympy.

``workers=0`` grades in the calling thread (no pool): with the per-item SIGALRM timeout when
that is the main thread, with no timeout otherwise (the caller must then be killable, as
``rlvr_linearity.train.verl_reward``'s pool workers are).
"""

from __future__ import annotations

import atexit
import multiprocessing
import re
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

Status = Literal["ok", "timeout", "error", "no_answer"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?\d*\.?\d+")
_FRAC = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{(\d+)\}|([+-]?\d+)/(\d+)")
# Presentation-only LaTeX that math-verify ignores too: \left/\right, \dfrac/\tfrac. (Not \, or
# \big: math-verify reads 1\,000 and \big(1,2\big) differently from 1000 and (1,2).)
_LATEX_NOISE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_FRAC_STYLE = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# Items per pool task; a worker starts no new item of a chunk after this many seconds (it
# returns what it has, the rest is rescheduled), so a chunk never outlives one item's timeout
# by more than the window.
_CHUNK_ITEMS = 32
_CHUNK_WINDOW_S = 1.0
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
    if "\\" in s:
        s = _FRAC_STYLE.sub(r"\\frac", _LATEX_NOISE.sub("", s))
    return "".join(s.split()).rstrip(".")


def _rational(s: str) -> Fraction | None:
    """An integer, decimal or [-]\\frac{p}{q} / p/q with integer parts as an exact Fraction."""
    if len(s) > 100:
        return None
    m = _FRAC.fullmatch(s)
    try:
        if m:
            if m.group(2) is not None:
                num, den = int(m.group(2)), int(m.group(3))
                num = -num if m.group(1) == "-" else num
            else:
                num, den = int(m.group(4)), int(m.group(5))
            return Fraction(num, den) if den != 0 else None
        if _DEC.fullmatch(s) and len(s) < 40:
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def fast_verdict(extracted: str, gold: str) -> bool | None:
    """Decide without sympy where it is unambiguous; else None (math-verify decides).

    Strings identical up to whitespace, \\left/\\right and \\dfrac/\\tfrac are correct. Exact
    rationals (integers, p/q, [-]\\frac{p}{q}, decimals) that are equal are correct; unequal ones
    are wrong when neither is a decimal: math-verify compares two exact rationals exactly
    (Rational == Rational), while a decimal is a Float it rounds (1/3 vs 0.333333 is correct), so
    those go to math-verify.
    """
    a, b = _normalise(extracted), _normalise(gold)
    if a == b:
        return True
    if _INT.fullmatch(a) and _INT.fullmatch(b):
        return int(a) == int(b)
    ra, rb = _rational(a), _rational(b)
    if ra is not None and rb is not None:
        if ra == rb:
            return True
        if "." not in a and "." not in b:
            return False
    return None


def _parse(text: str):
    """math-verify's parse without its own (signal based) timeout: the item timeout covers it."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed = parse("\\boxed{" + text + "}", extraction_config=cfg, parsing_timeout=None)
    return parsed if parsed else parse(text, extraction_config=cfg, parsing_timeout=None)


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    """Golds repeat (n samples per problem, GRPO groups): parse each once per worker."""
    return _parse(gold)


def _verify(extracted: str, gold: str) -> bool:
    from math_verify import verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = _parse(extracted)
    if not gold_parsed or not pred_parsed:
        return False
    # verify compares the parsed objects; never str() them (one known input hangs str()).
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


class _ItemTimeout(BaseException):
    """Raised by SIGALRM inside an item; a BaseException so math-verify's handlers let it through."""


_ITEM = {"timed": False}  # whether a timed item is running (SIGALRM: main thread only)
_REPEAT_S = 0.05  # an item's timeout is raised again this often until the item stops


def _on_alarm(signum, frame):
    """Raise _ItemTimeout in the running item, and again every _REPEAT_S until it stops: the
    signal may land in a finalizer (`__del__` run by the collector), where Python prints the
    exception and drops it, and the item would then run on untimed. A late alarm (the item has
    ended) does nothing."""
    if _ITEM["timed"]:
        signal.setitimer(signal.ITIMER_REAL, _REPEAT_S)
        raise _ItemTimeout()


def _grade_items(pairs, timeout: float, window: float | None = None) -> list:
    """Verdicts (True/False, "timeout" or "error") for a prefix of `pairs`, in order.

    In the main thread each item runs under a SIGALRM timer of `timeout` seconds; elsewhere
    signals are unavailable and items run untimed. With `window`, no new item is started once
    that many seconds have passed (at least one item always is): the caller reschedules the rest.
    """
    timed = timeout > 0 and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if timed else None
    start = time.monotonic()
    out: list = []
    try:
        for extracted, gold in pairs:
            if out and window is not None and time.monotonic() - start > window:
                break
            try:
                if timed:
                    _ITEM["timed"] = True
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    verdict = _verify(extracted, gold)
                finally:
                    _ITEM["timed"] = False  # first: from here on an alarm does nothing
                    if timed:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except _ItemTimeout:  # (also from a repeated alarm that cut the finally short)
                _ITEM["timed"] = False
                verdict = "timeout"
            except Exception:  # MemoryError under the worker's address-space cap, parser bugs
                verdict = "error"
            out.append(verdict)
    finally:
        if timed:
            _ITEM["timed"] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    return out


def _worker_init(memory_bytes: int) -> None:
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass
    _quiet_math_verify()


def _quiet_math_verify() -> None:
    import logging

    import math_verify  # noqa: F401  (import once per worker, not per item)

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole adversarial inputs


class MathGrader:
    """A reusable pool of grading workers; thread-safe ``grade`` calls share it.

    ``workers=0``: no pool, items are graded in the calling thread (see the module docstring).
    """

    def __init__(self, workers: int = 2, timeout: float = 5.0, memory_bytes: int = _WORKER_MEMORY_BYTES):
        self.timeout = timeout
        self.workers = max(0, int(workers))
        self._pool = None
        if self.workers:
            from pebble import ProcessPool

            self._pool = ProcessPool(
                max_workers=self.workers,
                initializer=_worker_init,
                initargs=(memory_bytes,),
                context=multiprocessing.get_context("forkserver"),
            )
        else:
            _quiet_math_verify()

    def grade(self, responses: list[str], golds: list[str]) -> list[MathGrade]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        results: list[MathGrade | None] = [None] * len(responses)
        todo: dict[tuple[str, str], list[int]] = {}  # identical (answer, gold) pairs: graded once
        for idx, (response, gold) in enumerate(zip(responses, golds)):
            extracted = extract_boxed(response or "")
            if extracted is None or extracted == "":
                results[idx] = MathGrade(False, extracted, "no_answer")
                continue
            gold = str(gold)
            quick = fast_verdict(extracted, gold)
            if quick is not None:
                results[idx] = MathGrade(quick, extracted, "ok")
                continue
            todo.setdefault((extracted, gold), []).append(idx)
        pairs = sorted(todo, key=lambda p: p[1])  # one gold's samples in one chunk: one gold parse
        verdicts = self._run(pairs) if self._pool is not None else _grade_items(pairs, self.timeout)
        for pair, verdict in zip(pairs, verdicts):
            grade = (MathGrade(False, pair[0], verdict) if isinstance(verdict, str)
                     else MathGrade(bool(verdict), pair[0], "ok"))
            for idx in todo[pair]:
                results[idx] = grade
        return results  # type: ignore[return-value]

    def _run(self, pairs: list[tuple[str, str]]) -> list:
        """Verdicts for `pairs` from the pool: chunks, partial chunks rescheduled, killed chunks
        (a hang SIGALRM could not interrupt, a dead worker) retried one item per task."""
        verdicts: list = [None] * len(pairs)
        size = max(1, min(_CHUNK_ITEMS, -(-len(pairs) // (4 * self.workers))))
        slack = 1.0 + 0.1 * self.timeout  # for a verdict's trip back from a loaded machine
        running: dict = {}

        def submit(idxs: list[int]) -> None:
            window = None if len(idxs) == 1 else min(_CHUNK_WINDOW_S, self.timeout)
            fut = self._pool.schedule(_grade_items, args=([pairs[i] for i in idxs], self.timeout, window),
                                      timeout=self.timeout + (window or 0.0) + slack)
            running[fut] = idxs

        for start in range(0, len(pairs), size):
            submit(list(range(start, min(start + size, len(pairs)))))
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                idxs = running.pop(fut)
                try:
                    got = fut.result()
                    if not got:
                        raise RuntimeError("a grading task returned no verdict")
                except Exception as exc:  # killed on the backstop timeout, or the worker died
                    if len(idxs) > 1:
                        for i in idxs:
                            submit([i])
                    else:
                        verdicts[idxs[0]] = "timeout" if isinstance(exc, FutureTimeout) else "error"
                    continue
                for i, v in zip(idxs, got):
                    verdicts[i] = v
                if len(got) < len(idxs):
                    submit(idxs[len(got):])
        return verdicts

    def close(self) -> None:
        """Let idle workers exit cleanly (a stop() mid-respawn leaves a forkserver traceback)."""
        if self._pool is None:
            return
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
