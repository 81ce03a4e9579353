"""Sandbox overhead per program: a trivial program through the full sandbox vs bare python, in
stdin mode (the program is the whole run) and in HumanEval mode (the launcher also runs a
one-assert test through the proxy). Wall time and CPU time (user + system of every process of
the run, which a loaded machine inflates less than wall time).

    python scripts/bench_sandbox.py [--n 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import time

from rlvr_linearity.evaluate.sandbox import _python, run_sandboxed

_TESTS = {"prompt": "", "test": "def check(candidate):\n    assert candidate('hi') == 'hi'\n"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    runs = {"stdin": lambda: run_sandboxed("print(input())", "stdin", stdin="hi\n"),
            "humaneval": lambda: run_sandboxed("def f(x):\n    return x\n", "humaneval", entry="f", tests=_TESTS),
            "bare": lambda: subprocess.run([_python(), "-I", "-S", "-c", "print(input())"], input="hi\n",
                                           capture_output=True, text=True)}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.n):
        for name, fn in runs.items():
            t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            res = fn()
            u = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(u.ru_utime + u.ru_stime - r.ru_utime - r.ru_stime)
            assert name == "bare" or res.verdict in ("ok", "passed"), res

    def ms(x):
        return round(1000 * x, 1)

    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}
    out = {"n": args.n, "bare_python_median_ms": ms(med["bare"][0]), "bare_python_cpu_median_ms": ms(med["bare"][1])}
    for k in ("stdin", "humaneval"):
        out[f"{k}_mode"] = {"median_ms": ms(med[k][0]), "overhead_median_ms": ms(med[k][0] - med["bare"][0]),
                            "p90_ms": ms(sorted(wall[k])[int(0.9 * (args.n - 1))]),
                            "cpu_median_ms": ms(med[k][1]), "cpu_overhead_median_ms": ms(med[k][1] - med["bare"][1])}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
