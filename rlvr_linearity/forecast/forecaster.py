"""`Forecaster`: told "step s is saved", it updates the R² statistics and, on schedule, writes a
RELEX forecast of the run's final step, optionally evaluates it, and logs it all.

Per saved step (any order of arrival, gaps allowed; a backlog is folded in one call):
  1. incremental per-weight R² over every step seen so far (`linearity.stream.StreamingR2`):
     `DIR/forecast/weights_r2.json` (contract keys, latest) and a line of `r2.jsonl`;
  2. from `start_step` on, every `every` saved steps: RELEX (`extrapolate.relex.run_relex`, the
     same code as `rlvr extrapolate`) observing all saved steps so far, predicting `target`:
     `DIR/forecast/observed_<s>/step_<target>/` (a complete HF model, written atomically);
  3. with `evaluate`: `rlvr evaluate`'s `evaluate()` on it (and, with `evaluate_observed`, on the
     observed checkpoint itself) under `observed_<s>/eval_forecast|eval_observed/evaluate/`;
  4. `forecast/*` metrics through the tracker (tracking.jsonl + W&B) at step s, and one line per
     forecast in `DIR/forecast/forecasts.jsonl`;
  5. when the target step itself is saved: every kept forecast's weight-space error against it
     (and its accuracy beside the actual one) in `DIR/forecast/final.json`.
`keep=N` keeps only the newest N forecast models (their metrics and JSONL lines stay).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlvr_linearity.errors import ConfigError

log = logging.getLogger(__name__)

Evaluator = Callable[[str, Path], dict]


@dataclass
class ForecastSettings:
    start_step: int = 5
    every: int = 1
    target: int | None = None
    rank: int = 1
    fit: str = "linear"
    degree: int = 2
    dtype: str | None = None
    evaluate: bool = False
    evaluate_observed: bool = False
    keep: int | None = None
    r2: bool = True
    r2_state: str = "memory"
    thresholds: tuple = (0.5, 0.7, 0.9)
    chunk_elements: int = 1 << 22
    memory_budget: int = 1 << 28

    @classmethod
    def from_cfg(cls, cfg) -> "ForecastSettings":
        fc = cfg.forecast
        s = cls(start_step=int(fc.start_step), every=int(fc.every),
                target=None if fc.target is None else int(fc.target), rank=int(fc.rank),
                fit=str(fc.fit), degree=int(fc.degree), dtype=fc.dtype,
                evaluate=bool(fc.evaluate), evaluate_observed=bool(fc.evaluate_observed),
                keep=None if fc.keep in (None, 0) else int(fc.keep), r2=bool(fc.r2),
                r2_state=str(fc.r2_state), thresholds=tuple(float(t) for t in cfg.linearity.thresholds),
                memory_budget=int(fc.memory_budget))
        s.validate()
        return s

    def validate(self) -> None:
        if self.every < 1:
            raise ConfigError(f"forecast.every={self.every}: must be >= 1")
        if self.start_step < 1:
            raise ConfigError(f"forecast.start_step={self.start_step}: must be >= 1")
        if self.rank < 1:
            raise ConfigError(f"forecast.rank={self.rank}: must be >= 1")
        if self.fit not in ("linear", "polynomial"):
            raise ConfigError(f"forecast.fit={self.fit!r}: expected linear or polynomial")
        if self.keep is not None and self.keep < 1:
            raise ConfigError(f"forecast.keep={self.keep}: null (all) or >= 1")
        if self.r2_state not in ("memory", "disk"):
            raise ConfigError(f"forecast.r2_state={self.r2_state!r}: expected memory or disk")

    @property
    def min_points(self) -> int:
        """Observed steps needed before a forecast: enough for the rank and the fit."""
        return max(self.rank, 2 if self.fit == "linear" else self.degree + 1)


def make_evaluator(cfg) -> Evaluator:
    """`rlvr evaluate`'s evaluate() on a model directory with this run's benchmarks, sampling
    and engine (`forecast.benchmarks` overrides `benchmarks`)."""
    from omegaconf import OmegaConf, open_dict

    benches = list(cfg.forecast.benchmarks or cfg.benchmarks or [])
    if not benches:
        raise ConfigError("forecast.evaluate=true needs benchmarks (forecast.benchmarks or benchmarks)")
    from rlvr_linearity.evaluate.benchmarks import benchmark_spec

    for b in benches:
        benchmark_spec(b)  # unknown benchmark: fail before training starts
    base_cfg = copy.deepcopy(cfg)
    with open_dict(base_cfg):
        base_cfg.benchmarks = benches
        base_cfg.evaluate.step = None
        base_cfg.evaluate.responses = None
        base_cfg.evaluate.models_dir = None
    OmegaConf.set_readonly(base_cfg, False)

    def run(model_path: str, out_dir: Path) -> dict:
        from rlvr_linearity.evaluate.app import evaluate

        sub = copy.deepcopy(base_cfg)
        with open_dict(sub):
            sub.evaluate.model = str(model_path)
        return evaluate(sub, Path(out_dir))

    return run


def accuracy_of(metrics: dict | None) -> float | None:
    """The headline accuracy: the only benchmark's, else the macro average."""
    if not metrics:
        return None
    if "macro_average" in metrics:
        return metrics["macro_average"].get("accuracy")
    first = next(iter(metrics.values()))
    return first.get("accuracy") if isinstance(first, dict) else None


