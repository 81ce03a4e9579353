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
        if tcfg.path or tcfg.hub_repo:
            from rlvr_linearity.trajectory import open_trajectory

            # A given trajectory (local or hub) is used as configured: identity = its content (a dry
            # run downloads nothing: a hub trajectory is then keyed by its config, a local one by content).
            ident = json.dumps(section(self.cfg, "trajectory"), sort_keys=True)
            if not (self.dry_run and tcfg.hub_repo):
                ident = open_trajectory(tcfg).fingerprint()
            return None, ident
        if "train" not in self.cfg.pipeline.stages:
            raise ConfigError("pipeline: no trajectory.path and no train stage: nothing to analyse")
        from rlvr_linearity.train.app import train

        config = {"train": section(self.cfg, "train"), "task": section(self.cfg, "task"), "seed": self.cfg.seed}

        def fn(d: Path) -> dict:
            traj_dir = train(derive(self.cfg, output_dir=str(d)), d)
            return {"trajectory": str(traj_dir)}

        stage = Stage("train", config, [], fn, label="train")
        res = self.run_stage(stage)
        return (res.result["trajectory"] if res else None), stage.key

    def linearity(self, traj: str | None, ident: str) -> dict | None:
        from rlvr_linearity.linearity.app import analyse

        config = {"linearity": section(self.cfg, "linearity"), "trajectory": _traj_selection(self.cfg)}
        stage = Stage("linearity", config, [ident], lambda d: analyse(self._on(traj, d), d), label="linearity")
        res = self.run_stage(stage)
        return None if res is None else {"dir": str(res.path), **(res.result or {})}

    def relex(self, traj: str | None, ident: str) -> list[dict]:
        """Predicted checkpoints for every (window, target), from `extrapolate.*` as `rlvr
        extrapolate` reads them (windows, or history for one): [{history, target, path}]."""
        from rlvr_linearity.extrapolate.app import extrapolate

        ex = self.cfg.extrapolate
        if ex.method != "relex":
            raise ConfigError(f"pipeline stage relex: extrapolate.method is {ex.method!r}; drop the stage or use "
                              "extrapolate=relex (weight extrapolation is the weight stage: pipeline.weight.pairs)")
        windows = list(ex.windows) if ex.windows else ([ex.history] if ex.history is not None else [])
        targets = list(ex.targets)
        if not windows or not targets:
            return []
        config = {"extrapolate": section(self.cfg, "extrapolate"), "trajectory": _traj_selection(self.cfg)}
        stage = Stage("relex", config, [ident], lambda d: extrapolate(self._on(traj, d), d), label="relex")
        res = self.run_stage(stage)
        method = {"rank": int(ex.rank), "fit": str(ex.fit)}
        return [
            {"history": w, "target": t, **method,
             "path": None if res is None else str(_prediction_dir(res.path, t, w if len(windows) > 1 else None))}
            for w in windows for t in targets
        ]

    def weight(self, traj: str | None, ident: str) -> list[dict]:
        from rlvr_linearity.extrapolate.app import extrapolate

        pcfg = self.cfg.pipeline.weight
        targets = list(pcfg.targets)
        out = []
        for a, b in [tuple(p) for p in pcfg.pairs]:
            over = {"extrapolate": {**section(self.cfg, "extrapolate"), "method": "weight", "base_step": a,
                                    "second_step": b, "targets": targets}}
            ecfg = derive(self.cfg, **over)
            ecfg = _weight_only(ecfg)
            config = {"extrapolate": section(ecfg, "extrapolate"), "trajectory": _traj_selection(self.cfg)}
            stage = Stage("weight", config, [ident], lambda d, e=ecfg: extrapolate(self._on(traj, d, e), d),
                          label=f"weight_{a}_{b}")
            res = self.run_stage(stage)
            for t in targets:
                path = None if res is None else str(_prediction_dir(res.path, t, None))
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
                                       fn=lambda d: mech.mechanism_analysis(self.cfg, self.open_trajectory(traj),
                                                                            d / "mechanism")))
            out["mechanism"] = res.result if res else None
        return out

    def evaluate_model(self, label: str, model: str | None, ident: str, engine: dict | None = None) -> dict | None:
        """Benchmark metrics of one model (or a model pair with an engine override)."""
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

        res = self.run_stage(Stage("evaluate", config, [ident, label], fn, label=f"eval_{label}"))
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
        if self.dry_run:
            return
        traj_obj = self.open_trajectory(traj)
        todo = {f"{i}": (r["path"], r["target"]) for i, r in enumerate(rows)
                if r.get("path") and r["target"] in traj_obj.steps and r["target"] != 0}
        if not todo:
            return

        def fn(d: Path) -> dict:
            from rlvr_linearity.extrapolate.error import prediction_error
            from rlvr_linearity.trajectory.files import ModelFiles

            return {i: prediction_error(traj_obj.base, traj_obj.model(t), ModelFiles(path, t))
                    for i, (path, t) in todo.items()}

        config = {"predictions": {i: [str(Path(p).relative_to(self.cache.root)) if Path(p).is_relative_to(self.cache.root)
                                      else p, t] for i, (p, t) in todo.items()}}
        res = self.run_stage(Stage("prediction_error", config, [ident], fn, label="prediction_error"))
        for i, err in res.result.items():
            rows[int(i)]["weight_error"] = err

    def _on(self, traj: str | None, out_dir: Path, cfg=None):
        """The config a stage runs with: the trained trajectory (if any) and the stage's dir."""
        cfg = cfg if cfg is not None else self.cfg
        if traj is None:  # a given trajectory: keep trajectory.* as configured
            return derive(cfg, output_dir=str(out_dir))
        return derive(cfg, **{"trajectory.path": traj, "trajectory.hub_repo": None, "output_dir": str(out_dir)})

    def open_trajectory(self, traj: str | None):
        from rlvr_linearity.trajectory import open_trajectory

        return open_trajectory(self._on(traj, self.out).trajectory)


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
    """Paired comparison with the trained checkpoint at the row's target, per benchmark (the
    first benchmark's also as the row's `vs_trained`)."""
    for b in benches:
        if row["metrics"].get(b) is not None:
            row["metrics"][b] = {**row["metrics"][b], "vs_trained": p.vs_trained(label, row["target"], b)}
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

    given = cfg.trajectory.path or (f"hub:{cfg.trajectory.hub_repo}" if cfg.trajectory.hub_repo else None)
    results: dict[str, Any] = {"benchmark": bench, "benchmarks": benches, "trajectory": traj_path or given}
    if "evaluate" in stages:
        steps = _eval_steps(p, traj_path)
        rlvr = []
        for step, path in steps:
            metrics = p.evaluate_model(f"step_{step}", path, ident)
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
        results["logits_extrapolation"] = _logits(p, cfg, traj_path, ident, benches) if "logits" in stages else []
    p.prediction_errors(traj_path, ident, relex + weight)
    results["relex"] = relex
    results["weight_extrapolation"] = weight
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
        return {"dry_run": listing}
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
    if p.dry_run and not (given and traj_path is None):  # nothing trained yet: list what was asked
        return [(s, None) for s in ([] if wanted == "all" else sorted({0, *wanted}))]
    traj = p.open_trajectory(traj_path)
    steps = traj.steps if wanted == "all" else [s for s in traj.steps if s in set(wanted)]
    if wanted != "all" and 0 not in steps:
        steps = [0, *steps]
    return [(s, None if p.dry_run else str(traj.model(s).path)) for s in steps]


