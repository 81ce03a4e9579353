"""`open_trajectory`: a trajectory from `trajectory.*` (or keywords): local layouts, trajectory.json,
verl runs and hub trajectories resolved to a validated `Trajectory`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from rlvr_linearity.errors import ConfigError, TrajectoryError, where

from .core import Trajectory
from .discover import Found, discover, trajectory_json, verl_base_hint
from .files import ModelFiles
from .hub import fetch_hub_trajectory, hub_cache_dir, hub_revisions, resolve_model_path

log = logging.getLogger(__name__)

KEYS = ("path", "base", "hub_repo", "hub_revision_prefix", "steps", "max_step", "check_finite",
        "trust_remote_code", "cache_dir")


def _get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


def open_trajectory(cfg=None, **kwargs) -> Trajectory:
    """Open and validate a trajectory from `cfg.trajectory` (a DictConfig/dict/dataclass) and/or
    keyword overrides: path, base, hub_repo, hub_revision_prefix, steps, max_step, check_finite,
    trust_remote_code, cache_dir (default: RLVR_CACHE_DIR or ~/.cache/rlvr-linearity)."""
    unknown = set(kwargs) - set(KEYS)
    if unknown:
        raise TypeError(f"open_trajectory: unknown arguments {sorted(unknown)}")
    opt = {k: kwargs.get(k) if kwargs.get(k) is not None else _get(cfg, k) for k in KEYS}
    steps_req = None if opt["steps"] is None else sorted({int(s) for s in opt["steps"]})
    max_step = None if opt["max_step"] is None else int(opt["max_step"])
    check_finite = True if opt["check_finite"] is None else bool(opt["check_finite"])

    if opt["hub_repo"]:
        if opt["path"]:
            raise ConfigError("trajectory: set either trajectory.path or trajectory.hub_repo, not both")
        cache = hub_cache(opt["cache_dir"])
        repo, prefix = str(opt["hub_repo"]), str(opt["hub_revision_prefix"] or "step_")
        if steps_req is not None and max_step is None:
            wanted = steps_req
        else:
            avail = sorted(hub_revisions(repo, prefix, hub_cache_dir(cache, repo)))
            wanted = select_steps(avail, steps_req, max_step, where_=f"trajectory.hub_repo {repo}")
        root = fetch_hub_trajectory(repo, [s for s in wanted if s != 0 or not opt["base"]], cache, prefix)
        found = [f for f in discover(root) if f.step in set(wanted)]
    elif opt["path"]:
        try:
            root = Path(str(opt["path"])).expanduser().resolve()
        except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
            raise TrajectoryError(f"{where(opt['path'])}: cannot resolve the trajectory path ({e})") from None
        found = discover(root)
        avail = [f.step for f in found]
        wanted = select_steps(avail, steps_req, max_step, where_=str(root))
        found = [f for f in found if f.step in set(wanted) or f.step == 0]
    else:
        raise ConfigError("trajectory: set trajectory.path=DIR (or trajectory.hub_repo=ORG/NAME)")

    models: dict[int, ModelFiles] = {}
    for f in found:
        models[f.step] = _open_found(f)
    if opt["base"]:
        if 0 in models:
            log.info("trajectory.base given: it replaces the trajectory's own step 0 (%s)", models[0].path)
        models[0] = ModelFiles(resolve_model_path(str(opt["base"])), step=0)
    elif 0 not in models:
        models[0] = ModelFiles(_base_from_run(root, found), step=0)
    if len(models) < 2:
        raise TrajectoryError(f"{where(root)}: no checkpoints besides the base model")
    log.info("trajectory %s: base %s, steps %s", root, models[0].path, sorted(models)[1:])
    return Trajectory(models, path=root, check_finite=check_finite)


def _open_found(f: Found) -> ModelFiles:
    if f.layout == "verl_fsdp":
        from .verl_fsdp import FsdpShardFiles

        return FsdpShardFiles(f.dir, step=f.step)
    return ModelFiles(f.dir, step=f.step)


def hub_cache(cache_dir_opt) -> Path:
    """The cache a hub trajectory's step links go under: trajectory.cache_dir, else paths.cache_dir()."""
    from rlvr_linearity.paths import cache_dir

    return Path(str(cache_dir_opt)).expanduser() if cache_dir_opt else cache_dir()


def select_steps(avail: list[int], steps_req, max_step, where_: str) -> list[int]:
    """Steps kept by trajectory.steps / trajectory.max_step (0 is always kept if present)."""
    if steps_req is not None:
        missing = [s for s in steps_req if s not in avail and s != 0]
        if missing:
            raise TrajectoryError(f"{where_}: requested step(s) {missing} not found (available: {avail})")
        chosen = [s for s in avail if s in steps_req or s == 0]
    else:
        chosen = list(avail)
    if max_step is not None:
        chosen = [s for s in chosen if s <= max_step]
    if not [s for s in chosen if s != 0]:
        raise TrajectoryError(f"{where_}: no checkpoints left after trajectory.steps={steps_req} "
                              f"max_step={max_step} (available: {avail})")
    return chosen


def _base_from_run(root: Path, found: list[Found]) -> Path:
    """The base recorded by the run: trajectory.json, else the verl config; else an error."""
    meta = trajectory_json(root)
    if meta and meta.get("base"):
        spec = str(meta["base"])
        rel = root / spec
        if not Path(spec).is_absolute() and rel.exists():
            spec = str(rel)
        listed = [int(s) for s in meta.get("steps") or []]
        have = {f.step for f in discover(root)}
        gone = [s for s in listed if s not in have]
        if gone:
            raise TrajectoryError(f"{where(root / 'trajectory.json')}: lists step(s) {gone} that are not on disk")
        return resolve_model_path(spec, what=f"base model named in {root / 'trajectory.json'}")
    hint = verl_base_hint(root, found)
    if hint:
        return resolve_model_path(hint, what="base model from the verl run's config")
    raise TrajectoryError(f"{where(root)}: missing base model: the trajectory holds no step 0 and no "
                          "trajectory.json; set trajectory.base=PATH_OR_HUB_ID")
