"""Math grading: boxed extraction, math-verify equivalence, timeouts and the fast path."""

from __future__ import annotations

import time

import pytest

from rlvr_linearity.evaluate.grading import MathGrader, extract_boxed, fast_verdict, grade_math


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{ {a}+{b} }", "{a}+{b}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed 5.", "5"),
        ("no box here", None),
        ("\\boxed{unclosed", None),
        ("", None),
        ("\\boxed{3} and \\fbox{4}", "4"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_fast_verdict():
    assert fast_verdict("042", "42") is True
    assert fast_verdict("-3", "3") is False
    assert fast_verdict("x + 1", "x+1") is True
    assert fast_verdict("\\frac{1}{2}", "0.5") is True
    assert fast_verdict("1/3", "0.33") is None
    assert fast_verdict("\\frac12", "0.5") is None


def test_grade_math_equivalences():
    responses = [
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{0.5}",
        "\\boxed{\\frac{1}{3}}",
        "The answer is 12.",
        "\\boxed{12}",
        "\\boxed{13}",
        "\\boxed{2\\sqrt{2}}",
        "\\boxed{x^2+2x+1}",
    ]
    golds = ["0.5", "\\frac{1}{2}", "\\frac{1}{2}", "12", "12", "12", "\\sqrt{8}", "(x+1)^2"]
    grades = grade_math(responses, golds)
    assert [g.correct for g in grades] == [True, True, False, False, True, False, True, True]
    assert [g.status for g in grades] == ["ok", "ok", "ok", "no_answer", "ok", "ok", "ok", "ok"]
    assert grades[0].extracted == "\\frac{1}{2}"


def test_timeout_gives_verdict_and_pool_recovers():
    grader = MathGrader(workers=1, timeout=1.0)
    try:
        import rlvr_linearity.evaluate.grading as g

        start = time.monotonic()
        fut = grader._pool.schedule(time.sleep, args=(30,), timeout=0.5)
        with pytest.raises(Exception):
            fut.result()
        assert time.monotonic() - start < 10
        # the killed worker is replaced: ordinary grading still works
        out = grader.grade(["\\boxed{\\frac{2}{4}}"], ["\\frac12"])
        assert out[0].correct and out[0].status == "ok"
        assert g.extract_boxed("\\boxed{1}") == "1"
    finally:
        grader.close()


def test_length_mismatch():
    with pytest.raises(ValueError):
        grade_math(["\\boxed{1}"], [])


def test_fast_verdict_wider_but_exact():
    assert fast_verdict("\\dfrac{3}{4}", "\\frac{3}{4}") is True
    assert fast_verdict("\\left(1, 2\\right)", "(1,2)") is True
    assert fast_verdict("-\\frac{3}{4}", "-3/4") is True
    assert fast_verdict("\\frac{1}{2}", "\\frac{1}{3}") is False  # exact rationals: math-verify compares exactly
    assert fast_verdict("2", "\\frac{1}{2}") is False
    assert fast_verdict("0.5", "\\frac{1}{3}") is None  # a decimal: math-verify rounds, it decides
    assert fast_verdict("1\\,000", "1000") is None  # math-verify does not read \, as a thin space
    assert fast_verdict("\\rightarrow", "\\arrow") is None  # \right only as a delimiter size


def test_fast_verdict_agrees_with_math_verify():
    """Wherever the fast path decides, math-verify (in this process) gives the same verdict."""
    import random

    from rlvr_linearity.evaluate import grading as g

    g._quiet_math_verify()
    rng = random.Random(0)
    forms = [lambda p, q: f"\\frac{{{p}}}{{{q}}}", lambda p, q: f"{p}/{q}", lambda p, q: f"-\\frac{{{abs(p)}}}{{{q}}}",
             lambda p, q: f"\\dfrac{{{p}}}{{{q}}}", lambda p, q: str(p), lambda p, q: f"{p / q:.2f}",
             lambda p, q: f"\\left({p}, {q}\\right)", lambda p, q: f"({p},{q})"]
    decided = 0
    for _ in range(150):
        a = rng.choice(forms)(rng.randint(-9, 9), rng.randint(1, 6))
        b = rng.choice(forms)(rng.randint(-9, 9), rng.randint(1, 6))
        quick = fast_verdict(a, b)
        if quick is not None:
            decided += 1
            assert quick == g._grade_items([(a, b)], 5.0)[0], (a, b)
    assert decided > 50


def test_identical_pairs_graded_once_and_in_order():
    out = grade_math(["\\boxed{2\\sqrt{2}}", "\\boxed{\\sqrt{8}}", "\\boxed{2\\sqrt{2}}", "\\boxed{3}"],
                     ["\\sqrt{8}", "2\\sqrt{2}", "\\sqrt{8}", "\\sqrt{8}"])
    assert [g.correct for g in out] == [True, True, True, False]
    assert [g.extracted for g in out] == ["2\\sqrt{2}", "\\sqrt{8}", "2\\sqrt{2}", "3"]


ADVERSARIAL = ["\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "\\boxed{9^{9^{9^{9^{9}}}}}",
               "\\boxed{(10^{100})!}", "\\boxed{" + "1+" * (1 << 19) + "1}"]


def test_adversarial_items_time_out_inside_the_worker_and_the_rest_is_graded():
    grader = MathGrader(workers=2, timeout=1.0)
    try:
        responses = ADVERSARIAL + ["\\boxed{2\\sqrt{2}}", "\\boxed{(x+1)^2}"] * 20
        golds = ["3"] * len(ADVERSARIAL) + ["\\sqrt{8}", "x^2+2x+1"] * 20
        start = time.monotonic()
        out = grader.grade(responses, golds)
        assert time.monotonic() - start < 15
        assert [g.status for g in out[:len(ADVERSARIAL)]] == ["timeout"] * len(ADVERSARIAL)
        assert all(g.correct and g.status == "ok" for g in out[len(ADVERSARIAL):])
    finally:
        grader.close()


class _FakePool:
    """Runs chunks in this process: multi-item chunks with a marker are 'killed', others return
    only their first two verdicts (as a worker past its window does)."""

    def __init__(self):
        self.calls = []

    def schedule(self, fn, args, timeout):
        from concurrent.futures import Future
        from concurrent.futures import TimeoutError as FutureTimeout

        pairs = args[0]
        self.calls.append(len(pairs))
        fut = Future()
        if len(pairs) > 1 and any(p[0] == "hang" for p in pairs):
            fut.set_exception(FutureTimeout())
        elif len(pairs) == 1 and pairs[0][0] == "hang":
            fut.set_exception(FutureTimeout())
        else:
            fut.set_result(fn(pairs[:2], *args[1:]))
        return fut


def test_partial_chunks_rescheduled_and_killed_chunks_retried_one_by_one():
    grader = MathGrader(workers=0, timeout=5.0)
    grader.workers, grader._pool = 1, _FakePool()
    pairs = [(f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}") for k in range(1, 40)] + [("hang", "1")]
    verdicts = grader._run(pairs)
    assert verdicts == [True] * 39 + ["timeout"]
    calls = grader._pool.calls
    assert calls[:4] == [10, 10, 10, 10] and 8 in calls  # chunks, then their unfinished rest
    assert calls.count(1) >= 2  # the killed chunk's items, one per task


def test_workers_zero_grades_in_process_with_timeouts_in_the_main_thread():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    grades = grade_math(["\\boxed{2\\sqrt{2}}", "\\boxed{x^2+2x+1}", "\\boxed{3}", "no box"],
                        ["\\sqrt{8}", "(x+1)^2", "\\frac{1}{2}", "1"], workers=0)
    assert [(g.correct, g.status) for g in grades] == [(True, "ok"), (True, "ok"), (False, "ok"), (False, "no_answer")]
    start = time.monotonic()
    (slow,) = grade_math([ADVERSARIAL[0]], ["3"], timeout=1.0, workers=0)
    assert slow.status == "timeout" and time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGALRM) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_item_timeout_that_lands_in_a_finalizer_is_raised_again(monkeypatch):
    """Python drops an exception raised in `__del__` (the collector's finalizers run inside any
    item): the timeout must come again until the item stops, not let it run on untimed."""
    import signal

    from rlvr_linearity.evaluate import grading

    class Slow:
        def __del__(self):  # busy through the first alarm, which is dropped here
            until = time.monotonic() + 0.3
            while time.monotonic() < until:
                pass

    def item(extracted, gold):
        Slow()  # finalised at once, inside the item
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            pass
        return True

    monkeypatch.setattr(grading, "_verify", item)
    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    assert grading._grade_items([("1", "1"), ("2", "2")], timeout=0.2) == ["timeout", "timeout"]
    assert time.monotonic() - start < 2.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) == before


def test_workers_zero_from_a_thread():
    """verl calls rewards from threads: no signal there, grading still works (untimed)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        grades = ex.submit(grade_math, ["\\boxed{2\\sqrt{2}}", "\\boxed{7}"], ["\\sqrt{8}", "\\sqrt{8}"],
                           5.0, 0).result(60)
    assert [g.correct for g in grades] == [True, False]


def test_verl_reward_grades_sympy_answers():
    from rlvr_linearity.train import verl_reward

    assert verl_reward._grade("so \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 5.0) == 1.0
    assert verl_reward._grade("so \\boxed{(x+1)^2}", "x^2+2x+1", 5.0) == 1.0
    assert verl_reward._grade("so \\boxed{3\\sqrt{2}}", "\\sqrt{8}", 5.0) == 0.0
    out = verl_reward.compute_score("deepscaler", "so \\boxed{2\\sqrt{2}}", "\\sqrt{8}")
    assert out == {"score": 1.0, "acc": 1.0}
