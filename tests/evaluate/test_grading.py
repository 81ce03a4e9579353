"""Math grading: boxed extraction, math-verify equivalence, timeouts and the fast path."""

from __future__ import annotations

import time

import pytest

from rlvr_linearity.evaluate.answers import extract_boxed, find_boxed
from rlvr_linearity.evaluate.grading import GRADERS, MathGrader, grade_math


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
        "I give up.",
    ]
    golds = ["0.5", "\\frac{1}{2}", "\\frac{1}{2}", "12", "12", "12", "\\sqrt{8}", "(x+1)^2", "3"]
    grades = grade_math(responses, golds)
    assert [g.correct for g in grades] == [True, True, False, True, True, False, True, True, False]
    assert [g.status for g in grades] == ["ok"] * 8 + ["no_answer"]
    assert (grades[0].extracted, grades[0].gold_extracted) == ("\\frac{1}{2}", "\\frac{1}{2}")
    assert (grades[3].extracted, grades[6].gold_extracted) == ("12", "\\sqrt{8}")


def test_timeout_gives_verdict_and_pool_recovers():
    grader = MathGrader(workers=1, timeout=1.0)
    try:

        start = time.monotonic()
        fut = grader._pool.schedule(time.sleep, args=(30,), timeout=0.5)
        with pytest.raises(Exception):
            fut.result()
        assert time.monotonic() - start < 10
        # the killed worker is replaced: ordinary grading still works
        out = grader.grade(["\\boxed{\\frac{2}{4}}"], ["\\frac12"])
        assert out[0].correct and out[0].status == "ok"
    finally:
        grader.close()


def test_length_mismatch():
    with pytest.raises(ValueError):
        grade_math(["\\boxed{1}"], [])


def test_identical_pairs_graded_once_and_in_order():
    out = grade_math(["\\boxed{2\\sqrt{2}}", "\\boxed{\\sqrt{8}}", "\\boxed{2\\sqrt{2}}", "\\boxed{3}"],
                     ["\\sqrt{8}", "2\\sqrt{2}", "\\sqrt{8}", "\\sqrt{8}"])
    assert [g.correct for g in out] == [True, True, True, False]
    assert [g.extracted for g in out] == ["2\\sqrt{2}", "\\sqrt{8}", "2\\sqrt{2}", "3"]
    assert [g.gold_extracted for g in out] == ["\\sqrt{8}", "2\\sqrt{2}", "\\sqrt{8}", "\\sqrt{8}"]


ADVERSARIAL = ["\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "\\boxed{9^{9^{9^{9^{9}}}}}",
               "\\boxed{(10^{100})!}", "\\boxed{" + "1+" * (1 << 19) + "1}"]


def test_adversarial_items_time_out_inside_the_worker_and_the_rest_is_graded():
    grader = MathGrader(workers=2, timeout=3.0)
    try:
        responses = ADVERSARIAL + ["\\boxed{2\\sqrt{2}}", "\\boxed{(x+1)^2}"] * 20
        golds = ["3"] * len(ADVERSARIAL) + ["\\sqrt{8}", "x^2+2x+1"] * 20
        start = time.monotonic()
        out = grader.grade(responses, golds)
        assert time.monotonic() - start < 40
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
    pairs = [(f"\\boxed{{{k}\\sqrt{{2}}}}", f"\\sqrt{{{2 * k * k}}}") for k in range(1, 40)] + [("hang", "1")]
    verdicts = grader._run(pairs)
    assert [v[0] for v in verdicts[:39]] == [True] * 39 and verdicts[39] == "timeout"
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

    monkeypatch.setattr(grading, "_grade", lambda grader, response, gold: item(response, gold))
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


# --------------------------------------------------------------------------- the grader registry


def test_find_boxed_first_last_and_commands():
    text = "\\fbox{0} then \\boxed{1} and \\boxed{2}"
    assert find_boxed(text, last=False) == "0" and find_boxed(text) == "2"
    assert find_boxed(text, last=False, commands=("\\boxed",)) == "1"
    assert find_boxed("\\boxedx{1} \\boxed{3}", last=False) == "3"


