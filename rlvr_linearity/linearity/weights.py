"""Per-weight R² of a whole trajectory: one streaming read of every tensor, chunk by chunk over
all steps at once, several prefix windows from the same chunk, statistics per tensor, module
type, layer and overall (contract: `linearity/weights_r2.json`).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.names import module_sort_key, parse_name
from rlvr_linearity.linearity.r2 import (HIST_BINS, MEDIAN_ERROR_BOUND, UNIQUE_DTYPES, R2Stats, WindowDesign, _key, block_deltas, block_keep, block_r2,
                                         sample_indices, sample_size, window_lengths)
from rlvr_linearity.trajectory.streaming import PREFETCH_RING, by_tensor, prefetch, tensor_stream


class PerWeightWriter:
    """Streams float32 tensors into one safetensors file (header first, then the data in order),
    written under a temporary name and renamed on `close()`; removed on `abort()`."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]]):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        header, offset = {}, 0
        for name, shape in shapes.items():
            n = int(np.prod(shape, dtype=np.int64)) * 4
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, values: torch.Tensor) -> None:
        self._f.write(values.to(torch.float32).cpu().contiguous().numpy().tobytes())

    def close(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)


def _aggregate(rows: list[dict], key) -> dict:
    """Pool per-tensor sums into groups (exact means: sums and counts add)."""
    groups: dict = {}
    for r in rows:
        k = key(r)
        if k is None:
            continue
        g = groups.setdefault(k, {"numel": 0, "n_defined": 0, "sum": 0.0, "above": 0})
        g["numel"] += r["numel"]
        g["n_defined"] += r["n_defined"]
        g["sum"] += r["_sum"]
        g["above"] += r["_above"]
    return {k: {"numel": g["numel"], "n_defined": g["n_defined"],
                "mean": g["sum"] / g["n_defined"] if g["n_defined"] else None,
                "frac_above_0.7": g["above"] / g["n_defined"] if g["n_defined"] else None}
            for k, g in groups.items()}


def _window_result(steps, n, stats: R2Stats, rows: list[dict], n_weights: int) -> dict:
    s = stats.summary()
    per_tensor = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    by_module = _aggregate(rows, lambda r: r["module"])
    by_layer = _aggregate(rows, lambda r: r["layer"])
    cells = _aggregate(rows, lambda r: (r["module"], r["layer"]) if r["layer"] is not None else None)
    modules = sorted({m for m, _ in cells}, key=module_sort_key)
    layers = sorted({l for _, l in cells})
    side = [m for m in sorted({r["module"] for r in rows if r["layer"] is None}, key=module_sort_key)]
    heatmap = {"modules": modules, "layers": layers,
               "mean": [[cells.get((m, l), {}).get("mean") for l in layers] for m in modules],
               "side": {m: by_module[m]["mean"] for m in side}}
    return {"steps": list(steps[:n]), "n_weights": n_weights, **s, "histogram": stats.histogram(),
            "per_tensor": per_tensor,
            "by_module": by_module, "by_layer": {str(k): v for k, v in sorted(by_layer.items())},
            "heatmap": heatmap}


def _block_r2_stats(block, design, lengths, min_abs_change, min_unique, unique_dtype, tstats, sub_chunk, keep_last):
    """R² of a block's columns in cache-sized pieces, added to the per-window statistics;
    returns the largest window's R² of every column when `keep_last` (else None)."""
    last = []
    for a in range(0, block.shape[1], sub_chunk):
        b = block[:, a: a + sub_chunk]
        d = block_deltas(b)
        r2 = block_r2(d, design)
        keep = block_keep(b, d, lengths, min_abs_change, min_unique, unique_dtype)
        if keep is not None:
            r2 = r2.masked_fill_(~keep, float("nan"))
        for j, st in enumerate(tstats):
            st.add(r2[j])
        if keep_last:
            last.append(r2[-1])
    return torch.cat(last) if keep_last else None


