"""Benchmark of `rlvr linearity` on a synthetic ~120M-parameter Qwen2 trajectory (bf16, base + 20
checkpoints): the I/O floor, full-coverage weight R², the low-rank pass, 4 windows vs 1, peak
RSS of each child process and the bytes left behind. Prints a markdown table for docs/performance.md.

    nice -n 10 .venv/bin/python scripts/bench_linearity.py /tmp/bench_traj [--steps 20]

The trajectory is built once (cached under the path). Each measured run is a separate
`rlvr linearity` process; its start-up (`rlvr linearity --cfg job`) is subtracted from its wall
time. Every run is measured `--repeats` times and the floor before and after the runs; the
fastest of each counts. On a loaded machine compare CPU seconds (the child's user + system
time): wall clock then mostly measures the other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

HIDDEN, LAYERS, INTER, VOCAB, KV = 768, 12, 2304, 32000, 768


def shapes() -> dict[str, tuple[int, ...]]:
    """A small Qwen2 (tied embeddings): about 117M parameters."""
    s = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        s |= {p + "input_layernorm.weight": (HIDDEN,),
              p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.q_proj.bias": (HIDDEN,),
              p + "self_attn.k_proj.weight": (KV, HIDDEN), p + "self_attn.k_proj.bias": (KV,),
              p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.v_proj.bias": (KV,),
              p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
              p + "post_attention_layernorm.weight": (HIDDEN,),
              p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
              p + "mlp.down_proj.weight": (HIDDEN, INTER)}
    s["model.norm.weight"] = (HIDDEN,)
    return s


def config() -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 12,
            "num_key_value_heads": 12, "vocab_size": VOCAB, "max_position_embeddings": 2048,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6, "rope_theta": 10000.0}


def build(root: Path, n_steps: int) -> None:
    """step_0 (base) ... step_N: W_t = W_0 + t * trend + noise, each stored in bf16."""
    marker = root / ".complete"
    if marker.exists() and json.loads(marker.read_text()) == {"steps": n_steps}:
        return
    shutil.rmtree(root, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    sh = shapes()
    base = {n: torch.randn(s, generator=g) * 0.02 for n, s in sh.items()}
    trend = {n: torch.randn(s, generator=g) * 2e-4 for n, s in sh.items()}
    for step in range(n_steps + 1):
        d = root / f"step_{step}"
        d.mkdir(parents=True)
        tensors = {n: (base[n] + step * trend[n] + torch.randn(sh[n], generator=g) * 1e-4 * (step > 0)).to(torch.bfloat16)
                   for n in sh}
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config()))
        print(f"  wrote {d}", flush=True)
    marker.write_text(json.dumps({"steps": n_steps}))


def cpu_s() -> float:
    """CPU seconds (user + system) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def floor(root: Path, steps) -> tuple[float, float]:
    """(wall s, CPU s) to read every tensor of the given steps once, converted to float32, with
    one torch thread (the fastest way on a shared machine: two threads spin in OpenMP and took
    2-4x the CPU time, measured on 2 loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t, c = time.perf_counter(), cpu_s()
    total = 0.0
    try:
        for step in steps:
            with safe_open(str(root / f"step_{step}" / "model.safetensors"), "pt") as f:
                for name in f.keys():
                    total += float(f.get_tensor(name).float()[..., :1].sum())
    finally:
        torch.set_num_threads(threads)
    return time.perf_counter() - t, cpu_s() - c


def best_floor(root: Path, steps, n: int = 3) -> tuple[float, float]:
    """The fastest of `n` floors (page cache warm), wall and CPU separately."""
    runs = [floor(root, steps) for _ in range(n)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, RssAnon) of a running process in KiB: its peak RSS so far and its anonymous RSS now."""
    got = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "RssAnon:")):
                got[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return got.get("VmHWM", 0), got.get("RssAnon", 0)


def child(args: list[str], env, program: list[str] | None = None) -> tuple[float, float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, peak anonymous RSS MiB, return code) of one `rlvr` process
    (or of `program` + `args`).

    Peak RSS is the process's own high-water mark (VmHWM, polled from /proc every 50 ms; it counts
    the safetensors pages mapped from the page cache), not wait4's ru_maxrss: the kernel records
    the forking parent's high-water mark into a spawned child's ru_maxrss at exec, so that
    measured this script's own peak (checked: a parent that had touched 800 MiB gave a
    `python -c pass` child 812 MiB, its VmHWM 11 MiB). The anonymous part is the memory the
    process itself allocates."""
    t = time.perf_counter()
    p = subprocess.Popen([*(program or [str(Path(sys.executable).parent / "rlvr")]), *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = anon = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        hwm, now = _status_kib(p.pid)
        peak, anon = max(peak, hwm), max(anon, now)
        time.sleep(0.05)
    wall = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, peak / 1024, anon / 1024, rc


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="where the synthetic trajectory is built (cached)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", nargs="*", default=[], help="skip runs: windows lowrank lin")
    ap.add_argument("--repeats", type=int, default=2,
                    help="trials of every run, and floors after the runs too: the fastest of each counts "
                         "(the machine's speed drifts by up to 2x over minutes on shared cores)")
    a = ap.parse_args()
    print(f"building/using trajectory at {a.path}", flush=True)
    build(a.path, a.steps)
    n_params = sum(int(np.prod(s)) for s in shapes().values())
    size = du(a.path)
    steps = range(a.steps + 1)
    floor(a.path, steps)  # warm the page cache
    fl, fl_cpu = best_floor(a.path, steps)

    from rlvr_linearity.linearity import kernels
    from rlvr_linearity.linearity.kernels.common import available

    if available():
        kernels.warm_up()  # the one-off JIT compile lands in numba's disk cache, outside the timings
    work = Path(tempfile.mkdtemp(prefix="bench_lin_"))
    env = {**os.environ, "RLVR_CACHE_DIR": str(work / "cache"), "WANDB_MODE": "disabled"}
    common = [f"trajectory.path={a.path}", "logger=none"]
    starts = [child(["linearity", *common, "--cfg", "job"], env) for _ in range(2)]
    startup, startup_cpu = min(r[0] for r in starts), min(r[1] for r in starts)
    floor(a.path, steps)  # the page cache again, after start-up
    runs = {
        "weight R² (1 window, every weight)": ["linearity.lowrank=false", "linearity.windows=[all]"],
        "weight R² (4 windows)": ["linearity.lowrank=false", "linearity.windows=[5,10,15,all]"],
        "low-rank pass (Grams, EV, coefficients)": ["linearity.weights=false", "linearity.windows=[5,10,15,all]"],
        "LIN preset (0.1% sample, filters)": ["linearity=lin_paper", "linearity.lowrank=false"],
    }
    if "windows" in a.skip:
        runs.pop("weight R² (4 windows)")
    if "lowrank" in a.skip:
        runs.pop("low-rank pass (Grams, EV, coefficients)")
    if "lin" in a.skip:
        runs.pop("LIN preset (0.1% sample, filters)")
    rows = []
    results = {}
    for i, (label, extra) in enumerate(runs.items()):
        trials = []
        for r in range(max(1, a.repeats)):
            out = work / f"run{i}-{r}"
            shutil.rmtree(work / "cache", ignore_errors=True)  # every trial computes its Grams afresh
            trials.append((child(["linearity", *common, f"output_dir={out}", *extra], env), out, du(work / "cache")))
        (wall, cpu, rss, anon, rc), out, left = min(trials, key=lambda t: t[0][0])
        net, cpu = wall - startup, cpu - startup_cpu
        results[label] = net
        stray = [p for p in out.rglob("*") if ".tmp" in p.name]
        rows.append((label, net, net / fl, cpu, cpu / fl_cpu, rss, anon, rc, left, len(stray)))
        if (out / "linearity" / "weights_r2.json").exists():
            w = json.loads((out / "linearity" / "weights_r2.json").read_text())
            print(f"  {label}: median R² {w['median']:.4f}, frac>0.7 {w['frac_above']['0.7']:.4f}, "
                  f"{w['n_defined']:,}/{w['n_weights']:,} weights", flush=True)
        print(f"  {label}: {net:.1f}s (rc {rc}, peak RSS {rss:.0f} MiB, anonymous {anon:.0f} MiB)", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    if a.repeats > 1:  # the floor again, after the runs: the fastest of all counts
        again = best_floor(a.path, steps)
        fl, fl_cpu = min(fl, again[0]), min(fl_cpu, again[1])
        rows = [(r[0], r[1], r[1] / fl, r[3], r[3] / fl_cpu, *r[5:]) for r in rows]

    print()
    print(f"Synthetic Qwen2 trajectory: {n_params / 1e6:.0f}M parameters, base + {a.steps} bf16 checkpoints, "
          f"{size / 2**30:.2f} GiB; {os.cpu_count()} CPU cores; torch {torch.__version__}.")
    print(f"Start-up of `rlvr linearity --cfg job`: {startup:.1f} s (subtracted), {startup_cpu:.1f} CPU s (subtracted). "
          f"Load average at the end: {os.getloadavg()[0]:.1f}.\n")
    print("| run | seconds | × floor | CPU s | CPU × floor | peak RSS (MiB) | of which anonymous | cache bytes written "
          "| temp files |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| floor: read every tensor of every checkpoint once, to float32 (1 thread) | {fl:.1f} | 1.0 | {fl_cpu:.1f} "
          f"| 1.0 | – | – | – | – |")
    for label, net, ratio, cpu, cpu_ratio, rss, anon, rc, left, stray in rows:
        mark = "" if rc == 0 else f" (exit {rc})"
        print(f"| {label}{mark} | {net:.1f} | {ratio:.2f} | {cpu:.1f} | {cpu_ratio:.2f} | {rss:.0f} | {anon:.0f} | "
              f"{left:,} | {stray} |")
    one, four = results.get("weight R² (1 window, every weight)"), results.get("weight R² (4 windows)")
    if one and four:
        cpu_of = {r[0]: r[3] for r in rows}
        print(f"\n4 windows / 1 window: {four / one:.2f}× wall, "
              f"{cpu_of['weight R² (4 windows)'] / cpu_of['weight R² (1 window, every weight)']:.2f}× CPU")


if __name__ == "__main__":
    main()
