"""`rlvr linearity` over a share of the tensors (`partition.count=N partition.index=i`) and the
exact merge of the N shares into the single run's outputs (docs/scaling.md).

A partition job writes under its own directory (`paths.partition_dir`), in `linearity/`:
`weights_state.npz` (per window the global R² statistics, values or fine histogram, and the
per-tensor rows: `weights.WeightState`), `grams.npz` (its tensors' Grams) and, last,
`partition.json` (its config key and tensors), which marks it complete: a rerun with the same
config does nothing. Token log-prob linearity, which runs the whole model, is partition 0's.
The merge checks every partition's marker and writes `weights_r2.json` and `lowrank.json`
exactly as one run writes them (histograms and per-tensor rows equal; means to float rounding).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from rlvr_linearity.config import section
from rlvr_linearity.errors import ConfigError
from rlvr_linearity.io import atomic_path, stage_key, write_json_atomic
from rlvr_linearity.linearity.app import logprobs, lowrank, open_checked, trajectory_grams, weight_state, write_outputs
from rlvr_linearity.linearity.weights import WeightState, select_tensors, weights_result
from rlvr_linearity.partitions import partition_names, require_complete

log = logging.getLogger(__name__)

STATE, GRAMS, LOGPROBS, MARKER = "weights_state.npz", "grams.npz", "logprob_r2.json", "partition.json"


def config_key(cfg, traj) -> str:
    """What a partition's results depend on: the analysis, the trajectory's selection and content,
    the count (not where the hub cache is: a merge run from another shell finds the partitions)."""
    selection = {k: v for k, v in section(cfg, "trajectory").items() if k != "cache_dir"}
    return stage_key("linearity-partition", {"linearity": section(cfg, "linearity"), "trajectory": selection,
                                             "count": int(cfg.partition.count)}, [traj.fingerprint()])


def _done(part_dir: Path, key: str) -> bool:
    marker = Path(part_dir) / "linearity" / MARKER
    try:
        return json.loads(marker.read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def _check(cfg) -> None:
    lin = cfg.linearity
    if lin.save_per_weight or lin.reconstruct_steps:
        raise ConfigError("partition.count > 1 does not support linearity.save_per_weight or "
                          "linearity.reconstruct_steps: run those without partitions")


def _shares(cfg, traj) -> dict[str, list[str]]:
    """This partition's tensors per analysis, each assigned over the tensors that analysis reads:
    weight R² those `linearity.tensors` selects, the Grams of the low-rank findings every tensor."""
    count, index = int(cfg.partition.count), int(cfg.partition.index)
    shares = {}
    if cfg.linearity.weights:
        chosen = select_tensors(list(traj.tensor_names), str(cfg.linearity.tensors))
        shares["weights"] = partition_names(traj, count, index, chosen)
    if cfg.linearity.lowrank:
        shares["lowrank"] = partition_names(traj, count, index)
    return shares


def run_partition(cfg, out_dir) -> dict:
    """Partition `partition.index` of `partition.count`: its tensors' shares under out_dir/linearity/."""
    from rlvr_linearity.trajectory.writer import claim_output

    _check(cfg)
    part = cfg.partition
    out = Path(out_dir) / "linearity"
    with claim_output(out):
        traj, steps, selected = open_checked(cfg)
        key = config_key(cfg, traj)
        names = _shares(cfg, traj)
        summary = {"dir": str(out_dir), "partition": int(part.index), "count": int(part.count),
                   "tensors": len(set().union(*names.values()))}
        if _done(out_dir, key):
            log.info("linearity partition %d of %d in %s is complete; nothing to do", part.index, part.count, out_dir)
            return summary
        (out / MARKER).unlink(missing_ok=True)  # an earlier config's marker must not vouch for shares rewritten below
        lin = cfg.linearity
        if lin.weights:
            weight_state(cfg, traj, selected, out, names=names["weights"]).save(out / STATE)
        if lin.lowrank:
            g = trajectory_grams(cfg, traj, [s for s in steps if s != 0], names=names["lowrank"])
            with atomic_path(out / GRAMS) as tmp, open(tmp, "wb") as f:
                np.savez(f, __names__=np.asarray(list(g)), **g)
        if lin.logprobs and part.index == 0:
            write_json_atomic(out / LOGPROBS, logprobs(cfg, traj, selected, out))
        write_json_atomic(out / MARKER, {"key": key, **summary, "names": names,  # last: marks it complete
                                         "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    return summary


def merge(cfg, out_dir) -> dict:
    """Merge the `partition.count` partitions under out_dir into out_dir's outputs; a missing or
    unfinished partition is one error line naming it. Returns the single run's summary."""
    from rlvr_linearity.trajectory.writer import claim_output

    _check(cfg)
    out_dir = Path(out_dir)
    lin = cfg.linearity
    with claim_output(out_dir / "linearity"):
        traj, steps, selected = open_checked(cfg)
        key = config_key(cfg, traj)
        dirs = require_complete(out_dir, int(cfg.partition.count), lambda d: _done(d, key), "linearity")
        order = list(traj.tensor_names)
        weights = low = probes = None
        if lin.weights:
            weights = weights_result(WeightState.merge([WeightState.load(d / "linearity" / STATE) for d in dirs],
                                                       order))
        if lin.lowrank:
            merged: dict[str, np.ndarray] = {}
            for d in dirs:
                with np.load(d / "linearity" / GRAMS) as z:
                    merged.update({str(n): z[str(n)] for n in z["__names__"]})
            low = lowrank(cfg, traj, steps, {n: merged[n] for n in order if n in merged}, out_dir / "linearity")
        if lin.logprobs:
            probes = json.loads((dirs[0] / "linearity" / LOGPROBS).read_text())
        return write_outputs(out_dir, steps, selected, weights, low, probes)