KERNEL_MIN_WORK = 1 << 27  # element reads (weights x steps) from which engine=auto uses the kernel
SMALL_TENSOR = 1 << 16  # up to this many weights a tensor's statistics are exact (values kept)


def _raise_not_finite(traj, steps, name, block, start, stop):
    from rlvr_linearity.errors import TrajectoryError, where

    i = int((~torch.isfinite(block.reshape(len(steps), -1))).any(1).nonzero()[0])
    mf = traj.model(steps[i])
    raise TrajectoryError(f"{where(mf.info(name).file, steps[i], name)}: NaN/Inf weights (rows {start}:{stop})")


def weight_linearity(traj, steps: list[int] | None = None, **options) -> dict:
    """The `weights_r2.json` content of one pass over the trajectory (`weight_pass`'s options)."""
    return weights_result(weight_pass(traj, steps, **options))


def weight_pass(traj, steps: list[int] | None = None, *, windows=("all",), thresholds=(0.5, 0.7, 0.9),
                device: str = "cpu", chunk_elements: int = 1 << 24, sample_fraction: float | None = None,
                min_samples: int = 50, min_abs_change: float = 0.0, min_unique: int = 0,
                sample_seed: int = 42, sub_chunk: int = 8192, engine: str = "auto",
                names: list[str] | None = None, tensors: str = "all", unique_dtype: str = "stored",
                per_weight_path: Path | None = None, examples: int = 4, progress: bool = True,
                scope: list[str] | None = None) -> "WeightState":
    """R² of every weight (or LIN's sample) of every tensor over `steps` (default: all, base first).

    tensors "weights_only" keeps the tensors named `*.weight` (LIN skips biases); unique_dtype is
    the dtype the min_unique filter counts distinct values in ("stored" or "bfloat16", LIN's).

    chunk_elements bounds one block read (all steps together) in elements. engine "kernel" uses
    the fused numba kernel on CPU (one pass per block, windows nearly free), "auto" does so for
    trajectories of at least KERNEL_MIN_WORK element reads, "torch" never (the torch path runs
    on `device`, `sub_chunk` columns at a time so its float64 work stays in cache). Memory stays at a few blocks whatever the number of steps.
    Returns the pass's mergeable state; `weights_result(state)` is the `weights_r2.json` content:
    the contract's keys for the largest window plus `windows: {label: same keys}`. `scope`: the
    whole set of tensors of which `names` is a share (a partition job): the engine and the
    example tensors are chosen on it, so that merged partitions equal one pass over `scope`.
    """
    steps = list(traj.steps if steps is None else steps)
    if steps[0] != 0:
        steps = [0] + steps
    names = select_tensors(list(traj.tensor_names if names is None else names), tensors)
    scope = names if scope is None else select_tensors(list(scope), tensors)
    if unique_dtype not in UNIQUE_DTYPES:
        raise ConfigError(f"linearity.unique_filter_dtype={unique_dtype!r}: use stored or bfloat16")
    filters = {"sample_fraction": sample_fraction, "min_samples": min_samples, "min_abs_change": min_abs_change,
               "min_unique": min_unique, "unique_filter_dtype": unique_dtype, "tensors": tensors, "seed": sample_seed}
    run = _WeightPass(traj, steps, names, window_lengths(steps, windows), tuple(thresholds), device, filters,
                      use_kernel=_use_kernel(traj, steps, scope, engine, device, min_unique), sub_chunk=sub_chunk,
                      per_weight_path=per_weight_path, examples=examples, scope=scope)
    # block copies and small torch ops are memory-bound: one torch thread, no OpenMP spin-waiting
    # (measured 30x faster reads on a shared 2-core machine); the kernel has its own threads
    threads = torch.get_num_threads()
    if str(device) == "cpu":
        torch.set_num_threads(1)
    blocks = prefetch(tensor_stream(names, lambda name: run.read(name, chunk_elements)))
    try:
        for name, group in tqdm(by_tensor(blocks), total=len(names), desc="weight R²", unit="tensor",
                                disable=not progress):
            run.tensor(name, group)
    except BaseException:
        if run.writer is not None:
            run.writer.abort()
        raise
    finally:
        blocks.close()
        torch.set_num_threads(threads)
    return run.state()


