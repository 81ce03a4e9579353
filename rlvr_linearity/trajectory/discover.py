"""Find the step checkpoints of a trajectory directory, whatever wrote it.

Layouts (contract): `global_step_N/actor/huggingface/` (verl), `global_step_N/` holding an HF
model, `checkpoint-N/` (transformers/TRL Trainer), `step_N/`. A verl step beyond
`latest_checkpointed_iteration.txt`, or whose `actor/huggingface/` weights are not there yet,
is a save in progress: skipped with a log line, never an error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from rlvr_linearity.errors import TrajectoryError, where

from .files import INDEX, SINGLE, read_json

log = logging.getLogger(__name__)

PATTERNS = [("global_step", re.compile(r"^global_step_(\d+)$")), ("checkpoint", re.compile(r"^checkpoint-(\d+)$")),
            ("step", re.compile(r"^step_(\d+)$"))]
VERL_TRACKER = "latest_checkpointed_iteration.txt"
VERL_HF = Path("actor") / "huggingface"


@dataclass(frozen=True)
class Found:
    step: int
    dir: Path       # the HF model directory (or verl actor dir for the FSDP-shard fallback)
    entry: Path     # the top-level step entry (global_step_N, checkpoint-N, ...)
    layout: str     # verl | global_step | checkpoint | step | verl_fsdp


def _has_weights(d: Path) -> bool:
    return (d / SINGLE).is_file() or (d / INDEX).is_file()


def verl_tracker(root: Path) -> int | None:
    f = root / VERL_TRACKER
    if not f.is_file():
        return None
    try:
        return int(f.read_text().strip())
    except ValueError:
        raise TrajectoryError(f"{where(f)}: not an integer step") from None


def discover(root: Path) -> list[Found]:
    """All complete step checkpoints under `root`, sorted by step; duplicates are an error."""
    root = Path(root)
    if not root.exists():
        raise TrajectoryError(f"{where(root)}: trajectory directory not found")
    if not root.is_dir():
        raise TrajectoryError(f"{where(root)}: trajectory path is not a directory")
    latest = verl_tracker(root)
    found: dict[int, Found] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise TrajectoryError(f"{where(root)}: cannot read ({e.strerror or e})") from None
    for entry in entries:
        for layout, rx in PATTERNS:
            m = rx.match(entry.name)
            if m:
                break
        else:
            continue
        step = int(m.group(1))
        if not entry.is_dir():  # a step's name on a file, a broken link or a symlink loop
            kind = "a symlink loop or broken link" if entry.is_symlink() else "not a directory"
            log.warning("skipping %s: named like step %d but %s", entry, step, kind)
            continue
        item = _classify(entry, layout, step, latest)
        if item is None:
            continue
        if step in found:
            raise TrajectoryError(f"{where(entry, step)}: duplicate step (also {found[step].entry.name})")
        found[step] = item
    if not found:
        hint = " (it holds a single model: pass it as trajectory.base)" if (root / "config.json").is_file() else ""
        raise TrajectoryError(f"{where(root)}: no checkpoints found (expected global_step_N/, checkpoint-N/ "
                              f"or step_N/ directories){hint}")
    return [found[s] for s in sorted(found)]


def _classify(entry: Path, layout: str, step: int, latest: int | None) -> Found | None:
    if layout == "global_step" and (entry / "actor").is_dir():
        if latest is not None and step > latest:
            log.info("skipping %s: beyond %s=%d (save in progress)", entry, VERL_TRACKER, latest)
            return None
        hf = entry / VERL_HF
        if _has_weights(hf):
            return Found(step, hf, entry, "verl")
        if latest is not None and any((entry / "actor").glob("model_world_size_*_rank_*.pt")):
            return Found(step, entry / "actor", entry, "verl_fsdp")
        log.info("skipping %s: no %s/model.safetensors (save in progress or hf_model not saved)", entry, VERL_HF)
        return None
    return Found(step, entry, entry, layout)


def trajectory_json(root: Path) -> dict | None:
    """`trajectory.json` written by `rlvr train` (base model and saved steps), if any."""
    f = Path(root) / "trajectory.json"
    if not f.is_file():
        return None
    meta = read_json(f, None, "trajectory.json")
    steps = meta.get("steps")
    if steps is not None and not (isinstance(steps, list) and all(type(s) is int for s in steps)):
        raise TrajectoryError(f"{where(f)}: corrupt trajectory.json (steps must be a list of integers, "
                              f"got {json.dumps(steps)[:80]})")
    return meta


def verl_base_hint(root: Path, found: list[Found]) -> str | None:
    """The base model of a verl run: `actor_rollout_ref.model.path` of a verl_config.yaml in or
    next to the trajectory dir, else `_name_or_path` of a step's exported config.json."""
    for cfg in (root / "verl_config.yaml", root.parent / "verl_config.yaml"):
        if cfg.is_file():
            from omegaconf import OmegaConf

            try:
                path = OmegaConf.select(OmegaConf.load(cfg), "actor_rollout_ref.model.path",
                                        throw_on_missing=False, default=None)
            except Exception as e:  # an unresolvable interpolation elsewhere in verl's tree
                log.warning("cannot read base model from %s: %s", cfg, e)
                continue
            if path:
                return str(path)
    for f in found:
        if f.layout == "verl":
            try:
                name = json.loads((f.dir / "config.json").read_text()).get("_name_or_path")
            except (OSError, ValueError, AttributeError):  # not UTF-8 JSON, or not an object
                continue
            if name:
                return str(name)
    return None
