"""Peak memory of `rlvr linearity` (weight R², the low-rank/Gram pass), `rlvr extrapolate`
(RELEX and LIN's weight extrapolation, each writing a predicted model) and the pipeline's
prediction error, on a synthetic trajectory whose largest tensor has the shape of Qwen2.5-32B's
lm_head (152064 × 5120, bf16: 1.56 GB a checkpoint), base + 5 steps, 9.4 GiB. Peak RSS must
follow the block size, not the tensor's: every run is expected under 1 GiB (`--vocab 19008`: the
same runs with a largest tensor 8x smaller, for comparison). Prints a markdown table for
docs/performance.md ("Memory at 32B-tensor scale").

    nice -n 10 .venv/bin/python scripts/bench_memory.py /tmp/rss-bench [--steps 5] [--vocab N] [--keep]

The trajectory is written block by block through ModelWriter (never a whole tensor in memory)
and removed at the end unless --keep. Each measured command is a separate process
(bench_linearity's `child`): peak RSS is its own high-water mark (VmHWM; page-cache pages it
maps count), anonymous RSS the peak of RssAnon, both polled from /proc every 50 ms. Baselines:
`rlvr linearity --cfg job` (imports and config only) and a plain read of every tensor through
`iter_blocks` with linearity's block size, run once before the measured runs to warm the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linearity import child, du  # noqa: E402  (the same process measurement)

from rlvr_linearity.trajectory import ModelWriter, open_trajectory  # noqa: E402
from rlvr_linearity.trajectory.files import TensorInfo, TensorTable  # noqa: E402

VOCAB, HIDDEN, KV = 152064, 5120, 1024  # Qwen2.5-32B's vocabulary, hidden size and KV width
BLOCK = 1 << 24  # elements generated (and written) at a time while building
LIMIT_MIB = 1024


def shapes(vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    """One Qwen2.5-32B-sized attention layer and the tied embedding (the lm_head's shape)."""
    p = "model.layers.0."
    return {"model.embed_tokens.weight": (vocab, HIDDEN), p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.q_proj.bias": (HIDDEN,),
            p + "self_attn.k_proj.weight": (KV, HIDDEN), p + "self_attn.k_proj.bias": (KV,),
            p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.v_proj.bias": (KV,),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN), p + "post_attention_layernorm.weight": (HIDDEN,),
            "model.norm.weight": (HIDDEN,)}


def config(vocab: int = VOCAB) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
            "intermediate_size": 27648, "num_hidden_layers": 1, "num_attention_heads": 40,
            "num_key_value_heads": 8, "vocab_size": vocab, "max_position_embeddings": 32768,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6, "rope_theta": 1e6}


class Skeleton(TensorTable):
    """A model's tensor table without weights: the template ModelWriter lays out its files from."""

    def __init__(self, path: Path, vocab: int):
        self.path, self.step, self.config = path, None, config(vocab)
        self._info = {n: TensorInfo(path, torch.bfloat16, s, 0, 0) for n, s in shapes(vocab).items()}


