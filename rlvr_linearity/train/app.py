"""`rlvr train`: thin command entry point; the work lives in plain functions of this package."""

from __future__ import annotations

from pathlib import Path

from rlvr_linearity.errors import ConfigError


def train(cfg, out_dir, tracker=None) -> Path:
    """Train as `cfg.train.backend` says (trl | verl); returns the trajectory directory."""
    backend = str(cfg.train.backend)
    if backend == "trl":
        from rlvr_linearity.forecast.hooks import trl_callbacks
        from rlvr_linearity.train.trl_grpo import train_trl

        return train_trl(cfg, Path(out_dir), tracker, callbacks=trl_callbacks(cfg, out_dir, tracker))
    if backend == "verl":
        from rlvr_linearity.train.verl_launcher import launch_verl

        return launch_verl(cfg, Path(out_dir), tracker)
    raise ConfigError(f"train.backend: unknown backend {backend!r} (use trl or verl)")
