"""Where runs write: `output_dir=` or Hydra's run directory; the per-machine cache."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_output_dir(cfg) -> Path:
    """`output_dir` if set, else Hydra's run (or multirun job) directory; created."""
    out = cfg.output_dir
    if not out:
        from hydra.core.hydra_config import HydraConfig

        out = HydraConfig.get().runtime.output_dir
    path = Path(out).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


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