def select_tensors(names: list[str], tensors: str) -> list[str]:
    """The tensors `linearity.tensors` counts: all, or (weights_only) those named `*.weight`."""
    if tensors not in ("all", "weights_only"):
        raise ConfigError(f"linearity.tensors={tensors!r}: use all or weights_only")
    chosen = names if tensors == "all" else [n for n in names if n.endswith(".weight")]
    if not chosen:
        raise ConfigError(f"linearity.tensors={tensors}: no tensor of the model is named *.weight")
    return chosen


def _use_kernel(traj, steps, names, engine: str, device: str, min_unique: int) -> bool:
    """Whether the fused numba kernel does the pass (see weight_linearity's `engine`)."""
    from rlvr_linearity.linearity.kernels import common

    if engine not in ("auto", "kernel", "torch"):
        raise ConfigError(f"linearity.engine={engine!r}: use auto, kernel or torch")
    possible = str(device) == "cpu" and common.available() and min_unique <= 1
    if engine == "kernel" and not possible:
        raise ConfigError("linearity.engine=kernel needs numba, device=cpu and no min_unique filter")
    # auto: the kernel pays a one-off JIT compile (cached on disk), worth it beyond tiny models
    base = traj.model(0)
    work = len(steps) * sum(int(np.prod(base.shape(n), dtype=np.int64)) for n in names)
    return possible and (engine == "kernel" or (engine == "auto" and work >= KERNEL_MIN_WORK))


