"""Partitioned runs end to end (docs/scaling.md): the Hydra callback that merges a multirun's
partition jobs when the sweep ends, and the pipeline's partitioned linearity and extrapolation
stages.

`rlvr linearity|extrapolate -m partition.count=N partition.index=0,...,N-1 output_dir=D` runs N
jobs through the configured launcher (each writes D/partitions/part-<i>-of-<N>/); when the
sweep is over, `MergePartitions.on_multirun_end` (registered in conf/hydra/default.yaml) writes
D's outputs. A sweep with a failed job never reaches it: rerun that partition alone, or merge
what is there with `partition.merge=true`, which names any partition still missing.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

from rlvr_linearity.config import derive
from rlvr_linearity.paths import PARTITIONED, partition_dir

log = logging.getLogger("rlvr")


def merge_partitions(cfg, out_dir) -> dict:
    """Merge `cfg.command`'s partitions under out_dir into out_dir's outputs."""
    if cfg.command == "linearity":
        from rlvr_linearity.linearity.partition import merge
    else:
        from rlvr_linearity.extrapolate.partition import merge
    return merge(cfg, out_dir)


class MergePartitions(Callback):
    """Around a multirun of partition jobs: before they fan out, the trajectory is opened once
    (a hub trajectory downloaded into the shared cache, not by every job); when they are all
    done, they are merged into `output_dir`. Hydra turns a callback's exception into a warning,
    so a user error (a missing partition) ends the command here: one line, exit code 2, as a
    job's error would."""

    def on_multirun_start(self, config, **kwargs) -> None:
        cfg = _partitioned(config)
        if cfg is not None and (cfg.trajectory.hub_repo or cfg.trajectory.path):
            _guarded(cfg, lambda: _open(cfg))

    def on_multirun_end(self, config, **kwargs) -> None:
        cfg = _partitioned(config)
        if cfg is None:
            return
        out = _guarded(cfg, lambda: _merge(cfg))
        print(f"rlvr {cfg.command}: merged {cfg.partition.count} partitions into {out}", flush=True)


def _partitioned(config):
    """A multirun's config as its merge runs it, or None when it is no sweep of partition jobs."""
    part = config.partition
    if part.count <= 1 or part.merge or config.command not in PARTITIONED:
        return None
    from omegaconf import open_dict

    cfg = derive(config, **{"partition.merge": True})
    with open_dict(cfg):
        cfg.pop("hydra", None)  # as in a job's config
    return cfg


def _guarded(cfg, fn):
    from rlvr_linearity.errors import RlvrError
    from rlvr_linearity.schemas import validate

    try:
        validate(cfg)
        return fn()
    except RlvrError as err:
        if cfg.debug:
            traceback.print_exc()
        print(f"rlvr {cfg.command}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def _open(cfg) -> None:
    """The trajectory as the command opens it (a hub trajectory: the revisions it needs, downloaded)."""
    if cfg.command == "linearity":
        from rlvr_linearity.linearity.app import open_checked

        open_checked(cfg)
    else:
        from rlvr_linearity.extrapolate.app import open_keyed

        open_keyed(cfg)


def _merge(cfg) -> Path:
    from rlvr_linearity.paths import resolve_output_dir

    out = resolve_output_dir(cfg)
    res = merge_partitions(cfg, out)
    if cfg.command == "extrapolate":  # what `rlvr extrapolate` draws (linearity's merge draws its own)
        from rlvr_linearity.figures.extrapolation import extrapolation_figures

        extrapolation_figures(out / "figures", res)
    return out


def run_partitioned(command: str, cfg, out_dir: Path, run) -> dict:
    """A pipeline stage split in `partition.count` partitions, then merged into out_dir.
    `run(cfg, dir)`: the command's work on one partition. A pipeline launched through a submitit
    launcher (`-m hydra/launcher=slurm_*`) sends the partitions as a job array with its own
    launcher settings and waits for them; otherwise they run one after another in this process
    (on one machine a single run already uses every core and the disk). Either way a finished
    partition is skipped on a rerun."""
    count = int(cfg.partition.count)
    shares = [derive(cfg, **{"partition.index": i, "partition.merge": False}) for i in range(count)]
    dirs = [partition_dir(out_dir, count, i) for i in range(count)]
    executor = _executor(Path(out_dir) / ".submitit")
    if executor is None:
        for share, d in zip(shares, dirs):
            run(share, d)
    else:
        jobs = executor.map_array(run, shares, dirs)
        log.info("%s: %d partitions sent as Slurm jobs %s", command, count, ", ".join(j.job_id for j in jobs))
        for job in jobs:
            job.result()  # a partition's error, as its job raised it
    return merge_partitions(derive(cfg, command=command, **{"partition.merge": True}), out_dir)


def _executor(folder: Path):
    """A submitit executor with the settings of the launcher that started this job (as Hydra's
    submitit launcher builds its own), or None when this job did not come from one."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    params = OmegaConf.to_container(HydraConfig.get().launcher, resolve=True)
    target = str(params.pop("_target_", ""))
    if "submitit_launcher" not in target:
        return None
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cluster = "slurm" if target.endswith("SlurmLauncher") else "local"
    params.pop("submitit_folder", None)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     **{f"{cluster}_max_num_timeout": params.pop("max_num_timeout")})
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{cluster}_{k}": v for k, v in params.items()})
    return executor
