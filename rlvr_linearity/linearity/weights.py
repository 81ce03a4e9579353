"""Per-weight R² of a whole trajectory: one streaming read of every tensor, chunk by chunk over
all steps at once, several prefix windows from the same chunk, statistics per tensor, module
type, layer and overall (contract: `linearity/weights_r2.json`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rlvr_linearity.linearity.names import module_sort_key, parse_name
from rlvr_linearity.linearity.r2 import (R2Stats, WindowDesign, _key, block_deltas, block_keep, block_r2,
                                         sample_indices, sample_size, window_lengths)


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


def weight_linearity(traj, steps: list[int] | None = None, *, windows=("all",), thresholds=(0.5, 0.7, 0.9),
                     device: str = "cpu", chunk_elements: int = 1 << 21, sample_fraction: float | None = None,
                     min_samples: int = 50, min_abs_change: float = 0.0, min_unique: int = 0,
                     sample_seed: int = 42, names: list[str] | None = None, per_weight_path: Path | None = None,
                     examples: int = 4, progress: bool = True) -> dict:
    """R² of every weight (or LIN's sample) of every tensor over `steps` (default: all, base first).

    chunk_elements bounds one block (all steps together) in elements; memory stays at a few
    such blocks in float64 whatever the number of steps. Returns the `weights_r2.json` content:
    the contract's keys for the largest window plus `windows: {label: same keys}`.
    """
    steps = list(traj.steps if steps is None else steps)
    if steps[0] != 0:
        steps = [0] + steps
    wins = window_lengths(steps, windows)
    lengths = [n for _, n in wins]
    design = WindowDesign.build(steps, lengths, device)
    names = list(traj.tensor_names if names is None else names)
    base = traj.model(0)
    glob = [R2Stats(tuple(thresholds)) for _ in wins]
    rows: list[list[dict]] = [[] for _ in wins]
    writer = PerWeightWriter(per_weight_path, {n: tuple(base.shape(n)) for n in names}) if per_weight_path else None
    n_weights = 0
    example_rows: list[dict] = []
    i07 = list(thresholds).index(0.7) if 0.7 in thresholds else None
    rng = np.random.default_rng(sample_seed)
    try:
        for name in tqdm(names, desc="weight R²", unit="tensor", disable=not progress):
            shape = tuple(base.shape(name))
            numel = int(np.prod(shape, dtype=np.int64))
            row_size = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            k = sample_size(numel, sample_fraction, min_samples)
            idx = sample_indices(numel, k, sample_seed, name) if k < numel else None
            idx_t = torch.from_numpy(idx) if idx is not None else None
            n_weights += k
            tstats = [R2Stats(tuple(thresholds)) for _ in wins]
            rows_per_block = max(1, chunk_elements // (len(steps) * row_size))
            for start, stop, block in traj.iter_blocks(name, steps, rows_per_block * row_size * len(steps)):
                block = block.reshape(len(steps), -1)
                lo = start * row_size
                if idx_t is not None:
                    a, b = np.searchsorted(idx, [lo, stop * row_size])
                    if a == b:
                        if writer is not None:
                            writer.write(torch.full(((stop - start) * row_size,), float("nan")))
                        continue
                    cols = idx_t[a:b] - lo
                    block = block[:, cols]
                block = block.to(design.m.device, non_blocking=True)
                d = block_deltas(block)
                r2 = block_r2(d, design)
                keep = block_keep(block, d, lengths, min_abs_change, min_unique)
                if keep is not None:
                    r2 = r2.masked_fill_(~keep, float("nan"))
                for j in range(len(wins)):
                    v = r2[j]
                    tstats[j].add(v[~torch.isnan(v)])
                if writer is not None:
                    full = r2[-1]
                    if idx_t is not None:
                        full = torch.full(((stop - start) * row_size,), float("nan"), dtype=torch.float64)
                        full[cols] = r2[-1].cpu()
                    writer.write(full)
                if len(example_rows) < examples and block.shape[1]:
                    col = int(rng.integers(block.shape[1]))
                    if not torch.isnan(r2[-1, col]):
                        example_rows.append({"tensor": name, "index": lo + (int(cols[col]) if idx_t is not None else col),
                                             "steps": steps, "values": block[:, col].double().cpu().tolist(),
                                             "r2": float(r2[-1, col])})
            module, layer = parse_name(name)
            for j in range(len(wins)):
                s = tstats[j].summary()
                rows[j].append({"name": name, "numel": numel, "n_defined": s["n_defined"], "mean": s["mean"],
                                "median": s["median"],
                                "frac_above_0.7": s["frac_above"].get("0.7"), "module": module, "layer": layer,
                                "_sum": tstats[j].total, "_above": tstats[j].above[i07] if i07 is not None else 0})
                glob[j].merge(tstats[j])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    per_window = {label: _window_result(steps, n, glob[j], rows[j], n_weights) for j, (label, n) in enumerate(wins)}
    top = dict(per_window[wins[-1][0]])
    top["windows"] = per_window
    top["n_numel"] = sum(r["numel"] for r in rows[-1])
    top["filters"] = {"sample_fraction": sample_fraction, "min_samples": min_samples if sample_fraction else None,
                      "min_abs_change": min_abs_change, "min_unique": min_unique, "seed": sample_seed}
    top["thresholds"] = [_key(t) for t in thresholds]
    top["median_error_bound"] = 0.0 if glob[-1]._values is not None else 2.0 ** -21
    top["examples"] = example_rows
    return top