class _WeightPass:
    """The state of one streaming pass: per-window statistics (global and per tensor), the
    per-weight file, and a few example weights; `tensor` takes one tensor's blocks."""

    def __init__(self, traj, steps, names, wins, thresholds, device, filters: dict, *, use_kernel: bool,
                 sub_chunk: int, per_weight_path: Path | None, examples: int, scope: list[str]):
        from rlvr_linearity.linearity.kernels import r2 as kernel

        self.traj, self.steps, self.wins, self.thresholds = traj, steps, wins, thresholds
        self.lengths = [n for _, n in wins]
        self.filters, self.sub_chunk = filters, sub_chunk
        self.min_abs_change, self.min_unique = filters["min_abs_change"], filters["min_unique"]
        self.unique_dtype = filters["unique_filter_dtype"]
        self.base = traj.model(0)
        # the fused kernel detects NaN/Inf itself, for free in its one pass (every column: no sampling)
        self.own_check = use_kernel and filters["sample_fraction"] is None and bool(getattr(traj, "check_finite", False))
        self.design = WindowDesign.build(steps, self.lengths, device)
        self.cpu_design = self.design if str(device) == "cpu" else WindowDesign.build(steps, self.lengths, "cpu")
        self.ks = (kernel.KernelStats(steps, self.lengths, thresholds, self.min_abs_change, HIST_BINS)
                   if use_kernel else None)
        self.glob = [R2Stats(thresholds) for _ in wins]
        self.rows: list[list[dict]] = [[] for _ in wins]
        self.writer = (PerWeightWriter(per_weight_path, {n: tuple(self.base.shape(n)) for n in names})
                       if per_weight_path else None)
        self.n_weights = 0
        self.example_rows: list[dict] = []
        self.i07 = list(thresholds).index(0.7) if 0.7 in thresholds else None
        self.rng = None  # the example's, seeded per tensor: examples do not depend on the other tensors
        picks = np.linspace(0, len(scope) - 1, min(examples, len(scope))).astype(int)
        self.example_tensors = {scope[i] for i in picks} & set(names)

    def read(self, name: str, chunk_elements: int):
        """The tensor's blocks; the kernel widens bf16 bits itself, fp16 is widened by the reader."""
        wide = self.traj.block_dtype(name, self.steps)
        as_f32 = self.ks is not None and wide == torch.float16
        return self.traj.iter_blocks(name, self.steps, chunk_elements, dtype=torch.float32 if as_f32 else None,
                                     reuse=PREFETCH_RING, check_finite=False if self.own_check else None)

    def tensor(self, name: str, group) -> None:
        shape = tuple(self.base.shape(name))
        numel = int(np.prod(shape, dtype=np.int64))
        row_size = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        k = sample_size(numel, self.filters["sample_fraction"], self.filters["min_samples"])
        idx = sample_indices(numel, k, self.filters["seed"], name) if k < numel else None
        self.n_weights += k
        tstats = [R2Stats(self.thresholds) for _ in self.wins]
        exact = k <= SMALL_TENSOR or self.writer is not None  # kernel: keep values instead of histograms
        if self.ks is not None:
            self.ks.start_tensor()
        for start, stop, block in group:
            self._block(name, start, stop, block.reshape(len(self.steps), -1), row_size, idx, tstats, exact)
        kernel_hist = self.ks is not None and not exact
        if kernel_hist:  # counts and medians reduced by the kernel, folded into its globals
            n, tot, above = self.ks.tensor_counts()
            med = self.ks.finish_tensor()
            tstats = [R2Stats.counts_only(self.thresholds, n[j], tot[j], above[j], med) for j in range(len(self.wins))]
        module, layer = parse_name(name)
        self.rng = None
        for j in range(len(self.wins)):
            s = tstats[j].summary()
            self.rows[j].append({"name": name, "numel": numel, "n_defined": s["n_defined"], "mean": s["mean"],
                                 "median": s["median"] if j == len(self.wins) - 1 else None,  # largest window only
                                 "frac_above_0.7": s["frac_above"].get("0.7"), "module": module, "layer": layer,
                                 "_sum": tstats[j].total, "_above": tstats[j].above[self.i07] if self.i07 is not None else 0})
            if not kernel_hist:
                self.glob[j].merge(tstats[j])

    def _block(self, name, start, stop, block, row_size, idx, tstats, exact) -> None:
        """R² of one block's columns (the sampled ones), into the tensor's statistics."""
        lo = start * row_size
        cols = None
        if idx is not None:
            a, b = np.searchsorted(idx, [lo, stop * row_size])
            if a == b:
                if self.writer is not None:
                    self.writer.write(torch.full(((stop - start) * row_size,), float("nan")))
                return
            cols = torch.from_numpy(idx[a:b]) - lo
            block = block[:, cols]
        if self.ks is not None:
            out = np.empty((len(self.wins), block.shape[1])) if exact else None
            if not self.ks.add(block, out) and self.own_check:
                _raise_not_finite(self.traj, self.steps, name, block, start, stop)
            last = None
            if out is not None:
                for j in range(len(self.wins)):
                    tstats[j].add(torch.from_numpy(out[j]))
                last = torch.from_numpy(out[-1])
        else:
            last = _block_r2_stats(block.to(self.design.m.device, non_blocking=True), self.design, self.lengths,
                                   self.min_abs_change, self.min_unique, self.unique_dtype, tstats,
                                   self.sub_chunk, keep_last=self.writer is not None)
        if self.writer is not None:
            full = last
            if cols is not None:
                full = torch.full(((stop - start) * row_size,), float("nan"), dtype=torch.float64)
                full[cols] = last.cpu()
            self.writer.write(full)
        if name in self.example_tensors and block.shape[1]:
            self._example(name, block, lo, cols)

    def _example(self, name, block, lo, cols) -> None:
        """One random weight of the tensor, its values per step and its R² (the report's examples)."""
        if self.rng is None:
            self.rng = np.random.default_rng([int(self.filters["seed"]), zlib.crc32(name.encode())])
        col = int(self.rng.integers(block.shape[1]))
        one = block[:, col: col + 1].clone().cpu()
        r2 = block_r2(block_deltas(one), self.cpu_design)[-1, 0]
        if not torch.isnan(r2):
            self.example_tensors.discard(name)
            self.example_rows.append({"tensor": name, "index": lo + (int(cols[col]) if cols is not None else col),
                                      "steps": self.steps, "values": one[:, 0].double().tolist(), "r2": float(r2)})

    def state(self) -> "WeightState":
        """The pass's statistics, complete (per-weight file closed, the kernel's folded in)."""
        if self.writer is not None:
            self.writer.close()
        if self.ks is not None:
            self.ks.finish()
            for j in range(len(self.wins)):
                self.glob[j].add_hist(self.ks.glob_n[j], self.ks.glob_sum[j], self.ks.glob_above[j], self.ks.glob[j])
        return WeightState(self.steps, self.wins, self.thresholds, self.filters, self.rows, self.glob,
                           self.n_weights, self.example_rows)


