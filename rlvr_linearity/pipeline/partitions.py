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
    """At the end of a multirun of partition jobs: merge them into `output_dir`. Hydra turns a
    callback's exception into a warning, so a user error (a missing partition) ends the command
    here: one line, exit code 2, as a job's error would."""

    def on_multirun_end(self, config, **kwargs) -> None:
        part = config.partition
        if part.count <= 1 or part.merge or config.command not in PARTITIONED:
            return
        from omegaconf import open_dict

        from rlvr_linearity.errors import RlvrError
        from rlvr_linearity.paths import resolve_output_dir
        from rlvr_linearity.schemas import validate

        cfg = derive(config, **{"partition.merge": True})
        with open_dict(cfg):
            del cfg["hydra"]  # as in a job's config
        try:
            validate(cfg)
            out = resolve_output_dir(cfg)
            merge_partitions(cfg, out)
        except RlvrError as err:
            if cfg.debug:
                traceback.print_exc()
            print(f"rlvr {cfg.command}: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
        print(f"rlvr {cfg.command}: merged {part.count} partitions into {out}", flush=True)


def run_partitioned(command: str, cfg, out_dir: Path, run) -> dict:
    """A pipeline stage split in `partition.count` partitions, run one after another in this
    process (each resumable: a finished partition is skipped on a rerun), then merged into
    out_dir. `run(cfg, dir)`: the command's work on one partition."""
    count = int(cfg.partition.count)
    for i in range(count):
        run(derive(cfg, **{"partition.index": i, "partition.merge": False}), partition_dir(out_dir, count, i))
    return merge_partitions(derive(cfg, command=command, **{"partition.merge": True}), out_dir)
