"""Math grading throughput and adversarial robustness.

    python scripts/bench_grading.py [--n 2000] [--workers 2] [--timeout 5]

Ordinary answers: a mix like real model output (integers, fractions, radicals, expressions,
wrong answers, missing boxes). Adversarial: deep nesting, huge exponents, giant factorials,
megabyte responses; every sample must get a verdict and none may outlast the timeout by much.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from rlvr_linearity.evaluate.grading import MathGrader


def ordinary(n: int, seed: int = 0, per_problem: int = 1) -> tuple[list[str], list[str]]:
    """`per_problem` samples share a problem (and its gold), as in pass@k evaluation or a GRPO group."""
    rng = random.Random(seed)
    resp, gold = [], []
    for i in range(n):
        prob = random.Random(seed * 100003 + i // per_problem)
        a, b = prob.randint(1, 99), prob.randint(2, 99)
        kind = (i // per_problem) % 6
        if kind in (0, 1):  # integers (the most common case)
            g = str(a * b)
            p = g if rng.random() < 0.6 else str(a * b + 1)
        elif kind == 2:
            g, p = f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}"
        elif kind == 3:
            g, p = f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}"
        elif kind == 4:
            g, p = f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"
        else:
            g, p = str(a), None
        resp.append("Step by step ... " * 20 + (f"so the answer is $\\boxed{{{p}}}$." if p else "I give up."))
        gold.append(g)
    return resp, gold


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
    args = ap.parse_args()
    grader = MathGrader(workers=args.workers, timeout=args.timeout)
    grader.grade(["\\boxed{\\frac12}"] * args.workers, ["0.5"] * args.workers)  # warm the workers
    resp, gold = ordinary(args.n, per_problem=args.per_problem)
    t = time.perf_counter()
    grades = grader.grade(resp, gold)
    dt = time.perf_counter() - t
    sym = [i for i in range(args.n) if (i // args.per_problem) % 6 in (2, 3, 4)]
    t = time.perf_counter()
    grader.grade([resp[i] for i in sym], [gold[i] for i in sym])
    dt_sym = time.perf_counter() - t
    report = {
        "ordinary": {"n": args.n, "per_problem": args.per_problem, "seconds": round(dt, 3), "answers_per_s": round(args.n / dt, 1),
                     "statuses": {s: sum(g.status == s for g in grades) for s in ("ok", "timeout", "error", "no_answer")}},
        "sympy_only": {"n": len(sym), "answers_per_s": round(len(sym) / dt_sym, 1),
                       "all_correct": all(g.correct for g in grader.grade([resp[i] for i in sym], [gold[i] for i in sym]))},
        "adversarial": {},
    }
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
