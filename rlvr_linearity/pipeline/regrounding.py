"""`rlvr pipeline experiment=regrounding`: LIN's periodic re-grounding against plain GRPO.

For each configuration (M, N) of `regrounding.*`: `iterations` times, train M real RL steps from
the current model (segment k, `train.regrounding.train_segment`), then weight-extrapolate with
α = (M + N)/M between the segment's start and end models; the extrapolated model starts segment
k + 1. Plain GRPO (`regrounding.baseline`) trains the same number of real steps on the same
prompt order. Both arms are evaluated on the held-out split every `regrounding.eval_every` real
steps and at every segment boundary (where re-grounding's point is the extrapolated model).

Resumability: every segment, every extrapolation and every evaluation is a stage of the stage
cache (`pipeline.stage_dir`), keyed by its config and the key of the stage that produced its
input model, complete once its `_stage.json` marker exists. A run killed mid-way reruns with the
same command: complete units are skipped, a killed segment resumes from its newest TRL
checkpoint (TRL's own resume: model, optimizer, RNG, data position), a killed extrapolation or
evaluation is redone or resumed. Plain GRPO is the pipeline's `train` stage (shared with
`experiment=demo` when the training settings agree).

Outputs: `DIR/regrounding.json` (schema `figures.schemas.Regrounding`, extended with per-segment
details), `DIR/figures/` (LIN Table 2 and Fig. 6 via `figures.regenerate`), `DIR/report.md`
(`pipeline.regrounding_report`). The configurations are checked by `pipeline.regrounding_configs`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.config import derive, section
from rlvr_linearity.pipeline.chain import Pipeline, Stage, per_benchmark
from rlvr_linearity.pipeline.regrounding_configs import configurations
from rlvr_linearity.pipeline.regrounding_report import write_report
from rlvr_linearity.io import stage_key, write_json_atomic

log = logging.getLogger(__name__)


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_")


def _accuracy(metrics: dict | None) -> dict[str, float] | None:
    if not metrics:
        return None
    acc = {b: m.get("accuracy") for b, m in metrics.items() if isinstance(m, dict) and m.get("accuracy") is not None}
    return acc or None


class Regrounding:
    """One re-grounding experiment on top of the pipeline's stage runner."""

    def __init__(self, cfg, out_dir: Path, tracker=None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.p = Pipeline(cfg, out_dir, tracker)
        self.rg = cfg.regrounding
        self.confs = configurations(cfg)
        self.budget = max(c["real_steps"] for c in self.confs)
        self.eval_every = int(self.rg.eval_every)
        self.backend = str(cfg.train.backend)

    # -- helpers --------------------------------------------------------------------------------
    def evaluate(self, label: str, model: str | None, ident: str) -> dict[str, float] | None:
        return _accuracy(self.p.evaluate_model(label, model, ident))

    def point(self, label: str, model: str | None, ident: str, **fields) -> dict:
        """An evaluated point: `accuracy` per benchmark and every benchmark's `metrics`."""
        m = self.p.evaluate_model(label, model, ident)
        return {**fields, "accuracy": _accuracy(m), "metrics": per_benchmark(m, [str(b) for b in self.cfg.benchmarks])}

    def eval_due(self, real_step: int) -> bool:
        return bool(self.eval_every) and real_step % self.eval_every == 0

    def base(self) -> tuple[str | None, str]:
        """The step-0 model (built for train.model=tiny) and its identity."""
        from rlvr_linearity.train.trl_grpo import base_model_dir

        t = {k: v for k, v in section(self.cfg, "train").items() if k not in ("steps", "save_every")}
        ident = stage_key("regrounding_base", {"train": t, "task": section(self.cfg, "task"), "seed": self.cfg.seed})
        if self.p.dry_run:
            return None, ident
        model = str(self.cfg.train.model)
        if self.backend == "trl" or model == "tiny":
            model = base_model_dir(self.cfg)
        return model, ident

    # -- plain GRPO ---------------------------------------------------------------------------------
    def baseline(self, base_model: str | None) -> list[dict]:
        """Plain GRPO for the largest real-step budget, evaluated on the same schedule (step 0
        included: the base model, evaluated as the train stage's step 0)."""
        bcfg = derive(self.cfg, **{"train.steps": self.budget})
        if "train" not in list(bcfg.pipeline.stages):
            bcfg = derive(bcfg, **{"pipeline.stages": ["train", *bcfg.pipeline.stages]})
        bp = Pipeline(bcfg, self.out, self.p.tracker)
        bp.cache, bp.plan, bp.timings = self.p.cache, self.p.plan, self.p.timings  # one plan and timing table
        traj_path, ident = bp.trajectory()
        bounds = {k * c["M"] for c in self.confs for k in range(1, c["iterations"] + 1)}
        wanted = sorted({s for s in range(1, self.budget + 1) if self.eval_due(s) or s in bounds} | {self.budget})
        points = [self.point("step_0", base_model, ident, real_steps=0, virtual_step=0)]
        if self.p.dry_run:
            for s in wanted:
                self.evaluate(f"step_{s}", None, ident)
            return points
        traj = bp.open_trajectory(traj_path)
        for s in wanted:
            if s not in traj.steps:
                log.warning("regrounding: plain GRPO has no checkpoint at step %d (train.save_every); not evaluated", s)
                continue
            points.append(self.point(f"step_{s}", str(traj.model(s).path), ident, real_steps=s, virtual_step=s))
        self.baseline_trajectory = traj_path
        return [p for p in points if p["accuracy"]]

    # -- re-grounding -------------------------------------------------------------------------------
    def method(self, c: dict, base_model: str | None, base_ident: str, base_point: dict) -> dict:
        from rlvr_linearity.train.regrounding import extrapolate_segment, last_checkpoint, train_segment

        M, N, slug = c["M"], c["N"], _slug(c["label"])
        train_key = {k: v for k, v in section(self.cfg, "train").items() if k not in ("model", "steps")}
        start, ident, previous = base_model, base_ident, None
        points = [{**base_point, "kind": "base"}]
        segments = []
        for k in range(c["iterations"]):
            v0, r0 = k * (M + N), k * M
            # segment 0 is the same whatever the optimizer / data mode: shared by every configuration with its M
            modes = {"optimizer": c["optimizer"], "data": c["data"]} if k else {}
            seg_cfg = {"train": train_key, "task": section(self.cfg, "task"), "seed": self.cfg.seed,
                       "segment": {"k": k, "M": M, **modes}}

            def train_fn(d: Path, start=start, k=k, previous=previous) -> dict:
                traj = train_segment(self.cfg, d, start, k, M, optimizer=c["optimizer"], data=c["data"],
                                     previous=previous)
                return {"trajectory": str(traj), "last": str(last_checkpoint(traj, M))}

            seg = Stage("regrounding_segment", seg_cfg, [ident], train_fn, label=f"rg_{slug}_seg{k}")
            res = self.p.run_stage(seg)
            traj_dir = res.result["trajectory"] if res else None
            seg_row: dict[str, Any] = {"k": k, "real_steps": [r0, r0 + M], "virtual_steps": [v0, v0 + M + N],
                                       "alpha": c["alpha"], "train_seconds": res.seconds if res else None}
            # evaluations inside the segment (real steps r0 + j, 0 < j < M)
            inner = [j for j in range(1, M) if self.eval_due(r0 + j)]
            traj = None
            if inner and traj_dir is not None:
                from rlvr_linearity.trajectory import open_trajectory

                traj = open_trajectory(path=traj_dir)
                inner = [j for j in inner if j in traj.steps]  # saved (train.save_every)
            for j in inner:
                path = str(traj.model(j).path) if traj is not None else None
                points.append(self.point(f"rg_{slug}_seg{k}_step_{j}", path, seg.key, real_steps=r0 + j,
                                         virtual_step=v0 + j, kind="trained"))
            last = res.result["last"] if res else None
            seg_row["trained_accuracy"] = self.evaluate(f"rg_{slug}_seg{k}_step_{M}", last, seg.key)

            ex_cfg = {"M": M, "N": N, "extrapolate_norms": bool(self.rg.extrapolate_norms),
                      "dtype": self.rg.dtype}

            def extra_fn(d: Path, traj_dir=traj_dir) -> dict:
                info = extrapolate_segment(Path(traj_dir), M, N, d / "extrapolate",
                                           extrapolate_norms=ex_cfg["extrapolate_norms"], dtype=ex_cfg["dtype"])
                return {"path": info["path"], "alpha": info["alpha"], "copied_from_second": info["copied_from_second"]}

            ex = Stage("regrounding_extrapolate", ex_cfg, [seg.key], extra_fn, label=f"rg_{slug}_extra{k}")
            res_ex = self.p.run_stage(ex)
            start = res_ex.result["path"] if res_ex else None
            ident, previous = ex.key, (Path(last) if last else None)
            pt = self.point(f"rg_{slug}_seg{k}_extrapolated", start, ex.key, real_steps=r0 + M,
                            virtual_step=v0 + M + N, kind="extrapolated")
            seg_row["extrapolated_accuracy"] = pt["accuracy"]
            seg_row["extrapolate_seconds"] = res_ex.seconds if res_ex else None
            seg_row["model"] = start
            segments.append(seg_row)
            points.append(pt)
        points = [p for p in points if p["accuracy"]]
        return {"label": c["label"], "M": M, "N": N, "alpha": c["alpha"], "iterations": c["iterations"],
                "optimizer": c["optimizer"], "data": c["data"], "points": points, "segments": segments}

    # -- the whole experiment --------------------------------------------------------------------------
    def run(self) -> dict:
        start_t = time.perf_counter()
        if self.backend not in ("trl", "verl"):
            raise ConfigError(f"train.backend: unknown backend {self.backend!r} (use trl or verl)")
        base_model, base_ident = self.base()
        std = self.baseline(base_model) if bool(self.rg.baseline) else []
        base_point = std[0] if std else self.point("base", base_model, base_ident, real_steps=0, virtual_step=0)
        methods = [self.method(c, base_model, base_ident, base_point) for c in self.confs]
        benches = [str(b) for b in self.cfg.benchmarks]
        data = {"benchmark": benches[0], "budget": self.budget, "std_rl": std, "methods": methods,
                "settings": {"eval_every": self.eval_every, "backend": self.backend,
                             "extrapolate_norms": bool(self.rg.extrapolate_norms),
                             "seed": int(self.cfg.seed), "prompts_per_step": int(self.cfg.train.prompts_per_step),
                             "group_size": int(self.cfg.train.group_size)},
                "baseline_trajectory": getattr(self, "baseline_trajectory", None)}
        if self.p.dry_run:
            listing = [{"stage": s.label or s.name, "key": s.key, "cached": cached} for s, cached in self.p.plan]
            for row in listing:
                print(f"{'cached' if row['cached'] else 'to run':>7}  {row['stage']}  ({row['key']})")
            return {"dry_run": listing}
        data["timings"] = self.timings(time.perf_counter() - start_t)
        data["stages"] = [{"stage": s.label or s.name, "key": s.key, "cached": cached} for s, cached in self.p.plan]
        write_json_atomic(self.out / "regrounding.json", data)
        if "report" in list(self.cfg.pipeline.stages):
            write_report(self.cfg, self.out, data)
            write_json_atomic(self.out / "regrounding.json", data)
        if self.p.tracker is not None:
            self.p.tracker.summary({f"time/{k}": v for k, v in data["timings"].items() if not isinstance(v, dict)})
            self.p.tracker.table("regrounding", [
                {"method": m["label"], "real_steps": pt["real_steps"], "virtual_step": pt["virtual_step"],
                 **{f"accuracy/{b}": a for b, a in (pt["accuracy"] or {}).items()}}
                for m in [{"label": "std_rl", "points": std}, *methods] for pt in m["points"]])
        return data

    def timings(self, total: float) -> dict:
        """Seconds per arm (stages computed in this process; cached stages count 0)."""
        t = self.p.timings
        out: dict[str, Any] = {"total": round(total, 3), "plain_grpo_train": t.get("train", 0.0)}
        for c in self.confs:
            slug = _slug(c["label"])
            out[f"regrounding_{slug}_train"] = round(sum(v for k, v in t.items() if k.startswith(f"rg_{slug}_seg")), 3)
            out[f"regrounding_{slug}_extrapolate"] = round(
                sum(v for k, v in t.items() if k.startswith(f"rg_{slug}_extra")), 3)
        out["evaluate"] = round(sum(v for k, v in t.items() if k.startswith("eval_")), 3)
        out["stages"] = dict(t)
        return out


def run_regrounding(cfg, out_dir: Path, tracker=None) -> dict:
    """Entry point of `rlvr pipeline` when the experiment has a `regrounding` section."""
    if OmegaConf.select(cfg, "regrounding") is None:
        raise ConfigError("pipeline: no `regrounding` section (use experiment=regrounding)")
    return Regrounding(cfg, Path(out_dir), tracker).run()
