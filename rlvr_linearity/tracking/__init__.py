"""Tracking: every command logs config, metrics, figures and tables to a local JSONL file
(always) and to W&B (offline unless an API key or WANDB_MODE says otherwise; `logger=none` off).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rlvr_linearity.io import jsonable

log = logging.getLogger(__name__)


def resolved_config(cfg) -> dict:
    """The config as the run used it (interpolations resolved); unresolved if resolution fails."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside Hydra's job (e.g. hydra:...)
        return OmegaConf.to_container(cfg, resolve=False)


def wandb_mode(logger_cfg) -> str:
    """`logger.mode`, else $WANDB_MODE, else online with an API key (env or ~/.netrc), else offline."""
    mode = logger_cfg.mode or os.environ.get("WANDB_MODE")
    if not mode:
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists()
        mode = "online" if has_key else "offline"
    return mode


def hydra_sweep() -> dict | None:
    """`{"dir", "name", "num", "overrides"}` of the Hydra multirun this job belongs to, else None.

    A sweep is one experiment: its jobs share a W&B group named after the sweep directory.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(str(hc.sweep.dir))
        return {"dir": str(sweep_dir.resolve()), "name": sweep_dir.name, "num": hc.job.num,
                "overrides": list(hc.overrides.task)}
    except Exception:  # pragma: no cover - Hydra internals changed; tracking must not fail a run
        return None


class Tracker:
    """Writes `<output_dir>/tracking.jsonl` and mirrors it to a W&B run when enabled."""

    def __init__(self, cfg, command: str, output_dir: Path):
        self.command = command
        self.output_dir = Path(output_dir)
        # A multi-node job (slurm_multinode) runs the command on every node; only rank 0 reports.
        self.rank = int(os.environ.get("SLURM_PROCID", 0)) if int(os.environ.get("SLURM_NTASKS", 1)) > 1 else 0
        self.path = self.output_dir / ("tracking.jsonl" if self.rank == 0 else f"tracking.rank{self.rank}.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")
        self._config = resolved_config(cfg)
        self.wandb_run = None
        logger_cfg = cfg.logger
        sweep = hydra_sweep()
        # W&B group: explicit, else the sweep this job belongs to, else the experiment preset.
        wandb_on = logger_cfg.backend == "wandb"
        self.group = ((logger_cfg.group if wandb_on else None) or (f"{command}-{sweep['name']}" if sweep else None)
                      or cfg.experiment_name)
        self.run_name = (logger_cfg.name if wandb_on else None) or (
            f"{command}-{sweep['name']}-{sweep['num']}" if sweep else f"{command}-{self.output_dir.name}"
        )
        if wandb_on and self.rank == 0:
            self.wandb_run = self._init_wandb(logger_cfg, cfg)
        self._write({"event": "config", "command": command, "config": self._config,
                     "group": self.group, "name": self.run_name, "sweep": sweep,
                     "wandb": self._wandb_info()})

    def _init_wandb(self, logger_cfg, cfg):
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a core dependency
            log.warning("wandb is not installed; logging to tracking.jsonl only")
            return None
        mode = wandb_mode(logger_cfg)
        if mode == "disabled":
            return None
        wandb_dir = Path(logger_cfg.dir or self.output_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=self.group,
            name=self.run_name,
            job_type=self.command,
            tags=list(logger_cfg.tags),
            dir=str(wandb_dir),
            mode=mode,
            config=jsonable(self._config),
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def _wandb_info(self) -> dict | None:
        run = self.wandb_run
        if run is None:
            return None
        return {"mode": run.settings.mode, "dir": str(run.dir), "id": run.id, "group": run.group}

    def _write(self, record: dict) -> None:
        record = {"time": time.time(), **record}
        self._file.write(json.dumps(jsonable(record)) + "\n")
        self._file.flush()

    def _to_wandb(self, send) -> None:
        """Mirror a record to W&B. A broken W&B (its service killed by Slurm's pre-timeout signal,
        a full disk) turns W&B off for the rest of the run instead of failing it."""
        if self.wandb_run is None:
            return
        try:
            send(self.wandb_run)
        except Exception as err:
            log.warning("W&B logging failed (%s); continuing with tracking.jsonl only", err)
            self._write({"event": "wandb_error", "error": str(err)})
            self.wandb_run = None

    def log(self, metrics: dict, step: int | None = None) -> None:
        """Scalar metrics, optionally at a step (training step, target step...)."""
        self._write({"event": "metrics", "step": step, "metrics": metrics})
        self._to_wandb(lambda run: run.log(jsonable(metrics), step=step))

    def summary(self, values: dict) -> None:
        """Final values of the run (accuracies, R² statistics, timings)."""
        self._write({"event": "summary", "values": values})

        def send(run):
            for key, value in jsonable(values).items():
                run.summary[key] = value

        self._to_wandb(send)

    def table(self, name: str, rows: list[dict]) -> None:
        """A table (per-benchmark metrics, per-tensor R², per-window RELEX results)."""
        self._write({"event": "table", "name": name, "rows": rows})
        if not rows:
            return

        def send(run):
            import wandb

            columns = sorted({k for row in rows for k in row})
            data = [[jsonable(row.get(c)) for c in columns] for row in rows]
            run.log({name: wandb.Table(columns=columns, data=data)})

        self._to_wandb(send)

    def curve(self, prefix: str, rows: list[dict], step_key: str = "step") -> None:
        """Numeric series of `rows` against their own axis `<prefix>/step` (W&B `define_metric`),
        so training curves and accuracy vs step plot as lines whatever else the run logged."""
        self._write({"event": "curve", "prefix": prefix, "rows": rows})
        if not rows:
            return

        def send(run):
            run.define_metric(f"{prefix}/step")
            run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
            for row in jsonable(rows):
                values = {f"{prefix}/{k}": v for k, v in row.items()
                          if k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool)}
                run.log({f"{prefix}/step": row[step_key], **values})

        self._to_wandb(send)

    def reference(self, name: str, kind: str, path: str | Path) -> None:
        """A directory (trajectory, predicted checkpoint) as a W&B artifact by reference: its
        location is recorded, nothing is uploaded or hashed."""
        path = Path(path).resolve()
        self._write({"event": "artifact", "name": name, "type": kind, "path": str(path)})

        def send(run):
            import wandb

            artifact = wandb.Artifact("".join(c if c.isalnum() or c in "-_." else "_" for c in name), type=kind)
            artifact.add_reference(path.as_uri(), checksum=False)
            run.log_artifact(artifact)

        self._to_wandb(send)

    def figure(self, name: str, path: str | Path) -> None:
        """A figure already saved as an image file."""
        self._write({"event": "figure", "name": name, "path": str(path)})

        def send(run):
            import wandb

            run.log({name: wandb.Image(str(path))})

        self._to_wandb(send)

    def finish(self, failed: bool = False) -> None:
        """Close the run; never raises, so it cannot mask the error that ended a run."""
        self._write({"event": "end", "failed": failed})
        self._file.close()
        run, self.wandb_run = self.wandb_run, None
        if run is not None:
            try:
                run.finish(exit_code=1 if failed else 0)
            except Exception as err:
                log.warning("W&B finish failed (%s); tracking.jsonl is complete", err)


@contextmanager
def start_tracking(cfg, command: str, output_dir: Path) -> Iterator[Tracker]:
    tracker = Tracker(cfg, command, output_dir)
    try:
        yield tracker
    except BaseException:
        tracker.finish(failed=True)
        raise
    else:
        tracker.finish()
