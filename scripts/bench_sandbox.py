"""Sandbox overhead per program: a trivial program through the full sandbox vs bare python.

    python scripts/bench_sandbox.py [--n 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from rlvr_linearity.evaluate.sandbox import _WRAPPER, _python, run_sandboxed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    files = {"prog.py": "print(input())", "wrapper.py": _WRAPPER}
    sand, bare = [], []
    for _ in range(args.n):
        t = time.perf_counter()
        res = run_sandboxed(files, ["/tmp/box/wrapper.py", "stdin"], "hi\n")
        sand.append(time.perf_counter() - t)
        assert res.verdict == "ok" and res.stdout == "hi\n", res
        t = time.perf_counter()
        subprocess.run([_python(), "-I", "-S", "-c", "print(input())"], input="hi\n", capture_output=True, text=True)
        bare.append(time.perf_counter() - t)
    med_s, med_b = statistics.median(sand), statistics.median(bare)
    print(json.dumps({"n": args.n, "sandboxed_median_ms": round(1000 * med_s, 1),
                      "bare_python_median_ms": round(1000 * med_b, 1),
                      "overhead_median_ms": round(1000 * (med_s - med_b), 1),
                      "sandboxed_p90_ms": round(1000 * sorted(sand)[int(0.9 * (args.n - 1))], 1)}, indent=2))


if __name__ == "__main__":
    main()
