"""Where runs write: `output_dir=` or Hydra's run directory; the per-machine cache."""

from __future__ import annotations

import os
from pathlib import Path


PARTITIONED = ("linearity", "extrapolate")  # the commands whose jobs take a share of the tensors


def resolve_output_dir(cfg) -> Path:
    """`output_dir` if set, else Hydra's run (or multirun job) directory; created. A partition
    job of a partitioned command (`partition.count` > 1) writes under its own
    `partitions/part-<i>-of-<N>/` of `output_dir`, which every partition and the merge share."""
    out = cfg.output_dir
    part = cfg.partition
    split = part.count > 1 and not part.merge and cfg.command in PARTITIONED
    if not out and (split or part.merge):
        from rlvr_linearity.errors import ConfigError

        raise ConfigError(f"partition.count={part.count} needs output_dir=DIR: the directory every partition "
                          "and the merge share")
    if not out:
        from hydra.core.hydra_config import HydraConfig

        out = HydraConfig.get().runtime.output_dir
    path = Path(out).expanduser().resolve()
    if split:
        path = partition_dir(path, part.count, part.index)
    path.mkdir(parents=True, exist_ok=True)
    return path


def partition_dir(root: Path, count: int, index: int) -> Path:
    """Where partition `index` of `count` writes its partial results (the merge reads them there)."""
    return Path(root) / "partitions" / f"part-{index}-of-{count}"


def cache_dir(cfg=None) -> Path:
    """The per-machine cache (tiny base models, hub trajectories, Gram matrices, stages)."""
    d = None
    if cfg is not None:
        d = cfg.paths.cache_dir
    d = d or os.environ.get("RLVR_CACHE_DIR") or Path.home() / ".cache" / "rlvr-linearity"
    path = Path(d).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def conf_dir() -> Path:
    """The `conf/` tree: $RLVR_CONF_DIR, else the repository's (editable install)."""
    env = os.environ.get("RLVR_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "conf"
