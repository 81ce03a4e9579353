"""pass@k against brute-force enumeration of k-subsets; avg@n; macro average."""

import itertools

import pytest

from rlvr_linearity.evaluate.metrics import benchmark_metrics, macro_average, pass_at_k


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (4, 1), (5, 2), (6, 6), (7, 3)])
def test_pass_at_k_bruteforce(n, c):
    samples = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_benchmark_metrics():
    m = benchmark_metrics({"a": [True, False, False, False], "b": [True, True, True, True], "c": [False] * 4})
    assert m["n_problems"] == 3 and m["n_samples"] == 12
    assert m["accuracy"] == pytest.approx((0.25 + 1 + 0) / 3) == m["avg@n"] == m["pass@k"]["1"]
    assert m["pass@k"]["4"] == pytest.approx(2 / 3)
    lo, hi = m["accuracy_ci95"]
    assert 0 <= lo <= m["accuracy"] <= hi <= 1
    assert macro_average({"x": m, "y": {**m, "accuracy": 1.0, "n_problems": 1}})["accuracy"] == pytest.approx(
        (m["accuracy"] + 1) / 2)


def test_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_powers_of_two_up_to_n():
    from rlvr_linearity.evaluate.metrics import powers_of_two

    assert powers_of_two(1) == [1]
    assert powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(12) == [1, 2, 4, 8, 12]
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64]


def test_mcnemar_exact_matches_enumeration():
    from fractions import Fraction

    from rlvr_linearity.evaluate.metrics import mcnemar_exact

    for b, c in [(0, 0), (3, 0), (5, 1), (2, 7), (10, 10), (1, 12)]:
        m = b + c
        # two-sided: every outcome at most as likely as the observed one under Binomial(m, 1/2)
        probs = [Fraction(math_comb(m, i), 2 ** m) for i in range(m + 1)]
        obs = probs[b] if m else Fraction(1)
        ref = sum(p for p in probs if p <= obs) if m else Fraction(1)
        assert mcnemar_exact(b, c) == pytest.approx(float(min(ref, 1)), abs=1e-12)


def math_comb(n, k):
    from math import factorial

    return factorial(n) // (factorial(k) * factorial(n - k))


def test_paired_comparison_binary_uses_mcnemar_and_a_paired_interval():
    from rlvr_linearity.evaluate.metrics import paired_comparison

    a = {f"p{i}": [i < 30] for i in range(40)}           # 30/40 correct
    b = {f"p{i}": [i < 20 or i >= 38] for i in range(40)}  # 22/40; a-only 10, b-only 2
    res = paired_comparison(a, b, seed=1)
    assert res["test"] == "mcnemar_exact" and (res["a_only"], res["b_only"]) == (10, 2)
    assert res["diff"] == pytest.approx(0.2)
    lo, hi = res["diff_ci95"]
    assert lo < 0.2 < hi and lo > 0  # a clear paired difference: the interval excludes 0
    assert res["p_value"] == pytest.approx(sum(math_comb(12, i) for i in (0, 1, 2, 10, 11, 12)) / 2 ** 12)
    same = paired_comparison(a, a)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_paired_comparison_several_samples_uses_bootstrap_on_shared_problems():
    from rlvr_linearity.evaluate.metrics import paired_comparison

    a = {f"p{i}": [True, i % 2 == 0, False, True] for i in range(30)}
    b = {f"p{i}": [False, False, False, i % 3 == 0] for i in range(30)}
    b["extra"] = [True] * 4  # not in a: ignored
    res = paired_comparison(a, b)
    assert res["test"] == "paired_bootstrap" and res["n_problems"] == 30
    assert res["diff"] > 0 and res["p_value"] < 0.01 and res["diff_ci95"][0] > 0
