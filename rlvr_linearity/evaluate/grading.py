"""Math answer grading: a registry of graders, run in killable worker processes.

Graders (``GRADERS``; a benchmark's YAML ``grader:``, overridden by ``evaluate.grader``):

- ``math_verify`` (default): math-verify as its authors use it: the WHOLE response and the gold
  go through ``parse`` with LaTeX extraction (boxed first) plus expression extraction, and
  ``verify`` decides. Unboxed LaTeX answers, several boxed parts, sets, intervals and equations
  are graded as math-verify decides. Two rejections on top (issue 18): a chained equality that
  states a false equality (``x = 2 = 3``), and an answer given only as an approximation (``≈``).
- ``lin``: LIN's evaluation (docs/methods.md §D1): first ``\\boxed{}``, PRM800K-style equivalence
  (``rlvr_linearity.evaluate.paper_graders``).
- ``relex``: RELEX's evaluation (docs/methods.md §D2): last ``boxed`` / "the answer is" / last number,
  then ``math_equal``.

math-verify's own timeouts are signal based and some inputs still hang a worker (docs/ecosystem.md),
so grading runs in a pebble process pool. Unique (response, gold) pairs go to the workers in
chunks (one IPC round trip for many items, samples of one gold together so its parse is cached);
inside a worker every item gets its own ``timeout`` (SIGALRM, so the worker survives), and the
pool kills a chunk only on a hang no signal can interrupt, after which its items are retried one
per task. Parsed sympy objects are never ``str()``-ed (one known input hangs ``str()``): the
extracted answers recorded are the strings math-verify's ``parse`` returns alongside.

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
from functools import lru_cache
from typing import Literal

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.schemas import GRADERS

Status = Literal["ok", "timeout", "error", "no_answer"]

DEFAULT_GRADER = "math_verify"

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
    extracted: str | None  # the answer the grader read from the response
    gold_extracted: str | None  # what it read from the gold answer
    status: Status

    def to_dict(self) -> dict:
        return asdict(self)


def check_grader(name: str) -> str:
    """`name` if it is a registered grader, else a one-line ConfigError."""
    if name not in GRADERS:
        raise ConfigError(f"unknown grader {name!r} (graders: {', '.join(GRADERS)})")
    return name


# --- math_verify -------------------------------------------------------------------------------

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_APPROX = ("\\approx", "≈")


@lru_cache(maxsize=1)
def _mv_config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # As math-verify's own tests grade free-form answers: boxed answers first, then any LaTeX,
    # then plain expressions and numbers.
    return (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _mv_parse(text: str) -> list:
    """math-verify's parse without its own (signal based) timeout: the item timeout covers it."""
    from math_verify import parse

    return parse(text, extraction_config=_mv_config(), parsing_timeout=None)


def _mv_text(parsed: list) -> str | None:
    """The string form that parse returns next to the sympy object (never str() of sympy)."""
    return next((p for p in parsed if isinstance(p, str)), None)


@lru_cache(maxsize=4096)
def _mv_gold(gold: str) -> list:
    """Golds repeat (n samples per problem, GRPO groups): parse each once per worker.

    A benchmark's gold is a bare answer (``2\\sqrt{2}``); math-verify reads LaTeX inside math
    delimiters, so a gold without any is wrapped in ``$...$`` (as math-verify's docs write golds).
    """
    text = gold if _UNESCAPED_DOLLAR.search(gold) or "\\boxed" in gold else f"${gold}$"
    return _mv_parse(text)


def _false_chain(expr) -> bool:
    """A chain ``a = b = c`` one of whose links between expressions free of variables is false
    (``x = 2 = 3``): math-verify keeps only its last value, which would accept 3 (and 2 for
    ``x = 3 = 2``). Consistent chains (``x = 1 + 1 = 2``) are kept."""
    from latex2sympy2_extended.logic import And
    from math_verify.grader import sympy_expr_eq
    from sympy import Eq

    if not isinstance(expr, And):
        return False
    for link in expr._unsorted_args:
        if isinstance(link, Eq) and not link.lhs.free_symbols and not link.rhs.free_symbols:
            if not sympy_expr_eq(link.lhs, link.rhs, float_rounding=6, numeric_precision=15):
                return True
    return False


def _grade_math_verify(response: str, gold: str) -> tuple[bool, str | None, str | None]:
    from math_verify import verify

    gold_parsed = _mv_gold(gold)
    pred = _mv_parse(response)
    got, want = _mv_text(pred), _mv_text(gold_parsed)
    if not pred or not gold_parsed:
        return False, got, want
    if got and any(a in got for a in _APPROX) and not (want and any(a in want for a in _APPROX)):
        return False, got, want  # "≈ 3": an approximation is not the answer
    if any(not isinstance(p, str) and _false_chain(p) for p in pred):
        return False, got, want
    # verify compares the parsed objects, gold first (its asymmetries assume that order).
    return bool(verify(gold_parsed, pred, timeout_seconds=None)), got, want


def _grade(grader: str, response: str, gold: str) -> tuple[bool, str | None, str | None]:
    if grader == "math_verify":
        return _grade_math_verify(response, gold)
    from rlvr_linearity.evaluate import paper_graders

    return paper_graders.GRADE[grader](response, gold)


# --- the timed item loop -----------------------------------------------------------------------


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


def _grade_items(pairs, timeout: float, window: float | None = None, grader: str = DEFAULT_GRADER) -> list:
    """Results ((correct, extracted, gold_extracted), or "timeout" / "error") for a prefix of
    `pairs` of (response, gold), in order.

    In the main thread each item runs under a SIGALRM timer of `timeout` seconds; elsewhere
    signals are unavailable and items run untimed. With `window`, no new item is started once
    that many seconds have passed (at least one item always is): the caller reschedules the rest.
    """
    timed = timeout > 0 and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if timed else None
    start = time.monotonic()
    out: list = []
    try:
        for response, gold in pairs:
            if out and window is not None and time.monotonic() - start > window:
                break
            try:
                if timed:
                    _ITEM["timed"] = True
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    verdict = _grade(grader, response, gold)
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
    prepare_math_verify()


