"""Forecasting inside a training run, after each checkpoint save.

- TRL (`rlvr train trainer=trl forecast.enabled=true`): `trl_callbacks(cfg, out_dir, tracker)`
  gives a `transformers.TrainerCallback` whose `on_save` (called by the Trainer after the
  checkpoint is on disk, and after the trajectory callback rewrote trajectory.json) folds every
  complete step in and forecasts, synchronously, logging through the run's tracker.
- verl (`rlvr train trainer=verl forecast.enabled=true`): the launcher sets verl's
  `trainer.checkpoint_callback_class` (verl >= 0.9, v1 trainer) to `VerlForecastCallback`,
  which verl instantiates on its driver with its own config and calls after each save. It finds
  this project's config in `$RLVR_FORECAST_CONFIG` (a YAML file) or in the `config` event of
  `DIR/tracking.jsonl` (DIR = the parent of `trainer.default_local_dir`), and logs to
  `DIR/forecast/tracking.jsonl` and to verl's own W&B run when there is one.
A forecasting failure never stops training: it is logged once and forecasting is turned off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _rng_preserved():
    """Leave the CPU random state (python, numpy, torch) as it was: forecasting runs between a
    checkpoint save and the next step, and its evaluator seeds torch. Without this, live forecasting
    changes the samples training draws next, and a resumed run (which restores the state saved
    with the checkpoint) no longer equals an uninterrupted one."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class _Live:
    """Shared by the hooks: a lazily built Forecaster fed with the trajectory's complete steps."""

    def __init__(self, cfg, out_dir: Path, traj_dir: Path, tracker, default_target: int | None):
        self.cfg, self.out_dir, self.traj_dir = cfg, Path(out_dir), Path(traj_dir)
        self.tracker, self.default_target = tracker, default_target
        self.forecaster = None
        self.failed = False

    def saved(self) -> list[dict]:
        if self.failed:
            return []
        try:
            with _rng_preserved():
                return self._saved()
        except Exception as err:  # forecasting must not kill a training run
            self.failed = True
            log.exception("live forecasting failed and is turned off for this run: %s", err)
            if self.tracker is not None:
                try:
                    self.tracker.summary({"forecast/error": str(err)})
                except Exception:
                    pass
            return []

    def _saved(self) -> list[dict]:
        from .forecaster import Forecaster, ForecastSettings, make_evaluator
        from .watch import ready_steps, resolve_base

        ready = ready_steps(self.traj_dir)
        if self.forecaster is None:
            base = resolve_base(self.cfg.trajectory.base, self.traj_dir, ready)
            if base is None:
                return []
            settings = ForecastSettings.from_cfg(self.cfg)
            evaluator = make_evaluator(self.cfg) if settings.evaluate or settings.evaluate_observed else None
            final = self.default_target
            self.forecaster = Forecaster(self.out_dir, base, settings, target=self.default_target,
                                         final_step=final, trajectory_path=self.traj_dir, tracker=self.tracker,
                                         evaluator=evaluator)
        return self.forecaster.observe_many([(s, m) for s, m in ready.items() if s != 0])


def trl_callbacks(cfg, out_dir, tracker=None) -> list:
    """[] unless `forecast.enabled`; else one TrainerCallback forecasting after each save."""
    if not cfg.forecast.enabled:
        return []
    from transformers import TrainerCallback

    out_dir = Path(out_dir).resolve()
    live = _Live(cfg, out_dir, out_dir / "trajectory", tracker, int(cfg.train.steps))

    class ForecastCallback(TrainerCallback):
        """Live R² and RELEX forecasts after every checkpoint save (rlvr_linearity.forecast)."""

        def __init__(self):
            self.live = live

        def on_save(self, args, state, control, **kw):
            if live.default_target is None:
                live.default_target = int(state.max_steps)
            live.saved()

    return [ForecastCallback()]


def _rlvr_config_for(dir_: Path):
    """This project's config for a verl run whose output dir is `dir_`."""
    from omegaconf import OmegaConf

    env = os.environ.get("RLVR_FORECAST_CONFIG")
    if env:
        return OmegaConf.load(env)
    tracking = dir_ / "tracking.jsonl"
    cfg = None
    if tracking.is_file():
        for line in tracking.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "config":
                cfg = rec.get("config")
    if cfg is None:
        raise FileNotFoundError(f"no rlvr config for live forecasting: set RLVR_FORECAST_CONFIG or run through "
                                f"`rlvr train` (which writes {tracking})")
    return OmegaConf.create(cfg)


class _JsonlTracker:
    """A tracker for code running inside verl's driver: DIR/forecast/tracking.jsonl, mirrored to
    the process's active W&B run (verl's, when `trainer.logger` includes wandb)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, rec: dict) -> None:
        from rlvr_linearity.io import jsonable

        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(jsonable({"time": time.time(), **rec})) + "\n")

    @staticmethod
    def _wandb():
        try:
            import wandb

            return wandb.run
        except Exception:
            return None

    def log(self, metrics: dict, step=None) -> None:
        from rlvr_linearity.io import jsonable

        self._write({"event": "metrics", "step": step, "metrics": metrics})
        run = self._wandb()
        if run is not None:
            try:
                run.log(jsonable(metrics), step=step)
            except Exception as err:
                log.warning("W&B logging of forecasts failed: %s", err)

    def summary(self, values: dict) -> None:
        from rlvr_linearity.io import jsonable

        self._write({"event": "summary", "values": values})
        run = self._wandb()
        if run is not None:
            for k, v in jsonable(values).items():
                run.summary[k] = v

    def table(self, name: str, rows: list[dict]) -> None:
        self._write({"event": "table", "name": name, "rows": rows})


class VerlForecastCallback:
    """verl `trainer.checkpoint_callback_class`: live forecasting on verl's driver."""

    def __init__(self, config=None):
        self.config = config
        self.live = None

    def on_save(self, trainer=None, global_step: int = 0, checkpoint_dir: str = "", async_save: bool = False,
                **kwargs) -> None:
        if async_save:  # not durable yet; the next synchronous save catches this step up
            log.info("live forecasting: step %s saved asynchronously, folded in at the next save", global_step)
            return
        if self.live is None:
            traj = Path(str(self.config.trainer.default_local_dir)).resolve()
            try:
                cfg = _rlvr_config_for(traj.parent)
            except Exception as err:
                log.error("live forecasting off: %s", err)
                self.live = False
                return
            total = self.config.trainer.get("total_training_steps")
            self.live = _Live(cfg, traj.parent, traj, _JsonlTracker(traj.parent / "forecast" / "tracking.jsonl"),
                              int(total) if total is not None else None)
        if self.live:
            self.live.saved()
