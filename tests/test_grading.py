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