@dataclass
class WeightState:
    """A weight-R² pass, or a partition's share of one, before it becomes `weights_r2.json`:
    per window the global statistics (values or fine histogram: they add exactly) and the
    per-tensor rows (with the sums that module / layer means pool). Saved by a partition job,
    merged in the tensors' order, it gives the single pass's result (means to float rounding)."""

    steps: list[int]
    wins: list[tuple[str, int]]
    thresholds: tuple[float, ...]
    filters: dict
    rows: list[list[dict]]
    glob: list[R2Stats]
    n_weights: int
    examples: list[dict]

    def save(self, path: Path) -> None:
        from rlvr_linearity.io import atomic_path

        meta = {"steps": self.steps, "wins": self.wins, "thresholds": list(self.thresholds), "filters": self.filters,
                "rows": self.rows, "n_weights": self.n_weights, "examples": self.examples}
        arrays = {f"glob{j}_{k}": v for j, st in enumerate(self.glob) for k, v in st.to_arrays().items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)

    @classmethod
    def load(cls, path: Path) -> "WeightState":
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes())
            thresholds = tuple(meta["thresholds"])
            glob = [R2Stats.from_arrays(thresholds, {k.split("_", 1)[1]: z[k] for k in z.files
                                                     if k.startswith(f"glob{j}_")}) for j in range(len(meta["wins"]))]
        return cls(meta["steps"], [tuple(w) for w in meta["wins"]], thresholds, meta["filters"], meta["rows"], glob,
                   meta["n_weights"], meta["examples"])

    @classmethod
    def merge(cls, parts: list["WeightState"], order: list[str]) -> "WeightState":
        """One state from partitions' states, rows and examples in the tensors' `order`."""
        first = parts[0]
        pos = {n: i for i, n in enumerate(order)}
        glob = []
        for j in range(len(first.wins)):
            st = R2Stats(first.thresholds)
            for p in parts:
                st.merge(p.glob[j])
            glob.append(st)
        rows = [sorted((r for p in parts for r in p.rows[j]), key=lambda r: pos[r["name"]])
                for j in range(len(first.wins))]
        examples = sorted((e for p in parts for e in p.examples), key=lambda e: pos[e["tensor"]])
        return cls(first.steps, first.wins, first.thresholds, first.filters, rows, glob,
                   sum(p.n_weights for p in parts), examples)


def weights_result(state: WeightState) -> dict:
    """The `weights_r2.json` content (see weight_linearity) of a pass's state."""
    per_window = {label: _window_result(state.steps, n, state.glob[j], state.rows[j], state.n_weights)
                  for j, (label, n) in enumerate(state.wins)}
    f = state.filters
    top = dict(per_window[state.wins[-1][0]])
    top["windows"] = per_window
    top["n_numel"] = sum(r["numel"] for r in state.rows[-1])
    top["filters"] = {**f, "min_samples": f["min_samples"] if f["sample_fraction"] else None}
    top["thresholds"] = [_key(t) for t in state.thresholds]
    top["median_error_bound"] = 0.0 if state.glob[-1]._values is not None else MEDIAN_ERROR_BOUND
    top["examples"] = state.examples
    return top