# Answers of the common shapes, parsed once per process (prepare_math_verify).
_WARM_UP = ("$x^2+2x+1$", "\\boxed{(x+1)^2}", "$[1, 2)$", "\\boxed{(1, 2, 3)}", "$\\frac{1}{2}$", "\\boxed{2\\sqrt{2}}",
            "$\\{1,2\\}$", "\\boxed{y = 2x + 1}", "The answer is 42.")


def prepare_math_verify() -> None:
    """Import math-verify once per process, quiet its logging, and adapt its LaTeX parser
    (latex2sympy2_extended) in two ways that keep every result it gives:

    - Under the ANTLR 4.9 runtime that hydra/omegaconf pin, its converter asks every atom for
      ``FUNC_GAMMA``, which only its ANTLR 4.13 parser defines, so any percentage (``50\\%``)
      failed to parse. The 4.9 grammar has no gamma atom: the accessor answers None.
    - ANTLR's two-stage parsing: SLL prediction first, full LL only where SLL reports a syntax
      error. ANTLR guarantees SLL yields LL's parse tree or an error, and this parser raises on
      every syntax error, so the results are LL's; intervals and tuples parse ~15x faster.
    """
    import logging

    import math_verify  # noqa: F401  (import once per worker, not per item)
    from latex2sympy2_extended import latex2sympy2
    from latex2sympy2_extended.antlr_parser import PSParser

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole adversarial inputs
    if not hasattr(PSParser.AtomContext, "FUNC_GAMMA"):
        PSParser.AtomContext.FUNC_GAMMA = lambda self: None
    converter = latex2sympy2._Latex2Sympy
    if not getattr(converter.parse, "two_stage", False):
        converter.create_parser = _sll_first(converter.create_parser)
        converter.parse = _two_stage(converter.parse)
        # once per process: the parser builds its prediction tables, and sympy its caches, on
        # first use; not inside a timed answer
        _grade_math_verify(_WARM_UP[0], "(x+1)^2")
        for text in _WARM_UP[1:]:
            _mv_parse(text)


def _sll_first(create_parser):
    def create(self, latex_str):
        from antlr4.atn.PredictionMode import PredictionMode

        parser = create_parser(self, latex_str)
        if getattr(self, "_sll", False):
            parser._interp.predictionMode = PredictionMode.SLL
        return parser

    return create


def _two_stage(parse):
    def two_stage(self, latex_str):
        state = (dict(self.variances), dict(self.var))
        self._sll = True
        try:
            return parse(self, latex_str)
        except Exception:  # an SLL syntax error (or a conversion error LL will raise again)
            self.variances, self.var = state
            self._sll = False
            return parse(self, latex_str)

    two_stage.two_stage = True
    two_stage.__wrapped_parse__ = parse  # the parser's own (LL) parse, for tests
    return two_stage


class MathGrader:
    """A reusable pool of grading workers for one grader; thread-safe ``grade`` calls share it.

    ``workers=0``: no pool, items are graded in the calling thread (see the module docstring).
    """

    def __init__(self, workers: int = 2, timeout: float = 5.0, memory_bytes: int = _WORKER_MEMORY_BYTES,
                 grader: str = DEFAULT_GRADER):
        self.grader = check_grader(grader)
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
            prepare_math_verify()

    def grade(self, responses: list[str], golds: list[str]) -> list[MathGrade]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        results: list[MathGrade | None] = [None] * len(responses)
        todo: dict[tuple[str, str], list[int]] = {}  # identical (response, gold) pairs: graded once
        for idx, (response, gold) in enumerate(zip(responses, golds)):
            if not (response or "").strip():
                results[idx] = MathGrade(False, None, None, "no_answer")
                continue
            todo.setdefault((response, str(gold)), []).append(idx)
        pairs = sorted(todo, key=lambda p: p[1])  # one gold's samples in one chunk: one gold parse
        verdicts = self._run(pairs) if self._pool is not None else _grade_items(pairs, self.timeout,
                                                                                grader=self.grader)
        for pair, verdict in zip(pairs, verdicts):
            if isinstance(verdict, str):
                grade = MathGrade(False, None, None, verdict)
            else:
                ok, got, want = verdict
                grade = MathGrade(bool(ok), got, want, "ok" if got is not None else "no_answer")
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
            fut = self._pool.schedule(_grade_items, args=([pairs[i] for i in idxs], self.timeout, window,
                                                          self.grader),
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


_graders: dict[tuple[int, float, str], MathGrader] = {}
_graders_lock = threading.Lock()


def get_grader(workers: int = 2, timeout: float = 5.0, grader: str = DEFAULT_GRADER) -> MathGrader:
    """The process-wide grader for these settings (workers start once and are reused)."""
    key = (workers, float(timeout), check_grader(grader))
    with _graders_lock:
        found = _graders.get(key)
        if found is None:
            found = _graders[key] = MathGrader(workers=workers, timeout=timeout, grader=grader)
        return found


@atexit.register
def _close_graders() -> None:
    for grader in list(_graders.values()):
        grader.close()
    _graders.clear()


def grade_math(responses: list[str], golds: list[str], timeout: float = 5.0, workers: int = 2,
               grader: str = DEFAULT_GRADER) -> list[MathGrade]:
    """Grade each response against its gold answer: a verdict for every item within ``timeout``."""
    return get_grader(workers, timeout, grader).grade(list(responses), list(golds))
