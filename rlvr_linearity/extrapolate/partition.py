"""The merge of `rlvr extrapolate` partition jobs (`partition.count=N`; docs/scaling.md).

Each partition job wrote, under its own directory, every predicted model restricted to its
tensors (`extrapolate.app.extrapolate` with the partition's names) and its extrapolation.json
(which, with the shared config key, marks it complete). The merge makes each prediction one
sharded HF model: every partition's safetensors files hard-linked (not copied) as
`model-<k>-of-<n>.safetensors`, an index naming each tensor's shard, the partition's config and
tokenizer files; the tensors are the single run's bit for bit. extrapolation.json joins the
partitions' per-tensor reports in the model's tensor order, as one run writes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from rlvr_linearity.errors import writing
from rlvr_linearity.extrapolate.app import complete, open_keyed
from rlvr_linearity.extrapolate.relex import ev_summary
from rlvr_linearity.io import jsonable, replace_dir, write_json_atomic
from rlvr_linearity.partitions import require_complete
from rlvr_linearity.trajectory.files import INDEX, SINGLE, read_header

log = logging.getLogger(__name__)

PER_TENSOR = ("explained_variance", "rank_kept", "singular_values", "coefficients", "predicted_coefficients")


def merge(cfg, out_dir) -> dict:
    """Merge the `partition.count` partitions under out_dir into out_dir/extrapolate; a missing or
    unfinished partition is one error line naming it. Returns the merged extrapolation.json."""
    from rlvr_linearity.trajectory.writer import claim_output

    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    root = out_dir / "extrapolate"
    with claim_output(root):
        traj, key = open_keyed(cfg)
        done = complete(root, key)
        if done is not None:
            log.info("extrapolate: %s is already merged for this config; nothing to do", root)
            return done
        dirs = require_complete(out_dir, int(cfg.partition.count),
                                lambda d: complete(d / "extrapolate", key) is not None, "extrapolate")
        parts = [json.loads((d / "extrapolate" / "extrapolation.json").read_text()) for d in dirs]
        roots = [(d / "extrapolate").resolve() for d in dirs]
        order = {n: i for i, n in enumerate(traj.tensor_names)}
        for rel in _outputs(parts[0], roots[0]):
            link_model([r / rel for r in roots], root / rel, order)
        merged = _report(parts, roots, root, order)
        merged["timings"] = {"partitions": [p["timings"] for p in parts], "run_s": time.perf_counter() - t0}
        write_json_atomic(root / "extrapolation.json", jsonable(merged))  # last: marks the outputs complete
    return merged


def _outputs(report: dict, part_root: Path) -> list[Path]:
    """Each prediction's directory relative to the partition's extrapolate/ (step_<t>, h<T>/step_<t>)."""
    paths = [t["path"] for t in report.get("targets", []) if isinstance(t, dict)]
    paths += [t["path"] for w in report.get("windows", []) for t in w["targets"]]
    return [Path(p).resolve().relative_to(part_root) for p in paths]


def _shards(model_dir: Path) -> list[str]:
    """A partition's safetensors files of one model, in its order."""
    index = model_dir / INDEX
    if index.is_file():
        return list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
    return [SINGLE]


def link_model(parts: list[Path], out: Path, order: dict[str, int]) -> None:
    """One sharded model at `out` from the partitions' models of it (hard links, an index, the
    first partition's other files), renamed into place only when whole."""
    files = [(d, f) for d in parts for f in _shards(d)]
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with writing(out):
            tmp.mkdir(parents=True)
            weight_map, total = {}, 0
            for k, (d, f) in enumerate(files, 1):
                name = f"model-{k:05d}-of-{len(files):05d}.safetensors"
                _link(d / f, tmp / name)
                header = read_header(d / f)
                weight_map.update({n: name for n in header.tensors})
                total += sum(t.stop - t.start for t in header.tensors.values())
            weight_map = dict(sorted(weight_map.items(), key=lambda kv: order[kv[0]]))
            (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))
            for f in sorted(parts[0].iterdir()):
                if f.is_file() and f.name != INDEX and f.suffix != ".safetensors":
                    shutil.copy2(f, tmp / f.name)
            replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    """A hard link (no bytes copied); a copy only where the filesystem cannot link."""
    try:
        os.link(src, dst)
    except OSError as err:
        log.warning("cannot hard-link %s (%s); copying it", src, err)
        shutil.copy2(src, dst)


def _report(parts: list[dict], roots: list[Path], root: Path, order: dict[str, int]) -> dict:
    """The single run's extrapolation.json from the partitions': per-tensor entries joined in the
    model's order, paths under the merged root, byte counts added."""
    def joined(maps):
        return dict(sorted(((n, v) for m in maps for n, v in m.items()), key=lambda kv: order[kv[0]]))

    def moved(path: str) -> str:
        return str(root / Path(path).resolve().relative_to(roots[0]))

    out = dict(parts[0])
    out["bytes_read"] = sum(p["bytes_read"] for p in parts)
    if out["method"] == "weight":
        for k in ("extrapolated", "copied_from_second"):
            out[k] = sorted((n for p in parts for n in p[k]), key=order.__getitem__)
        out["targets"] = [{**t, "path": moved(t["path"])} for t in out["targets"]]
        return out
    out["gram_cache_hit"] = all(p["gram_cache_hit"] for p in parts)
    out["gram_source"] = ", ".join(dict.fromkeys(p["gram_source"] for p in parts))
    windows = []
    for j, w in enumerate(out["windows"]):
        ws = [p["windows"][j] for p in parts]
        merged = {**w, **{k: joined(x[k] for x in ws) for k in PER_TENSOR}}
        merged["targets"] = [{**t, "path": moved(t["path"]), "weights": joined(x["targets"][i]["weights"] for x in ws)}
                             for i, t in enumerate(w["targets"])]
        evs = [v for v in merged["explained_variance"].values() if v is not None]
        merged["explained_variance_summary"] = ev_summary(evs)
        windows.append(merged)
    out["windows"] = windows
    return out
