"""Benchmark metrics: unbiased pass@k (Chen et al. 2021), avg@n, bootstrap CI, macro average."""

from __future__ import annotations

import math
import random


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of n samples (c correct) hold a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile 95% interval of the mean over problems (resampled with replacement)."""
    rng = random.Random(seed)
    m = len(values)
    means = sorted(sum(values[rng.randrange(m)] for _ in range(m)) / m for _ in range(n_boot))
    return [means[int(0.025 * (n_boot - 1))], means[int(0.975 * (n_boot - 1))]]


def benchmark_metrics(correct_by_problem: dict[str, list[bool]], n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of one benchmark from each problem's per-sample correctness.

    `accuracy` == `avg@n` (mean over problems of the fraction of correct samples); pass@k for
    every k up to the smallest sample count. No samples at all is a ValueError (metrics of
    nothing would be NaN, which metrics.json must never hold).
    """
    counts = [(len(v), sum(bool(x) for x in v)) for v in correct_by_problem.values() if v]
    if not counts:
        raise ValueError("no graded samples")
    per_problem = [c / n for n, c in counts]
    avg = sum(per_problem) / len(per_problem)
    k_max = min(n for n, _ in counts)
    return {
        "n_problems": len(counts),
        "n_samples": sum(n for n, _ in counts),
        "accuracy": avg,
        "pass@k": {str(k): sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in range(1, k_max + 1)},
        "avg@n": avg,
        "accuracy_ci95": _bootstrap_ci(per_problem, n_boot, seed),
    }


def macro_average(per_benchmark: dict[str, dict]) -> dict:
    """Unweighted mean of accuracy and pass@1 over benchmarks (every one has samples)."""
    accs = [m["accuracy"] for m in per_benchmark.values()]
    p1 = [m["pass@k"]["1"] for m in per_benchmark.values()]
    if not accs:
        raise ValueError("no benchmarks to average")
    return {"n_benchmarks": len(accs), "accuracy": sum(accs) / len(accs), "pass@1": sum(p1) / len(p1)}


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, … up to n, and n itself: the k of pass@k worth showing (every k is in metrics.json)."""
    ks = [1 << i for i in range(max(n, 1).bit_length()) if 1 << i <= n]
    return ks + ([n] if n not in ks else [])


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs under Binomial(a_only + b_only, 1/2)."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def paired_comparison(a: dict[str, list[bool]], b: dict[str, list[bool]], n_boot: int = 2000, seed: int = 0) -> dict:
    """Model a vs model b on the problems both answered (per-problem correctness of each sample).

    `diff` is mean accuracy a - b over those problems, `diff_ci95` its paired percentile
    bootstrap interval (problems resampled together). `p_value`: exact McNemar when every
    problem has one sample (correct or not), else the paired bootstrap's two-sided p (twice the
    smaller share of resampled differences on either side of 0).
    """
    ids = sorted(set(a) & set(b))
    ids = [i for i in ids if a[i] and b[i]]
    if not ids:
        raise ValueError("no problems in common")
    fa = [sum(map(bool, a[i])) / len(a[i]) for i in ids]
    fb = [sum(map(bool, b[i])) / len(b[i]) for i in ids]
    d = [x - y for x, y in zip(fa, fb)]
    m = len(d)
    rng = random.Random(seed)
    boots = sorted(sum(d[rng.randrange(m)] for _ in range(m)) / m for _ in range(n_boot))
    out = {"n_problems": m, "accuracy_a": sum(fa) / m, "accuracy_b": sum(fb) / m, "diff": sum(d) / m,
           "diff_ci95": [boots[int(0.025 * (n_boot - 1))], boots[int(0.975 * (n_boot - 1))]]}
    if all(len(a[i]) == 1 and len(b[i]) == 1 for i in ids):
        a_only = sum(1 for x in d if x > 0)
        b_only = sum(1 for x in d if x < 0)
        out.update(test="mcnemar_exact", a_only=a_only, b_only=b_only, p_value=mcnemar_exact(a_only, b_only))
    else:
        side = min(sum(x <= 0 for x in boots), sum(x >= 0 for x in boots)) / n_boot
        out.update(test="paired_bootstrap", p_value=min(1.0, 2 * side))
    return out