def _math_verify_verdict(gold: str, pred: str) -> bool:
    """math-verify's own verdict, as its tests compute it (independent of the project's code)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return verify(parse(gold, cfg), parse(pred, cfg))


# Written for this project in the forms math-verify's regression tests cover: (gold, response, verdict).
MATH_VERIFY_CASES = [
    # answers in LaTeX without a box
    ("(3,2)", "Both checks pass. The final answer is $(3,2)$.", True),
    ("\\frac{7}{2}", "Solving gives \\[ x = \\frac{7}{2} \\]", True),
    ("9", "Answer: \\( 4 + 5 \\)", True),
    ("9", "Answer: \\( 4 + 4 \\)", False),
    ("1/3", "so the ratio is $\\frac13$", True),
    # several boxed parts of one answer
    ("(2,2),(6,2)", "The pairs are \\boxed{(2, 2)} and \\boxed{(6, 2)}.", True),
    ("1,3", "So $x=\\boxed{1}$ or $x=\\boxed{3}$.", True),
    ("1,3", "So $x=\\boxed{1}$ or $x=\\boxed{4}$.", False),
    # sets and intervals
    ("\\{1,2\\}", "the set is $\\boxed{\\{2,1\\}}$", True),
    ("[0,1)", "It lies in $\\boxed{[0,1)}$.", True),
    ("[0,1)", "It lies in $\\boxed{(0,1)}$.", False),
    ("(-\\infty,2]", "x \\in \\boxed{(-\\infty, 2]}", True),
    # equations
    ("y = 2x+1", "The line is \\boxed{y=1+2x}.", True),
    ("x=2", "Hence \\boxed{2}.", True),
    ("y = 2x+1", "The line is \\boxed{y=2x-1}.", False),
    # numbers
    ("7425000", "The total is 7,425,000 dollars.", True),
    ("2\\sqrt{2}", "We get $\\boxed{\\sqrt{8}}$", True),
    ("0.5", "the probability is \\boxed{\\frac{1}{2}}", True),
    ("\\text{Evelyn}", "so $\\boxed{\\text{Evelyn}}$ is fastest", True),
]


@pytest.mark.parametrize("gold,response,expected", MATH_VERIFY_CASES)
def test_default_grader_agrees_with_math_verify(gold, response, expected):
    (g,) = grade_math([response], [gold])
    assert g.correct is expected
    assert _math_verify_verdict(f"${gold}$", response) is expected  # math-verify's own verdict
    assert g.status == "ok" and g.extracted and g.gold_extracted


@pytest.mark.parametrize("response,gold,expected", [
    ("\\boxed{x = 2 = 3}", "3", False),  # a chain stating 2 = 3: math-verify alone accepts it
    ("\\boxed{x = 3 = 2}", "2", False),
    ("\\boxed{\\approx 3}", "3", False),  # an approximation is not the answer
    ("so $x \\approx 3$", "3", False),
    ("\\boxed{x = 1 + 1 = 2}", "2", True),  # a consistent chain keeps its value
    ("\\boxed{50\\%}", "50", True),  # a trailing percent sign against a bare gold
    ("\\boxed{50\\%}", "49", False),
    ("\\boxed{28}", "28\\%", True),
])
def test_math_edge_cases(response, gold, expected):
    (g,) = grade_math([response], [gold])
    assert (g.correct, g.status) == (expected, "ok")


def test_two_stage_parsing_gives_the_parsers_own_results():
    """SLL-first parsing (prepare_math_verify) returns exactly what full LL prediction returns."""
    from latex2sympy2_extended import latex2sympy
    from sympy import srepr

    from rlvr_linearity.evaluate import grading

    grading.prepare_math_verify()
    corpus = ["12", "-\\frac{3}{8}", "3\\sqrt{2}", "x^2+24x+144", "(x+12)^2", "[12, 40)", "(1, 2, 3)", "x = 2 = 3",
              "\\{1,2\\}", "(2,2),(6,2)", "50\\%", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "y=2x+1",
              "\\frac{\\pi}{2}", "e^{i\\pi}", "\\sin^2 x + \\cos^2 x", "a_1 + a_2", "2 \\le x < 5", "f(x) = x^2"]
    stage = latex2sympy.__globals__["_Latex2Sympy"]
    two_stage = stage.parse
    for text in corpus:
        fast = srepr(latex2sympy(text))  # trusted test input: str() of sympy is safe here
        stage.parse = two_stage.__wrapped_parse__
        try:
            slow = srepr(latex2sympy(text))
        finally:
            stage.parse = two_stage
        assert fast == slow, text


LIN_CASES = [  # (response, gold, verdict) by LIN's rules (docs/methods.md §D1, PRM800K grade_answer)
    ("\\boxed{1} and later \\boxed{2}", "1", True),  # the FIRST box
    ("\\boxed{1} and later \\boxed{2}", "2", False),
    ("\\fbox{7}", "7", True),
    ("so it is \\frac{3}{4} or \\dfrac{5}{6}", "\\frac{5}{6}", True),  # no box: the last fraction
    ("we get $12$ apples", "12", True),  # the last $...$
    ("the ratio is 3/4", "\\frac{3}{4}", True),  # the last a/b
    ("\\boxed{\\frac{1}{2}}", "\\frac{2}{4}", False),  # an unreduced gold must match as written
    ("\\boxed{10/2}", "5", False),  # an integer gold needs an integer
    ("\\boxed{5.0}", "5", True),
    ("\\boxed{5 \\text{ cm}}", "5", True),  # units dropped
    ("\\boxed{2.5 million}", "2.5\\cdot 10^6", True),  # scale words
    ("\\boxed{2 million}", "2000000", False),  # ... but an integer gold needs an integer string
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),  # sympy where no exact form is demanded
    ("\\boxed{(1, \\frac{\\pi}{2})}", "\\left(1, \\frac{\\pi}{2}\\right)", True),  # element-wise
    ("\\boxed{[1, 2)}", "[1,2]", False),  # brackets must match
    ("\\boxed{\\text{Evelyn}}", "\\text{evelyn}", True),  # case-insensitive text
]


@pytest.mark.parametrize("response,gold,expected", LIN_CASES)
def test_lin_grader_hand_checked(response, gold, expected):
    (g,) = grade_math([response], [gold], grader="lin")
    assert g.correct is expected, g


RELEX_CASES = [  # (response, gold, verdict) by RELEX's rules (docs/methods.md §D2, math_equal)
    ("Thus the answer is 42.", "42", True),
    ("Adding up, we get 40 + 2 = 42", "42", True),  # the final bare number
    ("\\boxed{1} and then \\boxed{2}", "2", True),  # the LAST box
    ("\\boxed{1} and then \\boxed{2}", "1", False),
    ("so \\boxed 7$ done", "7", True),  # "boxed" without a brace: up to $
    ("\\boxed{0.25}", "25", True),  # gold / 100
    ("\\boxed{2500}", "25", True),  # gold x 100
    ("\\boxed{3.14159}", "3.1416", True),  # within a relative 1e-4
    ("\\boxed{3.14}", "3.1416", False),
    ("\\boxed{1,234}", "1234", True),  # commas dropped from numbers
    ("\\boxed{y = 2x + 1}", "2x+1", True),  # "y=" prefix dropped
    ("\\boxed{(1,2)}", "(1, 2)", True),
    ("\\boxed{[1,2]}", "(1,2]", False),
    ("\\boxed{[1,2]}", "[1,2)", True),  # RELEX's lenient bracket comparison
    ("\\boxed{\\begin{bmatrix} 1 & 2 \\end{bmatrix}}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}", True),
    ("\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt{2}", True),  # symbolic equality
    ("\\boxed{5^\\circ}", "5", True),
]


@pytest.mark.parametrize("response,gold,expected", RELEX_CASES)
def test_relex_grader_hand_checked(response, gold, expected):
    (g,) = grade_math([response], [gold], grader="relex")
    assert g.correct is expected, g


WRONG = [("\\boxed{13}", "12"), ("The answer is 41.", "42"), ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
         ("\\boxed{(1,3)}", "(1,2)"), ("\\boxed{x^2+1}", "(x+1)^2"), ("\\boxed{[0,2)}", "[0,1)"),
         ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"), ("no answer here", "7"), ("", "7"), ("\\boxed{x = 2 = 3}", "3"),
         ("\\boxed{-5}", "5"), ("\\boxed{\\text{Bob}}", "\\text{Evelyn}"), ("\\boxed{1} \\boxed{2}", "1,3")]


@pytest.mark.parametrize("grader", GRADERS)
def test_no_grader_accepts_a_wrong_answer(grader):
    grades = grade_math([r for r, _ in WRONG], [g for _, g in WRONG], grader=grader)
    assert [g.correct for g in grades] == [False] * len(WRONG)
    assert all(g.status in ("ok", "no_answer") for g in grades)


@pytest.mark.parametrize("grader", ["lin", "relex"])
def test_paper_graders_give_every_adversarial_response_a_verdict(grader):
    grader_pool = MathGrader(workers=2, timeout=1.0, grader=grader)
    try:
        start = time.monotonic()
        out = grader_pool.grade(ADVERSARIAL + ["\\boxed{\\frac{1}{2}}"], ["3"] * len(ADVERSARIAL) + ["0.5"])
        assert time.monotonic() - start < 20
        assert len(out) == len(ADVERSARIAL) + 1 and not any(g.correct for g in out[:-1]) and out[-1].correct
    finally:
        grader_pool.close()


def test_unknown_grader_is_one_line():
    from rlvr_linearity.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown grader 'nope'"):
        grade_math(["\\boxed{1}"], ["1"], grader="nope")