def _upsert_jsonl(path: Path, rec: dict, key: str = "observed_step") -> None:
    """Add `rec` as a line of `path`, replacing a line with the same `key` (one line per observed
    step: a rerun of watch mode over the same directory rewrites its lines instead of doubling
    them; a resumed run adds its new steps). Written to a temp name, then renamed."""
    from rlvr_linearity.io import jsonable

    lines = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get(key) == rec.get(key):
                    continue
            except (json.JSONDecodeError, AttributeError):
                pass  # a torn or foreign line is kept as it is
            lines.append(line)
    lines.append(json.dumps(jsonable(rec)))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data) -> None:
    from rlvr_linearity.io import write_json_atomic
    from rlvr_linearity.io import jsonable

    write_json_atomic(path, jsonable(data))


def _remove_tree(path: Path) -> None:
    """Rename first, then delete: no half-deleted model directory that looks complete."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


class Forecaster:
    """Live R² and RELEX forecasts of one training run (see the module docstring).

    out_dir: outputs go under `out_dir/forecast/`. base: the step-0 model (ModelFiles or dir).
    target: the step to forecast (`settings.target` wins); final_step: the run's last step
    (default: target), after which `done` is true. tracker: a Tracker (or None);
    evaluator: `make_evaluator(cfg)` or any `(model_dir, out_dir) -> metrics.json` callable.
    """

    def __init__(self, out_dir, base, settings: ForecastSettings, *, target: int | None = None,
                 final_step: int | None = None, trajectory_path=None, tracker=None,
                 evaluator: Evaluator | None = None):
        from rlvr_linearity.linearity.stream import StreamingR2
        from rlvr_linearity.trajectory import ModelFiles

        self.settings = settings
        self.root = Path(out_dir) / "forecast"
        self.root.mkdir(parents=True, exist_ok=True)
        self.base = base if isinstance(base, ModelFiles) else ModelFiles(base, step=0)
        self.target = settings.target if settings.target is not None else target
        if self.target is None:
            raise ConfigError("forecast.target: not given and the run's final step is unknown; "
                              "set forecast.target=STEP")
        self.target = int(self.target)
        self.final_step = int(final_step) if final_step is not None else self.target
        self.trajectory_path = Path(trajectory_path) if trajectory_path is not None else None
        self.tracker = tracker
        self.evaluator = evaluator
        if (settings.evaluate or settings.evaluate_observed) and evaluator is None:
            raise ConfigError("forecast.evaluate=true but no evaluator was given")
        self.models = {0: self.base}
        self.r2 = None
        if settings.r2:
            state_dir = self.root / ".r2_state" if settings.r2_state == "disk" else None
            self.r2 = StreamingR2(self.base, state_dir=state_dir, chunk_elements=settings.chunk_elements,
                                  thresholds=settings.thresholds)
        self.records: list[dict] = []
        self.final: dict | None = None
        self.last_r2: dict | None = None
        self._since_forecast = 0  # saved steps >= start_step since the last forecast
        self._forecast_done = False
        self.timings: list[dict] = []

    # ------------------------------------------------------------------ public
    @property
    def observed(self) -> list[int]:
        return sorted(s for s in self.models if s != 0)

    @property
    def done(self) -> bool:
        return bool(self.observed) and self.observed[-1] >= self.final_step

    def observe(self, step: int, model) -> list[dict]:
        return self.observe_many([(step, model)])

    def observe_many(self, items) -> list[dict]:
        """Fold the new saved steps of `items` [(step, ModelFiles | dir)] in (ones already seen are
        ignored); forecast at the newest if due. Returns the forecast records written."""
        from rlvr_linearity.trajectory import ModelFiles, Trajectory

        new = sorted((int(s), m) for s, m in items if int(s) != 0 and int(s) not in self.models)
        if not new:
            return []
        t0 = time.perf_counter()
        for s, m in new:
            mf = m if isinstance(m, ModelFiles) else ModelFiles(m, step=s)
            Trajectory({0: self.base, s: mf}, path=self.trajectory_path, check_finite=False)  # names, shapes
            if self.r2 is not None:
                self.r2.update(s, mf)
            self.models[s] = mf
            if s >= self.settings.start_step:
                self._since_forecast += 1
        newest = new[-1][0]
        t_r2 = time.perf_counter() - t0
        r2 = self._r2_record(newest, t_r2) if self.r2 is not None else None
        out = []
        s = self.settings
        due = newest >= s.start_step and newest < self.target and \
            (not self._forecast_done or self._since_forecast >= s.every)
        if due and len(self.observed) < s.min_points:
            log.info("forecast at step %d skipped: %d observed step(s), the fit needs %d",
                     newest, len(self.observed), s.min_points)
            due = False
        metrics = {}
        if r2 is not None:
            metrics.update(self._r2_metrics(r2))
        if due:
            rec = self._forecast(newest, r2)
            out.append(rec)
            metrics.update(rec["metrics"])
            self._since_forecast = 0
            self._forecast_done = True
        if self.target in self.models and self.final is None:
            self.final = self._finish()
            metrics.update(self.final["metrics"])
        metrics["forecast/overhead_seconds"] = time.perf_counter() - t0
        self.timings.append({"step": newest, "seconds": metrics["forecast/overhead_seconds"], "forecast": due})
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in metrics.items() if v is not None}, step=newest)
            if self.final is not None and not self.final.get("logged"):
                # after the step's metrics: a W&B table without a step advances W&B's step
                if self.final["forecasts"]:
                    self.tracker.table("forecast/final", self.final["forecasts"])
                final_metrics = {k: v for k, v in self.final["metrics"].items() if v is not None}
                if final_metrics:
                    self.tracker.summary(final_metrics)
                self.final["logged"] = True
        return out

    def result(self) -> dict:
        """What the run produced: observed steps, forecast records, final comparison, R²."""
        return {"target": self.target, "final_step": self.final_step, "observed": self.observed,
                "forecasts": self.records, "final": self.final, "r2": self.last_r2, "timings": self.timings,
                "dir": str(self.root)}

    # ------------------------------------------------------------------ parts
    def _r2_record(self, step: int, seconds: float) -> dict:
        summ = self.r2.summary()
        summ["observed_step"] = step
        summ["update_seconds"] = seconds
        _write_json(self.root / "weights_r2.json", summ)
        short = {k: summ[k] for k in ("observed_step", "steps", "n_weights", "n_defined", "mean", "median",
                                      "frac_above", "update_seconds")}
        _upsert_jsonl(self.root / "r2.jsonl", {"time": time.time(), **short})
        self.last_r2 = short
        return short

    @staticmethod
    def _r2_metrics(r2: dict) -> dict:
        m = {"forecast/r2_median": r2["median"], "forecast/r2_mean": r2["mean"],
             "forecast/n_observed": len(r2["steps"]) - 1}
        m.update({f"forecast/r2_frac_above_{k}": v for k, v in r2["frac_above"].items()})
        return m

    def _forecast(self, step: int, r2: dict | None) -> dict:
        from rlvr_linearity.extrapolate.relex import Window, run_relex
        from rlvr_linearity.trajectory import Trajectory

        s = self.settings
        t0 = time.perf_counter()
        steps = self.observed
        traj = Trajectory(dict(self.models), path=self.trajectory_path)
        odir = self.root / f"observed_{step}"
        res = run_relex(traj, [Window(f"h{step}", steps, step)], [self.target], odir, rank=s.rank, fit=s.fit,
                        degree=s.degree, dtype=s.dtype, cache_dir=None, memory_budget=s.memory_budget,
                        max_elements=s.chunk_elements)
        win = res["windows"][0]
        path = Path(win["targets"][0]["path"])
        t_relex = time.perf_counter() - t0
        ev = win["explained_variance_summary"]
        rec = {"time": time.time(), "observed_step": step, "observed_steps": steps, "target": self.target,
               "path": str(path), "rank": s.rank, "fit": s.fit,
               "relex": {"explained_variance": ev,
                         "rank_kept_min": min(win["rank_kept"].values()) if win["rank_kept"] else None},
               "r2": r2, "timings": {"relex_s": t_relex}}
        if s.evaluate:
            t1 = time.perf_counter()
            metrics = self.evaluator(str(path), odir / "eval_forecast")
            rec["evaluation"] = metrics
            rec["accuracy"] = accuracy_of(metrics)
            rec["timings"]["evaluate_s"] = time.perf_counter() - t1
        if s.evaluate_observed:
            t1 = time.perf_counter()
            metrics = self.evaluator(str(self.models[step].path), odir / "eval_observed")
            rec["observed_evaluation"] = metrics
            rec["observed_accuracy"] = accuracy_of(metrics)
            rec["timings"]["evaluate_observed_s"] = time.perf_counter() - t1
        rec["timings"]["total_s"] = time.perf_counter() - t0
        m = {"forecast/observed_step": step, "forecast/target": self.target,
             "forecast/relex_ev_mean": ev.get("mean"), "forecast/relex_ev_median": ev.get("median"),
             "forecast/relex_seconds": t_relex}
        if s.evaluate:
            m["forecast/accuracy"] = rec["accuracy"]
            m["forecast/evaluate_seconds"] = rec["timings"]["evaluate_s"]
            for b, bm in (rec["evaluation"] or {}).items():
                if isinstance(bm, dict) and "accuracy" in bm and len(rec["evaluation"]) > 1:
                    m[f"forecast/{b}/accuracy"] = bm["accuracy"]
        if s.evaluate_observed:
            m["forecast/observed_accuracy"] = rec["observed_accuracy"]
        _write_json(odir / "forecast.json", rec)
        _upsert_jsonl(self.root / "forecasts.jsonl", rec)
        rec["metrics"] = m
        self.records.append(rec)
        self._prune()
        log.info("forecast of step %d from steps <= %d: %s (mean EV %.4f%s)", self.target, step, path,
                 ev.get("mean", float("nan")),
                 f", accuracy {rec['accuracy']:.4f}" if rec.get("accuracy") is not None else "")
        return rec

    def _prune(self) -> None:
        keep = self.settings.keep
        if keep is None:
            return
        kept = [r for r in self.records if Path(r["path"]).exists()]
        for r in kept[:-keep]:
            _remove_tree(Path(r["path"]))
            r["removed"] = True

    def _finish(self) -> dict:
        """The target step is saved: compare every kept forecast with it."""
        from rlvr_linearity.trajectory import ModelFiles

        actual = self.models[self.target]
        out = {"target": self.target, "forecasts": []}
        if self.settings.evaluate and self.evaluator is not None:
            metrics = self.evaluator(str(actual.path), self.root / f"actual_{self.target}")
            out["actual_evaluation"] = metrics
            out["actual_accuracy"] = accuracy_of(metrics)
        rows = [{"observed_step": r["observed_step"], "accuracy": r.get("accuracy"), "path": r["path"]}
                for r in self.records]
        scored = [row for row in rows if Path(row["path"]).exists()]
        # each kept forecast, and as its baseline the observed checkpoint itself (stopping there)
        guesses = [ModelFiles(Path(row["path"])) for row in scored] + [self.models[row["observed_step"]] for row in scored]
        errors = _weight_errors(guesses, actual, self.base, self.settings.chunk_elements)
        for row, forecast, observed in zip(scored, errors, errors[len(scored):]):
            row.update(forecast)
            row["rel_error_observed"] = observed["rel_error"]
        out["forecasts"] = rows
        _write_json(self.root / "final.json", out)
        m = {}
        if out.get("actual_accuracy") is not None:
            m["forecast/actual_accuracy"] = out["actual_accuracy"]
        latest = [row for row in out["forecasts"] if "rel_error" in row]
        if latest:
            m["forecast/final_rel_error"] = latest[-1]["rel_error"]
            m["forecast/final_rel_error_observed"] = latest[-1]["rel_error_observed"]
        out["metrics"] = m
        return out


def _weight_errors(preds: list, actual, base, chunk_elements: int) -> list[dict]:
    """‖Ŵ − W‖ / ‖W − W₀‖ over every floating tensor for each guess Ŵ in `preds`: its error
    relative to the distance the weights travelled from the base to the target. One pass: the
    base and the target are read once, whatever the number of guesses."""
    err = [0.0] * len(preds)
    moved = 0.0
    for name in base.tensor_names:
        if not base.dtype(name).is_floating_point:
            continue
        shape = tuple(base.shape(name))
        rows = shape[0] if shape else 1
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        per = max(1, chunk_elements // row)
        for a in range(0, rows, per):
            b = min(rows, a + per)
            w0 = base.read_rows(name, a, b).to(torch.float64)
            w = actual.read_rows(name, a, b).to(torch.float64)
            moved += float(((w - w0) ** 2).sum())
            for i, pred in enumerate(preds):
                err[i] += float(((pred.read_rows(name, a, b).to(torch.float64) - w) ** 2).sum())
    return [{"rel_error": (e / moved) ** 0.5 if moved > 0 else None, "abs_error": e ** 0.5} for e in err]
