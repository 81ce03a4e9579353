"""Math grading throughput and adversarial robustness.

    python scripts/bench_grading.py [--n 2000] [--workers 2] [--timeout 5] [--per-problem 1] [--mix varied]
                                    [--grader math_verify|lin|relex]

Ordinary answers: a mix like real model output. `--mix varied` (default): integers (3/8 of the
problems), fractions, radicals, polynomials, intervals/tuples and missing boxes; each sample
writes its problem's answer in one of several equivalent forms (identical, re-spaced,
\\dfrac/\\left..\\right, unreduced or expanded) or gets it wrong, so the n samples of a problem
are not n copies. `--mix legacy`: the earlier generator (a third of the answers in a form only
sympy can match, identical within a problem). `--per-problem 1`: every sample has its own gold
(pass@1 evaluation); 8 ~ a GRPO group. Reported: wall-clock answers/s, CPU seconds of this
process and its grading workers, and the load average (the machine may be shared).
Adversarial: deep nesting, huge exponents, giant factorials, megabyte responses; every sample
must get a verdict and none may outlast the timeout by much.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from rlvr_linearity.evaluate.grading import GRADERS, MathGrader


def _legacy(i: int, prob: random.Random, rng: random.Random, per_problem: int) -> tuple[str, str | None]:
    a, b = prob.randint(1, 99), prob.randint(2, 99)
    kind = (i // per_problem) % 6
    if kind in (0, 1):  # integers (the most common case)
        g = str(a * b)
        return g, (g if rng.random() < 0.6 else str(a * b + 1))
    if kind == 2:
        return f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}"
    if kind == 3:
        return f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}"
    if kind == 4:
        return f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"
    return str(a), None


def _varied(i: int, prob: random.Random, rng: random.Random, per_problem: int) -> tuple[str, str | None]:
    a, b = prob.randint(1, 99), prob.randint(2, 99)
    kind = (i // per_problem) % 8
    if kind in (0, 1, 2):  # integers (the most common case)
        g = str(a * b)
        forms = [g, g, g, f" {g} ", str(a * b + 1), str(a * b - b)]
    elif kind == 3:
        g = f"\\frac{{{a}}}{{{b}}}"
        forms = [g, f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"{a}/{b}", f"\\frac{{{a + 1}}}{{{b}}}"]
    elif kind == 4:
        g = f"{a}\\sqrt{{2}}"
        forms = [g, f"{a} \\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}", f"{a}\\sqrt2", f"{a + 1}\\sqrt{{2}}"]
    elif kind == 5:
        g = f"x^2+{2 * a}x+{a * a}"
        forms = [g, f"x^2 + {2 * a}x + {a * a}", f"(x+{a})^2", f"(x-{a})^2"]
    elif kind == 6:
        if prob.random() < 0.5:  # an interval
            g = f"[{a}, {a + b})"
            forms = [g, f"\\left[{a},{a + b}\\right)", f"[{a}, {a + b}]", f"[{a},{a + b})"]
        else:  # a triple
            g = f"({a}, {b}, {a + b})"
            forms = [g, f"({a},{b},{a + b})", f"\\left({a}, {b}, {a + b}\\right)", f"({b}, {a}, {a + b})"]
    else:
        return str(a), None
    return g, rng.choice(forms)


def ordinary(n: int, seed: int = 0, per_problem: int = 1, mix: str = "varied") -> tuple[list[str], list[str]]:
    """`per_problem` samples share a problem (and its gold), as in pass@k evaluation or a GRPO group."""
    rng = random.Random(seed)
    make = _varied if mix == "varied" else _legacy
    resp, gold = [], []
    for i in range(n):
        g, p = make(i, random.Random(seed * 100003 + i // per_problem), rng, per_problem)
        resp.append("Step by step ... " * 20 + (f"so the answer is $\\boxed{{{p}}}$." if p else "I give up."))
        gold.append(g)
    return resp, gold


def _cpu_seconds() -> float:
    """CPU time of this process and its children (the grading workers), as far as they live."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def adversarial() -> tuple[list[str], list[str], list[str]]:
    cases = {
        "deep_nesting": "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
        "deep_frac": "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
        "huge_exponent": "\\boxed{9^{9^{9^{9^{9}}}}}",
        "huge_power": "\\boxed{10^{10^{100}}}",
        "giant_factorial": "\\boxed{(10^{100})!}",
        "factorial_chain": "\\boxed{100000!!!}",
        "megabyte_text": "x" * (1 << 20) + " \\boxed{3}",
        "megabyte_box": "\\boxed{" + "1+" * (1 << 19) + "1}",
        "unbalanced": "\\boxed{" * 10000,
    }
    return list(cases), list(cases.values()), ["3"] * len(cases)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--per-problem", type=int, default=1, help="samples per problem (8 ~ a GRPO group)")
    ap.add_argument("--mix", choices=("varied", "legacy"), default="varied")
    ap.add_argument("--grader", choices=GRADERS, default="math_verify")
    ap.add_argument("--skip-adversarial", action="store_true")
    args = ap.parse_args()
    grader = MathGrader(workers=args.workers, timeout=args.timeout, grader=args.grader)
    grader.grade(["\\boxed{\\frac12}"] * max(1, args.workers), ["0.5"] * max(1, args.workers))  # warm the workers
    resp, gold = ordinary(args.n, per_problem=args.per_problem, mix=args.mix)
    load = os.getloadavg()[0]
    c, t = _cpu_seconds(), time.perf_counter()
    grades = grader.grade(resp, gold)
    dt, cpu = time.perf_counter() - t, _cpu_seconds() - c
    kinds, non_int = (6, (2, 3, 4)) if args.mix == "legacy" else (8, (3, 4, 5, 6))
    sym = [i for i in range(args.n) if (i // args.per_problem) % kinds in non_int]
    t = time.perf_counter()
    grader.grade([resp[i] for i in sym], [gold[i] for i in sym])
    dt_sym = time.perf_counter() - t
    report = {
        "ordinary": {"grader": args.grader, "n": args.n, "mix": args.mix, "per_problem": args.per_problem, "workers": args.workers,
                     "seconds": round(dt, 3), "answers_per_s": round(args.n / dt, 1), "cpu_seconds": round(cpu, 2),
                     "answers_per_cpu_s": round(args.n / max(cpu, 1e-9), 1), "load_avg_1m": round(load, 2),
                     "correct": sum(g.correct for g in grades),
                     "statuses": {s: sum(g.status == s for g in grades)
                                  for s in ("ok", "timeout", "error", "no_answer")}},
        "non_integer_only": {"n": len(sym), "answers_per_s": round(len(sym) / dt_sym, 1)},
        "adversarial": {},
    }
    if not args.skip_adversarial:
        names, aresp, agold = adversarial()
        for name, r, g in zip(names, aresp, agold):
            t = time.perf_counter()
            (out,) = grader.grade([r], [g])
            report["adversarial"][name] = {"seconds": round(time.perf_counter() - t, 2), "status": out.status,
                                           "correct": out.correct}
        t = time.perf_counter()
        together = grader.grade(aresp, agold)
        report["adversarial_batch"] = {"n": len(aresp), "seconds": round(time.perf_counter() - t, 2),
                                       "verdicts": len(together)}
    grader.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
