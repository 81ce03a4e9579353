"""The standard experiment chain: train → linearity → extrapolation → evaluation → report.

Every stage goes through the stage cache (`pipeline.stage_dir`), keyed by the stage's own
config and the keys of the stages it reads, so sweeps share work and a killed job resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf, open_dict

from rlvr_linearity.config import derive, section
from rlvr_linearity.errors import ConfigError
from rlvr_linearity.paths import conf_dir
from rlvr_linearity.pipeline.fetch import HubFetch, announce, pair_targets, plan_hub_fetch
from rlvr_linearity.pipeline import reconstruction as rec
from rlvr_linearity.pipeline.stages import StageCache, StageResult, stage_key, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One unit of cached work: its key is known before it runs (for dry runs)."""

    name: str
    config: Any
    inputs: list[str]
    fn: Callable[[Path], dict]
    label: str = ""
    key: str = field(init=False)

    def __post_init__(self):
        self.key = stage_key(self.name, self.config, self.inputs)


class Pipeline:
    def __init__(self, cfg, out_dir: Path, tracker=None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.tracker = tracker
        self.cache = StageCache(cfg.pipeline.stage_dir)
        self.dry_run = bool(cfg.pipeline.dry_run)
        self.plan: list[tuple[Stage, bool]] = []  # (stage, cached) in order, for dry runs and reports
        self.timings: dict[str, float] = {}
        self.stage_dirs: dict[str, Path] = {}  # label -> stage directory (evaluations' samples.jsonl)
        self.hub: HubFetch | None = None  # a hub trajectory's fetch plan: what each stage reads
        self.fetched: dict | None = None  # that plan as announced (steps, bytes)

    # -- running --------------------------------------------------------------------------
    def run_stage(self, stage: Stage) -> StageResult | None:
        cached = self.cache.lookup(stage.name, stage.key) is not None
        self.plan.append((stage, cached))
        if self.dry_run:
            return None
        result = self.cache.run(stage.name, stage.config, stage.fn, stage.inputs)
        label = stage.label or stage.name
        self.timings[label] = round(self.timings.get(label, 0.0) + result.seconds, 3)
        link = self.out / "stages" / label
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(result.path, target_is_directory=True)
        self.stage_dirs[label] = result.path
        return result

    # -- stages ---------------------------------------------------------------------------
    def trajectory(self) -> tuple[str | None, str]:
        """The trajectory to analyse: trained here (cached) or given; returns (path, identity)."""
        tcfg = self.cfg.trajectory
        if tcfg.hub_repo:  # only the steps the stages read, said first and fetched before they run
            self.hub = plan_hub_fetch(self.cfg, required=not self.dry_run)
            if self.hub is None:  # a dry run, the hub unreachable and nothing cached: keyed by the config
                return None, json.dumps(section(self.cfg, "trajectory"), sort_keys=True)
            self.fetched = announce(self.hub, fetch=not self.dry_run)
            return None, self.hub.identity  # the hub's commits: the same key in a dry run
        if tcfg.path:
            from rlvr_linearity.trajectory import open_trajectory

            return None, open_trajectory(tcfg).fingerprint()  # a given trajectory: identity = its content
        if "train" not in self.cfg.pipeline.stages:
            raise ConfigError("pipeline: no trajectory.path and no train stage: nothing to analyse")
        from rlvr_linearity.train.app import train

        config = {"train": section(self.cfg, "train"), "task": section(self.cfg, "task"), "seed": self.cfg.seed}

        def fn(d: Path) -> dict:
            traj_dir = train(derive(self.cfg, output_dir=str(d)), d)
            return {"trajectory": str(traj_dir)}

        stage = Stage("train", config, [], fn, label="train")
        res = self.run_stage(stage)
        done = res.result if res else (self.cache.lookup(stage.name, stage.key) or {}).get("result")
        return (done or {}).get("trajectory"), stage.key  # a dry run knows a trained trajectory once cached

    def linearity(self, traj: str | None, ident: str) -> dict | None:
        config = {"linearity": section(self.cfg, "linearity"), "trajectory": _traj_selection(self.cfg)}
        stage = Stage("linearity", config, [ident], lambda d: self._analysis("linearity", traj, d, stage="linearity"),
                      label="linearity")
        res = self.run_stage(stage)
        return None if res is None else {"dir": str(res.path), **(res.result or {})}

    def relex(self, traj: str | None, ident: str) -> list[dict]:
        """Predicted checkpoints for every (window, target), from `extrapolate.*` as `rlvr
        extrapolate` reads them (windows, or history for one): [{history, target, path}]."""
        from rlvr_linearity.extrapolate.app import histories

        ex = self.cfg.extrapolate
        if ex.method != "relex":
            raise ConfigError(f"pipeline stage relex: extrapolate.method is {ex.method!r}; drop the stage or use "
                              "extrapolate=relex (weight extrapolation is the weight stage: pipeline.weight.pairs)")
        windows = histories(ex)
        targets = list(ex.targets)
        if not windows or not targets:
            return []
        config = {"extrapolate": section(self.cfg, "extrapolate"), "trajectory": _traj_selection(self.cfg)}
        stage = Stage("relex", config, [ident], lambda d: self._analysis("extrapolate", traj, d, stage="relex"),
                      label="relex")
        self.run_stage(stage)
        method = {"rank": int(ex.rank), "fit": str(ex.fit)}
        return [  # paths known in a dry run too: they key the predictions' evaluations
            {"history": w, "target": t, **method,
             "path": str(_prediction_dir(self.cache.path(stage.name, stage.key), t, w if len(windows) > 1 else None))}
            for w in windows for t in targets
        ]

    def weight(self, traj: str | None, ident: str) -> list[dict]:
        out = []
        for a, b, targets in pair_targets(self.cfg.pipeline.weight):
            over = {"extrapolate": {**section(self.cfg, "extrapolate"), "method": "weight", "base_step": a,
                                    "second_step": b, "targets": targets}}
            ecfg = derive(self.cfg, **over)
            ecfg = _weight_only(ecfg)
            config = {"extrapolate": section(ecfg, "extrapolate"), "trajectory": _traj_selection(self.cfg)}
            stage = Stage("weight", config, [ident],
                          lambda d, e=ecfg: self._analysis("extrapolate", traj, d, e, stage="weight"),
                          label=f"weight_{a}_{b}")
            self.run_stage(stage)
            for t in targets:
                path = str(_prediction_dir(self.cache.path(stage.name, stage.key), t, None))
                out.append({"base_step": a, "second_step": b, "target": t, "path": path})
        return out

    def mechanism(self, traj: str | None, ident: str) -> dict:
        """LIN's mechanism stages that `pipeline.stages` names: token_snr (Fig. 3, SFT of the base
        model, independent of the trajectory) and mechanism (Fig. 4, activation linearity)."""
        from rlvr_linearity.pipeline import mechanism as mech

        stages, out = list(self.cfg.pipeline.stages), {}
        if "token_snr" in stages:
            res = self.run_stage(Stage("token_snr", mech.token_snr_config(self.cfg), [],
                                       lambda d: mech.token_snr(self.cfg, d / "mechanism"), label="token_snr"))
            out["token_snr_median_r2"] = res.result if res else None
        if "mechanism" in stages:
            config = {**mech.mechanism_config(self.cfg), "trajectory": _traj_selection(self.cfg)}
            res = self.run_stage(Stage("mechanism", config, [ident], label="mechanism",
                                       fn=lambda d: mech.mechanism_analysis(
                                           self.cfg, self.open_trajectory(traj, "mechanism"), d / "mechanism")))
            out["mechanism"] = res.result if res else None
        return out

    def reconstruct(self, traj: str | None, ident: str) -> list[dict]:
        """RELEX Finding 1: rank-r reconstructions of trained steps, one cached stage per rank
        (`pipeline.reconstruct.*`): [{step, rank, history, path}]."""
        out = []
        for r in [int(x) for x in self.cfg.pipeline.reconstruct.ranks]:
            config = {**rec.reconstruct_config(self.cfg, r), "trajectory": _traj_selection(self.cfg)}
            stage = Stage("reconstruct", config, [ident], label=f"reconstruct_r{r}",
                          fn=lambda d, r=r: rec.reconstruct_stage(self.cfg, self.open_trajectory(traj, "reconstruct"), r, d))
            self.run_stage(stage)
            out += rec.stage_rows(self.cfg, r, self.cache.path(stage.name, stage.key))
        return out

    def model_identity(self, model: str) -> str:
        """A model directory as a cache identity: its path inside the stage cache (which names the
        stage key that made it), else the path as given (a given trajectory's content is `ident`)."""
        path = Path(model)
        return str(path.relative_to(self.cache.root)) if path.is_relative_to(self.cache.root) else str(model)

    def evaluate_model(self, label: str, model: str | None, ident: str, engine: dict | None = None,
                       model_id: str | None = None) -> dict | None:
        """Benchmark metrics of one model (or a model pair with an engine override), keyed by the
        model's identity (not the label: two models may share one) and the evaluation config. A
        step of the trajectory `ident` names itself (`model_id`): its path is unknown to a dry run
        of a hub trajectory, and the content is `ident` already."""
        from rlvr_linearity.evaluate.app import evaluate

        config = {k: section(self.cfg, k) for k in ("evaluate", "benchmarks", "sampling", "task")}
        config["engine"] = engine or section(self.cfg, "engine")
        config["evaluate"] = {k: v for k, v in config["evaluate"].items() if k not in ("model", "step", "resume")}

        def fn(d: Path) -> dict:
            over: dict[str, Any] = {"evaluate.model": model, "evaluate.step": None, "output_dir": str(d)}
            ecfg = derive(self.cfg, **over)
            if engine is not None:
                with open_dict(ecfg):
                    ecfg.engine = OmegaConf.create(engine)
            return evaluate(ecfg, d)

        model_id = model_id or (self.model_identity(model) if model else label)  # no model: a logits pair (its engine) or a dry run's
        res = self.run_stage(Stage("evaluate", config, [ident, model_id], fn, label=f"eval_{label}"))
        return None if res is None else res.result

    def correctness(self, label: str, benchmark: str) -> dict[str, list[bool]] | None:
        """problem_id -> per-sample correctness of an evaluated model (its samples.jsonl)."""
        d = self.stage_dirs.get(f"eval_{label}")
        path = d / "evaluate" / benchmark / "samples.jsonl" if d else None
        if path is None or not path.exists():
            return None
        out: dict[str, list[bool]] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    out.setdefault(str(rec["problem_id"]), []).append(bool(rec["correct"]))
        return out

    def vs_trained(self, label: str, target: int, benchmark: str) -> dict | None:
        """Paired comparison of a prediction with the trained checkpoint at its target step."""
        from rlvr_linearity.evaluate.metrics import paired_comparison

        pred, trained = self.correctness(label, benchmark), self.correctness(f"step_{target}", benchmark)
        if not pred or not trained or not set(pred) & set(trained):
            return None
        return paired_comparison(pred, trained, seed=int(self.cfg.sampling.seed))

    def prediction_errors(self, traj: str | None, ident: str, rows: list[dict]) -> None:
        """Weight-space error (relative L2, cosine of deltas from step 0) of every prediction
        whose target was trained, added to its row; one cached stage over all of them."""
        if self.dry_run or (self.hub is not None and "prediction_error" not in self.hub.reads):
            return
        traj_obj = self.open_trajectory(traj, "prediction_error")
        todo = {f"{i}": (r["path"], _target(r)) for i, r in enumerate(rows)
                if r.get("path") and _target(r) in traj_obj.steps and _target(r) != 0}
        if not todo:
            return

        def fn(d: Path) -> dict:
            from rlvr_linearity.extrapolate.error import prediction_error
            from rlvr_linearity.trajectory.files import ModelFiles

            return {i: prediction_error(traj_obj.base, traj_obj.model(t), ModelFiles(path, t))
                    for i, (path, t) in todo.items()}

        config = {"predictions": {i: [self.model_identity(p), t] for i, (p, t) in todo.items()}}
        res = self.run_stage(Stage("prediction_error", config, [ident], fn, label="prediction_error"))
        for i, err in res.result.items():
            rows[int(i)]["weight_error"] = err

    def _analysis(self, command: str, traj: str | None, out_dir: Path, cfg=None, stage: str | None = None) -> dict:
        """`rlvr linearity` or `rlvr extrapolate`'s work in a stage directory, on what `stage` reads
        of a hub trajectory (`_on`: fetched before any stage runs); with `partition.count` > 1 split
        by tensors and merged (`pipeline.partitions`: docs/scaling.md), the same outputs."""
        from rlvr_linearity.extrapolate.app import extrapolate
        from rlvr_linearity.linearity.app import analyse
        from rlvr_linearity.linearity.partition import run_partition
        from rlvr_linearity.pipeline.partitions import run_partitioned

        cfg = self._on(traj, out_dir, cfg, stage)
        if cfg.partition.count > 1:
            return run_partitioned(command, cfg, out_dir, run_partition if command == "linearity" else extrapolate)
        return (analyse if command == "linearity" else extrapolate)(cfg, out_dir)

    def _on(self, traj: str | None, out_dir: Path, cfg=None, stage: str | None = None):
        """The config a stage runs with: the trained trajectory (if any) and the stage's dir; of
        a hub trajectory, only the steps the stage reads (fetched already)."""
        cfg = cfg if cfg is not None else self.cfg
        if traj is None and self.hub is not None and stage is not None:
            return derive(cfg, **{"trajectory.steps": self.hub.reading(stage), "trajectory.max_step": None,
                                  "output_dir": str(out_dir)})
        if traj is None:  # a given trajectory: keep trajectory.* as configured
            return derive(cfg, output_dir=str(out_dir))
        return derive(cfg, **{"trajectory.path": traj, "trajectory.hub_repo": None, "output_dir": str(out_dir)})

    def open_trajectory(self, traj: str | None, stage: str | None = None):
        from rlvr_linearity.trajectory import open_trajectory

        return open_trajectory(self._on(traj, self.out, stage=stage).trajectory)


def _target(row: dict) -> int:
    """The trained step a prediction (`target`) or a reconstruction (`step`) is compared with."""
    return row["target"] if "target" in row else row["step"]


def _traj_selection(cfg) -> dict:
    return {"steps": section(cfg, "trajectory.steps"), "max_step": cfg.trajectory.max_step}


def _weight_only(cfg):
    """Drop relex-only keys the weight schema does not know."""
    keep = {"method", "targets", "base_step", "second_step", "extrapolate_norms", "dtype"}
    with open_dict(cfg):
        cfg.extrapolate = OmegaConf.create({k: v for k, v in section(cfg, "extrapolate").items() if k in keep})
    return cfg


def _prediction_dir(stage_dir: Path, target: int, history: int | None) -> Path:
    base = Path(stage_dir) / "extrapolate"
    return base / f"h{history}" / f"step_{target}" if history is not None else base / f"step_{target}"


def _accuracy(metrics: dict | None, benchmark: str) -> float | None:
    if not metrics:
        return None
    entry = metrics.get(benchmark) or {}
    return entry.get("accuracy")


def per_benchmark(metrics: dict | None, benches: list[str]) -> dict:
    """`metrics` of a results.json row: every benchmark's metrics.json entry (accuracy, pass@k,
    avg@n, n_samples, accuracy_ci95, grader, sampling), in `benchmarks` order."""
    return {b: (metrics or {}).get(b) for b in benches}


def _scored(metrics: dict | None, benches: list[str]) -> dict:
    """A results.json row's scores: the first benchmark's accuracy and bootstrap interval (the
    compatible top-level keys) and every benchmark's metrics."""
    first = benches[0]
    return {"accuracy": _accuracy(metrics, first),
            "accuracy_ci95": ((metrics or {}).get(first) or {}).get("accuracy_ci95"),
            "metrics": per_benchmark(metrics, benches)}


def _compare(p: "Pipeline", row: dict, label: str, benches: list[str]) -> None:
    """Paired comparison with the trained checkpoint at the row's target (a reconstruction's
    step), per benchmark (the first benchmark's also as the row's `vs_trained`)."""
    for b in benches:
        if row["metrics"].get(b) is not None:
            row["metrics"][b] = {**row["metrics"][b], "vs_trained": p.vs_trained(label, _target(row), b)}
    row["vs_trained"] = (row["metrics"].get(benches[0]) or {}).get("vs_trained")


def run_chain(cfg, out_dir: Path, tracker=None) -> dict:
    """Run (or, with `pipeline.dry_run`, list) every stage; write results.json and report.md."""
    start = time.perf_counter()
    p = Pipeline(cfg, out_dir, tracker)
    stages = list(cfg.pipeline.stages)
    benches = [str(b) for b in cfg.benchmarks]
    bench = benches[0]

    traj_path, ident = p.trajectory()
    lin = p.linearity(traj_path, ident) if "linearity" in stages else None
    relex = p.relex(traj_path, ident) if "relex" in stages else []
    weight = p.weight(traj_path, ident) if "weight" in stages else []
    mechanism = p.mechanism(traj_path, ident)
    recon = p.reconstruct(traj_path, ident) if "reconstruct" in stages and cfg.pipeline.reconstruct.steps else []

    given = cfg.trajectory.path or (f"hub:{cfg.trajectory.hub_repo}" if cfg.trajectory.hub_repo else None)
    results: dict[str, Any] = {"benchmark": bench, "benchmarks": benches, "trajectory": traj_path or given}
    if "evaluate" in stages:
        steps = _eval_steps(p, traj_path)
        rlvr = []
        for step, path in steps:
            metrics = p.evaluate_model(f"step_{step}", path, ident, model_id=f"step_{step}")
            rlvr.append({"step": step, **_scored(metrics, benches), "path": path})
        base = next((r for r in rlvr if r["step"] == 0), None)
        results["base"] = {"step": 0, **({k: base[k] for k in ("accuracy", "accuracy_ci95", "metrics")} if base
                                         else _scored(None, benches))}
        results["rlvr"] = [r for r in rlvr if r["step"] != 0]
        for r in relex:
            label = f"relex_h{r['history']}_t{r['target']}"
            r.update(_scored(p.evaluate_model(label, r["path"], ident), benches))
            _compare(p, r, label, benches)
        for r in weight:
            label = f"weight_{r['base_step']}_{r['second_step']}_t{r['target']}"
            r.update(_scored(p.evaluate_model(label, r["path"], ident), benches))
            _compare(p, r, label, benches)
        for r in recon:
            label = rec.eval_label(r)
            r.update(_scored(p.evaluate_model(label, r["path"], ident), benches))
            _compare(p, r, label, benches)
        results["logits_extrapolation"] = _logits(p, cfg, traj_path, ident, benches) if "logits" in stages else []
    p.prediction_errors(traj_path, ident, relex + weight + recon)
    results["relex"] = relex
    results["weight_extrapolation"] = weight
    if recon:
        results["reconstruction"] = recon
    if lin is not None:
        results["linearity"] = {"median_r2": lin.get("median"), "frac_above_0.7": (lin.get("frac_above") or {}).get("0.7"),
                                "mean_r2": lin.get("mean"), "dir": lin.get("dir"), **_coefficient_fit(cfg, lin)}
    if traj_path:  # trained here: the settings a learning-rate sweep is drawn against
        results["train"] = {"lr": float(cfg.train.lr), "steps": int(cfg.train.steps), "seed": int(cfg.seed)}
    if mechanism:
        results["mechanism"] = mechanism
    if p.dry_run:
        listing = [{"stage": s.label or s.name, "key": s.key, "cached": c} for s, c in p.plan]
        for row in listing:
            print(f"{'cached' if row['cached'] else 'to run':>7}  {row['stage']}  ({row['key']})")
        return {"dry_run": listing, **({"fetch": p.fetched} if p.fetched else {})}
    results["timings"] = {**p.timings, "total": round(time.perf_counter() - start, 3)}
    results["stages"] = [{"stage": s.label or s.name, "key": s.key, "cached": c} for s, c in p.plan]
    write_json_atomic(Path(out_dir) / "results.json", results)
    if "report" in stages:
        from rlvr_linearity.figures.regenerate import regenerate
        from rlvr_linearity.pipeline.report import write_report

        index = regenerate([out_dir], out_dir, pdf=bool(cfg.figures.pdf), reference=bool(cfg.figures.reference))
        results["paper_figures"] = {"made": index["made"], "missing": [m["id"] for m in index["missing"]]}
        write_report(cfg, out_dir, results)
        write_json_atomic(Path(out_dir) / "results.json", results)
    if tracker is not None:
        from rlvr_linearity.pipeline.story import tell

        tell(tracker, p, results, Path(out_dir), bench)
    return results


def _coefficient_fit(cfg, lin: dict) -> dict:
    """Where RELEX's straight line holds: the rank-1 coefficient fitted on steps <=
    `linearity.coefficient_history` (the RELEX window), scored on the later steps; median over tensors."""
    oos = (lin.get("lowrank") or {}).get("coefficient_r2_out_of_sample") or {}
    ins = (lin.get("lowrank") or {}).get("coefficient_r2_in_sample") or {}
    return {"coefficient_history": cfg.linearity.coefficient_history,
            "coefficient_r2_in_sample": ins.get("median"), "coefficient_r2_out_of_sample": oos.get("median")}


def _eval_steps(p: Pipeline, traj_path: str | None) -> list[tuple[int, str | None]]:
    """(step, model dir) of the RLVR checkpoints to evaluate, base included."""
    wanted = p.cfg.pipeline.evaluate_steps
    given = p.cfg.trajectory.path and not p.cfg.trajectory.hub_repo
    if p.dry_run and not given and traj_path is None:  # nothing trained yet: list what was asked
        return [(s, None) for s in ([] if wanted == "all" else sorted({0, *wanted}))]
    traj = p.open_trajectory(traj_path, "evaluate")
    steps = traj.steps if wanted == "all" else [s for s in traj.steps if s in set(wanted)]
    if wanted != "all" and 0 not in steps:
        steps = [0, *steps]
    return [(s, str(traj.model(s).path)) for s in steps]


def _logits_engine(cfg, models: list[str], alpha: float) -> dict:
    """The logits-extrapolation engine of one pair: the settings of conf/engine/logits_extrapolation.yaml,
    on the configured engine's device (vLLM names none: that file's)."""
    spec = OmegaConf.to_container(OmegaConf.load(conf_dir() / "engine" / "logits_extrapolation.yaml"))
    spec.pop("defaults")
    device = cfg.engine.device if "device" in cfg.engine else spec["device"]
    return {**spec, "models": models, "alpha": alpha, "device": device}


def _pair_models(p: Pipeline, traj_path: str | None) -> Callable[[int], str]:
    """step -> model directory of a logits pair; a dry run before training (or of a hub trajectory)
    names the step instead, so its listing shows the stages (their keys final once the models exist)."""
    given = p.cfg.trajectory.path and not p.cfg.trajectory.hub_repo
    if p.dry_run and not (given and traj_path is None):
        return lambda step: f"<step {step}>"
    traj = p.open_trajectory(traj_path, "logits")
    return lambda step: str(traj.model(step).path)


def _logits(p: Pipeline, cfg, traj_path: str | None, ident: str, benches: list[str]) -> list[dict]:
    out = []
    pairs = [(a, b, targets) for a, b, targets in pair_targets(cfg.pipeline.logits) if targets]
    if not pairs:
        return out
    model = _pair_models(p, traj_path)
    for a, b, targets in pairs:
        for t in targets:
            alpha = (t - a) / (b - a)
            engine = _logits_engine(cfg, [model(a), model(b)], alpha)
            label = f"logits_{a}_{b}_t{t}"
            metrics = p.evaluate_model(label, None, ident, engine=engine)
            row = {"base_step": a, "second_step": b, "target": t, "alpha": alpha, **_scored(metrics, benches)}
            _compare(p, row, label, benches)
            out.append(row)
    return out
