"""Benchmark of tensor-partitioned runs (docs/scaling.md) on the synthetic trajectory of
scripts/bench_linearity.py: a single `rlvr linearity` (weight R² + low-rank pass) and a single
RELEX run, side by side with the same work split in N partition jobs and their merge.

    nice -n 10 .venv/bin/python scripts/bench_partitions.py /tmp/bench_traj [--steps 20] [--count 3]

Every run is a separate `rlvr` process (start-up, measured with `--cfg job`, subtracted); the
partitions run one after another (this machine has few cores: on a cluster they run at once,
so a partitioned run takes about its slowest partition). The merge is timed twice: as its own
process (`partition.merge=true`: that includes importing torch, numba and matplotlib, a constant
that a loaded machine stretches), and in this process, the merge function alone (what the
callback at the end of a sweep adds), with the figures it draws timed apart, since the single
run draws the same figures. Prints a markdown table, the merge's share of the single run's
time, and the per-byte cost that docs/scaling.md projects from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linearity import build, child, du, shapes  # noqa: E402  the same trajectory and process timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="where the synthetic trajectory is built (cached)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--count", type=int, default=3, help="partitions")
    ap.add_argument("--repeats", type=int, default=2, help="trials of each run; the fastest counts")
    a = ap.parse_args()
    build(a.path, a.steps)
    size = du(a.path)
    work = Path(tempfile.mkdtemp(prefix="bench_part_"))
    env = {**os.environ, "RLVR_CACHE_DIR": str(work / "cache"), "WANDB_MODE": "disabled"}
    os.environ["RLVR_CACHE_DIR"] = env["RLVR_CACHE_DIR"]  # the in-process merge composes the jobs' config
    history = a.steps // 2
    commands = {
        "linearity": ["linearity", f"trajectory.path={a.path}", "logger=none"],
        "RELEX": ["extrapolate", f"trajectory.path={a.path}", "logger=none", f"extrapolate.history={history}",
                  f"extrapolate.targets=[{2 * a.steps}]"],
    }
    startup = min(child([*commands["linearity"], "--cfg", "job"], env)[0] for _ in range(2))

    def timed(args: list[str], out: Path, fresh: bool) -> float:
        """The fastest of the trials of one run, net of start-up (fresh: outputs and Grams removed first)."""
        best = None
        for _ in range(max(1, a.repeats)):
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(work / "cache", ignore_errors=True)
            wall, _, _, _, rc = child([*args, f"output_dir={out}"], env)
            if rc != 0:
                raise SystemExit(f"rlvr {' '.join(args)} failed (exit {rc})")
            best = wall if best is None else min(best, wall)
            if not fresh:
                break
        return best - startup

    rows = []
    for label, args in commands.items():
        single = timed(args, work / f"{label}-single", fresh=True)
        out = work / f"{label}-parts"
        shutil.rmtree(work / "cache", ignore_errors=True)
        parts = [timed([*args, f"partition.count={a.count}", f"partition.index={i}"], out, fresh=False)
                 for i in range(a.count)]
        merges, inproc = [], []
        for _ in range(max(1, a.repeats)):
            shutil.rmtree(out / ("linearity" if label == "linearity" else "extrapolate"), ignore_errors=True)
            merges.append(timed([*args, f"partition.count={a.count}", "partition.merge=true"], out, fresh=False))
            shutil.rmtree(out / ("linearity" if label == "linearity" else "extrapolate"), ignore_errors=True)
            inproc.append(_merge_here(args, a.count, out))
        merge = min(merges)
        work_s, figures_s = min(inproc)
        same = _same(work / f"{label}-single", out, label)
        rows.append((label, single, parts, merge, work_s, figures_s, same))
        print(f"  {label}: single {single:.1f}s, partitions {', '.join(f'{p:.1f}' for p in parts)}s, "
              f"merge process {merge:.2f}s, merge function {work_s:.2f}s + figures {figures_s:.2f}s "
              f"({100 * work_s / single:.1f}% of single), identical: {same}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    n_params = sum(int(np.prod(s)) for s in shapes().values())
    print(f"\nSynthetic Qwen2 trajectory: {n_params / 1e6:.0f}M parameters, base + {a.steps} bf16 checkpoints, "
          f"{size / 2**30:.2f} GiB; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
          f"start-up {startup:.1f} s subtracted from every run.\n")
    print(f"| run | single run (s) | {a.count} partitions, each (s) | slowest partition (s) | merge process (s) "
          "| merge function (s) | its figures (s) | merge function / single | outputs identical "
          "| single run, s per GiB read |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for label, single, parts, merge, work_s, figures_s, same in rows:
        read = size if label == "linearity" else size * (history + 1) / (a.steps + 1)
        print(f"| {label} | {single:.1f} | {' / '.join(f'{p:.1f}' for p in parts)} | {max(parts):.1f} | {merge:.2f} "
              f"| {work_s:.2f} | {figures_s:.2f} | {100 * work_s / single:.1f}% | {same} "
              f"| {single / (read / 2**30):.2f} |")


def _merge_here(args: list[str], count: int, out: Path) -> tuple[float, float]:
    """(seconds of the merge function without its figures, seconds of the figures) in this process,
    the imports done: what the sweep's callback adds to the partitions' work."""
    from hydra import compose, initialize_config_dir

    from rlvr_linearity.paths import conf_dir
    from rlvr_linearity.schemas import register_configs

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(args[0], overrides=[*args[1:], f"output_dir={out}", f"partition.count={count}",
                                          "partition.merge=true"])
    if args[0] == "linearity":
        from rlvr_linearity.figures.linearity import linearity_figures
        from rlvr_linearity.linearity.partition import merge

        t = time.perf_counter()
        merge(cfg, out)
        total = time.perf_counter() - t
        loaded = {k: json.loads((out / "linearity" / f"{k}_r2.json" if k == "weights" else
                                 out / "linearity" / f"{k}.json").read_text()) for k in ("weights", "lowrank")}
        t = time.perf_counter()
        linearity_figures(out / "figures-again", weights=loaded["weights"], lowrank=loaded["lowrank"], logprobs=None)
        figures = time.perf_counter() - t
        return total - figures, figures
    from rlvr_linearity.extrapolate.partition import merge

    t = time.perf_counter()
    merge(cfg, out)
    return time.perf_counter() - t, 0.0


def _same(single: Path, merged: Path, label: str) -> str:
    """Whether the merged outputs are the single run's (JSON equal but for means and timings; tensors bit for bit)."""
    if label == "linearity":
        a = json.loads((single / "linearity" / "weights_r2.json").read_text())
        b = json.loads((merged / "linearity" / "weights_r2.json").read_text())
        ok = a["histogram"] == b["histogram"] and a["per_tensor"] == b["per_tensor"] and a["median"] == b["median"]
        ok &= json.loads((single / "linearity" / "lowrank.json").read_text()) == \
            json.loads((merged / "linearity" / "lowrank.json").read_text())
        return "yes" if ok else "NO"
    import torch
    from safetensors.torch import load_file

    def tensors(d: Path) -> dict:
        return {k: v for f in sorted(d.rglob("*.safetensors")) for k, v in load_file(f).items()}

    x, y = tensors(single / "extrapolate"), tensors(merged / "extrapolate")
    same = set(x) == set(y) and all(torch.equal(x[k].view(torch.uint8), y[k].view(torch.uint8)) for k in x)
    return "yes" if same else "NO"


if __name__ == "__main__":
    main()
