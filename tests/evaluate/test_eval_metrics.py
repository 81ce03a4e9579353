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