def build(root: Path, n_steps: int, vocab: int = VOCAB) -> None:
    """step_0 (base) ... step_N: W_t = W_0 + t * trend + noise in bf16, generated and written
    BLOCK elements at a time into every step's writer at once."""
    marker = root / ".complete"
    if marker.exists() and json.loads(marker.read_text()) == {"steps": n_steps, "vocab": vocab}:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "skeleton").mkdir(parents=True)
    template = Skeleton(root / "skeleton", vocab)
    with ExitStack() as stack:
        writers = [stack.enter_context(ModelWriter(root / f"step_{t}", template)) for t in range(n_steps + 1)]
        for i, (name, shape) in enumerate(shapes(vocab).items()):
            row = HIDDEN if len(shape) > 1 else 1
            per = max(1, BLOCK // row)
            for start in range(0, shape[0], per):
                rows = (min(shape[0], start + per) - start, *shape[1:])
                g = torch.Generator().manual_seed(i * 100_003 + start)
                base, trend = torch.randn(rows, generator=g) * 0.02, torch.randn(rows, generator=g) * 2e-4
                for t, w in enumerate(writers):
                    noise = torch.randn(rows, generator=g) * 1e-4 if t else 0.0
                    w.write_rows(name, start, (base + t * trend + noise).to(torch.bfloat16))
            print(f"  wrote {name} {list(shape)}", flush=True)
    shutil.rmtree(root / "skeleton")
    marker.write_text(json.dumps({"steps": n_steps, "vocab": vocab}))


def plain_read(root: Path) -> None:
    """Read every tensor of every step once, as `rlvr linearity` does (blocks of its chunk size,
    a ring of reused buffers): the reader's own memory, the floor of every run."""
    from rlvr_linearity.trajectory.streaming import PREFETCH_RING

    traj = open_trajectory(path=root)
    for name in traj.tensor_names:
        for _ in traj.iter_blocks(name, max_elements=1 << 24, reuse=PREFETCH_RING, check_finite=False):
            pass


def prediction_error_run(root: Path, predicted: Path, step: int) -> None:
    """`extrapolate.error.prediction_error` of a prediction against the trained step (the pipeline's
    weight-space error), printed."""
    from rlvr_linearity.extrapolate.error import prediction_error
    from rlvr_linearity.trajectory.files import ModelFiles

    traj = open_trajectory(path=root)
    print(json.dumps(prediction_error(traj.base, traj.model(step), ModelFiles(predicted, step))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="where the synthetic trajectory is built (removed at the end)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=VOCAB, help="rows of the largest tensor (smaller: the same "
                    "runs on a smaller model, for comparison)")
    ap.add_argument("--keep", action="store_true", help="keep the trajectory (a later run reuses it)")
    ap.add_argument("--plain-read", action="store_true", help=argparse.SUPPRESS)  # the measured baseline
    ap.add_argument("--error", nargs=2, metavar=("PRED", "STEP"), help=argparse.SUPPRESS)  # measured too
    a = ap.parse_args()
    if a.plain_read:
        return plain_read(a.path)
    if a.error:
        return prediction_error_run(a.path, Path(a.error[0]), int(a.error[1]))
    t = time.perf_counter()
    print(f"building/using trajectory at {a.path}", flush=True)
    build(a.path, a.steps, a.vocab)
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    size = du(a.path)
    work = Path(tempfile.mkdtemp(prefix="rss-bench-runs-"))
    env = {**os.environ, "RLVR_CACHE_DIR": str(work / "cache"), "WANDB_MODE": "disabled"}
    common = [f"trajectory.path={a.path}", "logger=none"]
    me = [sys.executable, str(Path(__file__).resolve()), str(a.path)]
    last = a.steps
    pred = work / "relex" / "extrapolate" / f"step_{last}"
    runs = [
        ("start-up: `rlvr linearity --cfg job`", None, ["linearity", *common, "--cfg", "job"]),
        ("plain read: every tensor through `iter_blocks` (2**24-element blocks, no NaN scan)", me, ["--plain-read"]),
        ("weight R² (`rlvr linearity linearity.lowrank=false`)", None,
         ["linearity", *common, f"output_dir={work / 'r2'}", "linearity.lowrank=false"]),
        ("low-rank/Gram pass (`rlvr linearity linearity.weights=false`)", None,
         ["linearity", *common, f"output_dir={work / 'lowrank'}", "linearity.weights=false"]),
        (f"RELEX (`rlvr extrapolate extrapolate.history={last - 1} extrapolate.targets=[{last}] extrapolate.cache=false`), "
         "writes a bf16 model", None,
         ["extrapolate", *common, f"output_dir={work / 'relex'}", f"extrapolate.history={last - 1}",
          f"extrapolate.targets=[{last}]", "extrapolate.cache=false"]),
        (f"LIN weight extrapolation (`extrapolate=weight extrapolate.second_step={last - 1} "
         f"extrapolate.targets=[{last}]`, float64 blocks)", None,
         ["extrapolate", *common, f"output_dir={work / 'weight'}", "extrapolate=weight",
          f"extrapolate.second_step={last - 1}", f"extrapolate.targets=[{last}]"]),
        (f"prediction error vs trained step {last} (`extrapolate.error.prediction_error`)", me,
         ["--error", str(pred), str(last)]),
    ]
    child(["--plain-read"], env, me)  # the page cache warm for every measured run
    rows = []
    for label, program, args in runs:
        wall, cpu, rss, anon, rc = child(args, env, program)
        rows.append((label, wall, cpu, rss, anon, rc))
        print(f"  {label}: {wall:.1f} s, peak RSS {rss:.0f} MiB, anonymous {anon:.0f} MiB (rc {rc})", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    if not a.keep:
        shutil.rmtree(a.path, ignore_errors=True)

    print(f"\nSynthetic trajectory: largest tensor {a.vocab} × {HIDDEN} bf16 (Qwen2.5-32B's lm_head: {VOCAB}), base + "
          f"{a.steps} steps, {size / 2**30:.2f} GiB; {os.cpu_count()} CPU cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; torch {torch.__version__}. "
          f"Load average at the end: {os.getloadavg()[0]:.1f}.\n")
    print("| run | seconds | CPU s | peak RSS (MiB) | of which anonymous (MiB) | under 1 GiB |")
    print("| --- | ---: | ---: | ---: | ---: | :---: |")
    for label, wall, cpu, rss, anon, rc in rows:
        mark = "" if rc == 0 else f" (exit {rc})"
        print(f"| {label}{mark} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {anon:.0f} | "
              f"{'yes' if rss < LIMIT_MIB and rc == 0 else 'NO'} |")


if __name__ == "__main__":
    main()
