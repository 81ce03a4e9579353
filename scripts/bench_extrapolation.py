"""Benchmark of `rlvr extrapolate` (RELEX) on the synthetic ~120M-parameter bf16 trajectory of
`bench_linearity.py` (base + 20 checkpoints, same builder, same cache path): one window x one
target, then 4 windows x 4 targets, each a separate `rlvr extrapolate` process whose start-up
(`rlvr extrapolate --cfg job`) is subtracted. Prints a markdown table for docs/performance.md.

    nice -n 10 .venv/bin/python scripts/bench_extrapolation.py /tmp/bench_lin_traj

Reference points: floor = reading the window's tensors once and converting them to float32 (in
this process, page cache warm, one torch thread: the fastest way); "iter_blocks" = the reader
alone over the same window in RELEX's blocks; "write 16 outputs" = ModelWriter writing 16 bf16
models. Every run is measured `--repeats` times and the floor before and after the runs; the
fastest of each counts. On a loaded machine compare CPU seconds (start-up subtracted): wall
clock then mostly measures the other processes.
Targets (issue 4): 1x1 <= 3x floor, peak anonymous RSS < 1.5 GB, 4x4 <= 1.5 x (1x1 + write 16),
no temporary file larger than the outputs. Peak RSS (VmHWM, see bench_linearity.child) counts safetensors pages mapped
from the page cache (whole tensors read through safe_open; the streaming reader preads instead);
the anonymous part is what the process allocates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linearity import best_floor, build, child, cpu_s, du, shapes  # noqa: E402  (shared synthetic trajectory)

HISTORY, TARGET = 15, 60
WINDOWS, TARGETS = [5, 10, 15, 20], [25, 40, 60, 100]


def floor(root: Path, steps) -> tuple[float, float]:
    """(wall s, CPU s): read every tensor of the given steps once, converted to float32."""
    return best_floor(root, steps)


def read_window(root: Path, steps, dtype=None) -> tuple[float, float]:
    """(wall s, CPU s) of `Trajectory.iter_blocks` over every tensor of `steps` in RELEX's blocks
    (stored dtype, or `dtype`): the reader alone, without the Gram and output arithmetic."""
    from rlvr_linearity.trajectory import open_trajectory

    traj = open_trajectory(path=str(root))
    kw = {} if dtype is None else {"dtype": dtype}
    best = (float("inf"), float("inf"))
    for _ in range(2):
        t, c = time.perf_counter(), cpu_s()
        for name in traj.tensor_names:
            for _ in traj.iter_blocks(name, steps, 1 << 22, **kw):
                pass
        best = (min(best[0], time.perf_counter() - t), min(best[1], cpu_s() - c))
    return best


def write_outputs(root: Path, out: Path, n: int) -> float:
    """Time for ModelWriter to write `n` bf16 models (the base's tensors), one tensor at a time."""
    from contextlib import ExitStack

    from rlvr_linearity.trajectory import ModelFiles, ModelWriter

    base = ModelFiles(root / "step_0")
    t = time.perf_counter()
    with ExitStack() as stack:
        ws = [stack.enter_context(ModelWriter(out / f"w{i}", template=base)) for i in range(n)]
        for name in base.tensor_names:
            x = base.read(name).to(torch.float32)
            for w in ws:
                w.write(name, x)
    return time.perf_counter() - t


class TempWatch(threading.Thread):
    """Polls a directory for the largest temporary file (ModelWriter's `*.tmp-*`, cache temps)."""

    def __init__(self, *dirs: Path):
        super().__init__(daemon=True)
        self.dirs, self.peak, self.stop = dirs, 0, False

    def run(self):
        while not self.stop:
            for d in self.dirs:
                for p in Path(d).rglob("*") if Path(d).exists() else []:
                    try:
                        if ".tmp" in str(p) and p.is_file():
                            self.peak = max(self.peak, p.stat().st_size)
                    except OSError:
                        pass
            time.sleep(0.2)


def measured(args, env, watch_dirs):
    w = TempWatch(*watch_dirs)
    w.start()
    res = child(args, env)
    w.stop = True
    w.join()
    return (*res, w.peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="the synthetic trajectory (built by bench_linearity's builder if absent)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2,
                    help="trials of every run, and floors after the runs too: the fastest of each counts")
    a = ap.parse_args()
    build(a.path, a.steps)
    n_params = sum(int(torch.Size(s).numel()) for s in shapes().values())
    window_steps = list(range(HISTORY + 1))
    floor(a.path, window_steps)  # warm the page cache
    fl, fl_cpu = floor(a.path, window_steps)
    reads = [("iter_blocks: the window's blocks, stored dtype (reader alone)", read_window(a.path, window_steps))]
    try:
        reads.append(("iter_blocks: the window's blocks, dtype=float32 (reader alone)",
                      read_window(a.path, window_steps, torch.float32)))
    except TypeError:  # a reader without the dtype argument
        pass

    work = Path(tempfile.mkdtemp(prefix="bench_ex_"))
    env = {**os.environ, "RLVR_CACHE_DIR": str(work / "cache"), "WANDB_MODE": "disabled"}
    common = [f"trajectory.path={a.path}", "logger=none", "hydra.job.chdir=false"]
    starts = [child(["extrapolate", *common, "--cfg", "job"], env) for _ in range(2)]
    start, start_cpu = min(r[0] for r in starts), min(r[1] for r in starts)
    w16 = write_outputs(a.path, work / "write16", 16)
    out_w16 = du(work / "write16")

    rows = []
    runs = [("RELEX 1 window (history 15) x 1 target", ["extrapolate.cache=false", f"extrapolate.history={HISTORY}",
                                                        f"extrapolate.targets=[{TARGET}]"], 1),
            ("RELEX 4 windows x 4 targets", ["extrapolate.cache=false", f"extrapolate.windows={WINDOWS}",
                                             f"extrapolate.targets={TARGETS}"], 16)]
    times, cpus = {}, {}
    for label, extra, n_out in runs:
        trials = []
        for r in range(max(1, a.repeats)):
            out = work / f"{label.split()[1]}-{r}"  # a fresh output: a finished one would be reused
            trials.append((measured(["extrapolate", *common, *extra, f"output_dir={out}"], env, [out, work / "cache"]),
                           out))
        (wall, cpu, rss, anon, rc, tmp_peak), out = min(trials, key=lambda t: t[0][0])
        secs, cpu = wall - start, cpu - start_cpu
        times[n_out] = secs
        cpus[n_out] = cpu
        outputs = du(out / "extrapolate")
        info = json.loads((out / "extrapolate" / "extrapolation.json").read_text()) if rc == 0 else {}
        rows.append((label, secs, cpu, rss, anon, tmp_peak, outputs, rc, info.get("timings", {})))
        print(f"  {label}: {secs:.1f}s, {cpu:.1f} CPU s, rc {rc}, peak RSS {rss:.0f} MiB, anonymous {anon:.0f} MiB",
              flush=True)

    if a.repeats > 1:  # the floor again, after the runs: the fastest of all counts
        again = floor(a.path, window_steps)
        fl, fl_cpu = min(fl, again[0]), min(fl_cpu, again[1])

    print(f"\nSynthetic Qwen2 trajectory: {n_params / 1e6:.0f}M parameters, base + {a.steps} bf16 checkpoints; "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}.")
    print(f"Start-up of `rlvr extrapolate --cfg job`: {start:.1f} s, {start_cpu:.1f} CPU s (both subtracted). "
          f"Floor (read steps 0..{HISTORY} once, to float32, 1 torch thread): {fl:.1f} s, {fl_cpu:.1f} CPU s. "
          f"Writing 16 bf16 outputs: {w16:.1f} s ({out_w16 / 2**30:.2f} GiB). "
          f"Load average at the end: {os.getloadavg()[0]:.1f}.\n")
    print("| run | seconds | x floor | CPU s | CPU x floor | peak RSS (MiB) | anonymous (MiB) | largest temp file (MiB) "
          "| outputs (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| floor: read the window's tensors once, to float32 | {fl:.1f} | 1.00 | {fl_cpu:.1f} | 1.00 | – | – | – | – |")
    for label, (secs, cpu) in reads:
        print(f"| {label} | {secs:.1f} | {secs / fl:.2f} | {cpu:.1f} | {cpu / fl_cpu:.2f} | – | – | – | – |")
    print(f"| ModelWriter: 16 bf16 outputs | {w16:.1f} | {w16 / fl:.2f} | – | – | – | – | – | {out_w16 / 2**20:.0f} |")
    for label, secs, cpu, rss, anon, tmp_peak, outputs, rc, _ in rows:
        flag = "" if rc == 0 else f" (rc {rc})"
        print(f"| {label}{flag} | {secs:.1f} | {secs / fl:.2f} | {cpu:.1f} | {cpu / fl_cpu:.2f} | {rss:.0f} | {anon:.0f} | "
              f"{tmp_peak / 2**20:.0f} | {outputs / 2**20:.0f} |")
    one, sweep = times.get(1, float("nan")), times.get(16, float("nan"))
    print(f"\nChecks: 1x1 / floor = {one / fl:.2f} wall, {cpus.get(1, float('nan')) / fl_cpu:.2f} CPU (target <= 3); "
          f"anonymous RSS 1x1 = {rows[0][4]:.0f} MiB (target < 1536); 4x4 / (1x1 + write 16) = {sweep / (one + w16):.2f} "
          f"(target <= 1.5); largest temp file <= outputs: {all(r[5] <= r[6] for r in rows)}.")
    for label, *_, timings in rows:
        print(f"  {label}: in-process timings {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