def _logits_engine(cfg, models: list[str], alpha: float) -> dict:
    """The logits-extrapolation engine of one pair: the settings of conf/engine/logits_extrapolation.yaml,
    on the configured engine's device (vLLM names none: that file's)."""
    spec = OmegaConf.to_container(OmegaConf.load(conf_dir() / "engine" / "logits_extrapolation.yaml"))
    spec.pop("defaults")
    device = cfg.engine.device if "device" in cfg.engine else spec["device"]
    return {**spec, "models": models, "alpha": alpha, "device": device}


def _logits(p: Pipeline, cfg, traj_path: str | None, ident: str, benches: list[str]) -> list[dict]:
    pcfg = cfg.pipeline.logits
    out = []
    if not pcfg.pairs or not pcfg.targets:
        return out
    if p.dry_run:
        return out
    traj = p.open_trajectory(traj_path)
    for a, b in [tuple(x) for x in pcfg.pairs]:
        for t in pcfg.targets:
            alpha = (t - a) / (b - a)
            engine = _logits_engine(cfg, [str(traj.model(a).path), str(traj.model(b).path)], alpha)
            label = f"logits_{a}_{b}_t{t}"
            metrics = p.evaluate_model(label, None, ident, engine=engine)
            row = {"base_step": a, "second_step": b, "target": t, "alpha": alpha, **_scored(metrics, benches)}
            _compare(p, row, label, benches)
            out.append(row)
    return out
