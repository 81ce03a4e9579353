"""Following a checkpoint directory while a run writes it: `rlvr linearity trajectory.path=DIR
watch=true` polls DIR every `forecast.poll_s` seconds and feeds each newly complete step to a
`Forecaster`, until the run's final step is seen, verl's end-of-run `trajectory.json` appears
with every step seen, or no new step came for `forecast.timeout_s` seconds.

A step is complete (`ready_steps`) when its model files open and pass the truncation checks and
  - verl layout: it is <= `latest_checkpointed_iteration.txt` (discovery already skips others);
  - `rlvr train trainer=trl` (trajectory.json with trainer "trl"): trajectory.json lists it
    (rewritten after each save, so a checkpoint being written is never taken);
  - otherwise: its weight files' sizes and mtimes are unchanged since the previous poll.
Incomplete steps are skipped (and retried at the next poll), never an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rlvr_linearity.errors import ConfigError, TrajectoryError

log = logging.getLogger(__name__)


def _signature(mf) -> tuple:
    files = [*mf.files, mf.path / "config.json"]
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())


def ready_steps(root: Path, seen_signatures: dict | None = None) -> dict:
    """{step: ModelFiles} of the complete steps under `root` (step 0 included if stored).

    `seen_signatures` (a dict kept between polls) enables the size-stability rule for layouts
    without another completion signal; without it such steps are taken as they are."""
    from rlvr_linearity.trajectory.load import _open_found
    from rlvr_linearity.trajectory.discover import PATTERNS, discover, trajectory_json

    root = Path(root)
    if not root.is_dir() or not any(rx.match(p.name) for p in root.iterdir() for _, rx in PATTERNS):
        return {}
    try:
        meta = trajectory_json(root)
    except TrajectoryError:  # being replaced: atomic, but a reader may race an old writer
        meta = None
    listed = set(int(s) for s in meta.get("steps") or []) if meta and meta.get("trainer") == "trl" else None
    out = {}
    for f in discover(root):
        try:
            mf = _open_found(f)
        except TrajectoryError as e:
            log.debug("step %d not complete yet: %s", f.step, e)
            continue
        if f.layout in ("verl", "verl_fsdp"):
            out[f.step] = mf
        elif listed is not None:
            if f.step in listed:
                out[f.step] = mf
        elif seen_signatures is None:
            out[f.step] = mf
        else:
            sig = _signature(mf)
            if seen_signatures.get(f.step) == sig:
                out[f.step] = mf
            seen_signatures[f.step] = sig
    return out


def run_final_step(root: Path) -> int | None:
    """The last step the run will save, from `rlvr train`'s trajectory.json (trl: config.steps)
    or a verl_config.yaml in or next to the trajectory (trainer.total_training_steps)."""
    from rlvr_linearity.trajectory.discover import trajectory_json

    root = Path(root)
    try:
        meta = trajectory_json(root)
    except TrajectoryError:
        meta = None
    if meta and isinstance(meta.get("config"), dict) and meta["config"].get("steps") is not None:
        return int(meta["config"]["steps"])
    for cfg in (root / "verl_config.yaml", root.parent / "verl_config.yaml"):
        if cfg.is_file():
            from omegaconf import OmegaConf

            try:
                v = OmegaConf.select(OmegaConf.load(cfg), "trainer.total_training_steps", default=None)
            except Exception:
                v = None
            if v is not None:
                return int(v)
    return None


def resolve_base(cfg_base, root: Path, ready: dict):
    """The step-0 model: trajectory.base, the trajectory's own step 0, trajectory.json's base, the
    verl config's model; None while none is known yet (the run has not written it)."""
    from rlvr_linearity.trajectory import ModelFiles
    from rlvr_linearity.trajectory.discover import discover, trajectory_json, verl_base_hint
    from rlvr_linearity.trajectory.hub import resolve_model_path

    if cfg_base:
        return ModelFiles(resolve_model_path(str(cfg_base)), step=0)
    if 0 in ready:
        return ready[0]
    meta = trajectory_json(root)
    spec = (meta or {}).get("base")
    if spec:
        rel = Path(root) / str(spec)
        if not Path(str(spec)).is_absolute() and rel.exists():
            spec = str(rel)
        return ModelFiles(resolve_model_path(str(spec), what=f"base model named in {root / 'trajectory.json'}"),
                          step=0)
    hint = verl_base_hint(root, discover(root)) if ready else None
    if hint:
        return ModelFiles(resolve_model_path(hint, what="base model from the verl run's config"), step=0)
    return None


def _verl_finished(root: Path, observed: list[int]) -> bool:
    """verl runs get trajectory.json only when training ended (rlvr's launcher writes it)."""
    from rlvr_linearity.trajectory.discover import trajectory_json

    try:
        meta = trajectory_json(root)
    except TrajectoryError:
        return False
    if not meta or meta.get("trainer") != "verl":
        return False
    return set(int(s) for s in meta.get("steps") or []) <= set(observed)


def watch(cfg, out_dir, tracker=None, *, stop=None) -> dict:
    """Follow `cfg.trajectory.path` and forecast as configured by `cfg.forecast` (see module doc).

    `stop`: an optional threading.Event that ends the loop (tests, embedding)."""
    from .forecaster import Forecaster, ForecastSettings, make_evaluator

    root = cfg.trajectory.path
    if not root:
        raise ConfigError("watch=true needs trajectory.path=DIR (the checkpoint directory to follow)")
    root = Path(str(root)).expanduser().resolve()
    fc = cfg.forecast
    poll, timeout = float(fc.poll_s), float(fc.timeout_s)
    settings = ForecastSettings.from_cfg(cfg)
    evaluator = make_evaluator(cfg) if settings.evaluate or settings.evaluate_observed else None
    sigs: dict = {}
    forecaster = None
    last_new = time.monotonic()
    reason = None
    log.info("watching %s (poll %.1fs, stop after %.0fs without a new step)", root, poll, timeout)
    while True:
        ready = ready_steps(root, sigs)
        if forecaster is None and any(s != 0 for s in ready):
            base = resolve_base(cfg.trajectory.base, root, ready)
            if base is not None:
                final = run_final_step(root)
                if fc.final_step is not None:
                    final = int(fc.final_step)
                target = settings.target if settings.target is not None else final
                forecaster = Forecaster(out_dir, base, settings, target=target,
                                        final_step=final if final is not None else target,
                                        trajectory_path=root, tracker=tracker, evaluator=evaluator)
                log.info("forecasting step %d of %s (final step %d)", forecaster.target, root, forecaster.final_step)
        if forecaster is not None:
            new = [(s, m) for s, m in ready.items() if s != 0 and s not in forecaster.models]
            if new:
                forecaster.observe_many(new)
                last_new = time.monotonic()
            if forecaster.done:
                reason = f"final step {forecaster.final_step} observed"
                break
            if _verl_finished(root, forecaster.observed):
                reason = "verl run finished (trajectory.json written)"
                break
        if time.monotonic() - last_new > timeout:
            reason = f"no new step for {timeout:.0f}s (forecast.timeout_s)"
            break
        if stop is not None and stop.is_set():
            reason = "stopped"
            break
        time.sleep(poll)
    log.info("watch ended: %s", reason)
    res = forecaster.result() if forecaster is not None else {"observed": [], "forecasts": []}
    res["stopped_because"] = reason
    return res
