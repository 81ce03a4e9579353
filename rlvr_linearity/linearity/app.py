"""`rlvr linearity`: per-weight R², low-rank findings and token log-prob linearity of a trajectory.

`run(cfg, tracker)` is the command; `analyse(cfg, out_dir)` does the same work without Hydra or
tracking (the pipeline calls it) and returns the summary numbers. Outputs under
`out_dir/linearity/` (weights_r2.json, weights_r2.safetensors, lowrank.json, logprob_r2.json,
reconstruct/step_<s>_rank<r>/) and figures under `out_dir/figures/`.

weights_r2.json = the contract's keys for the largest window, plus
    windows: {label ("25", ..., "all"): same keys + histogram/by_module/by_layer/heatmap}
        (per-tensor medians for the largest window only; smaller windows: null)
    histogram: 100 counts of per-weight R² over [0, 1]; median_error_bound: 0 (exact) or 2**-20
    by_module / by_layer: {key: {numel, n_defined, mean, frac_above_0.7}} (MoE experts pooled)
    heatmap: {modules, layers, mean [module][layer], side {embed_tokens, norm, lm_head, ...}}
    examples: a few weights' values per step with their R²; filters: LIN's options used
lowrank.json (deltas against the base over the observed steps, base excluded):
    steps, ranks, windows: {label: {steps, model: {r: EV of the whole model},
        summary: {r: {n, mean, median, min, max, count_ge_0.9/0.95/0.99}}, per_tensor: {name: {r: EV}}}}
    coefficients: {history, model: FIT, summary: {r2_in_sample, r2_out_of_sample: stats}, per_tensor: {name: FIT}}
        FIT = {steps, coefficients (c_t = Δ_t·v₁, v₁ from steps <= history; last > 0), n_history,
               slope, intercept, r2_in_sample, r2_out_of_sample (1 - SS_res/SS_tot on later steps)}
    summary: {rank1_ev, model_ev, coefficient_r2_in_sample, coefficient_r2_out_of_sample}
    reconstruct: [{step, rank, history, path}] when linearity.reconstruct_steps is set
logprob_r2.json: see rlvr_linearity.linearity.logprob.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.r2 import window_lengths
from rlvr_linearity.io import write_json_atomic
from rlvr_linearity.io import jsonable

log = logging.getLogger(__name__)


def _device(lin) -> str:
    dev = str(lin.device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"linearity.device={dev} but no CUDA device is available")
    return dev


def _write(path: Path, data) -> None:
    write_json_atomic(path, jsonable(data))


def r2_filters(lin) -> dict:
    """The weight-R² settings of `linearity.*` that every weight R² pass shares (which weights count, how)."""
    return {"thresholds": tuple(float(t) for t in lin.thresholds), "engine": str(lin.engine),
            "sample_fraction": lin.sample_fraction, "min_samples": int(lin.min_samples),
            "min_abs_change": float(lin.min_abs_change or 0.0), "min_unique": int(lin.min_unique or 0),
            "unique_dtype": str(lin.unique_filter_dtype), "tensors": str(lin.tensors),
            "sample_seed": int(lin.sample_seed)}


def r2_steps(lin, saved: list[int]) -> list[int]:
    """The steps weight and token log-prob R² run over: `linearity.steps` (the base, step 0, always
    counts), or every saved step when null. Steps the trajectory lacks fail with one line."""
    if lin.steps is None:
        return list(saved)
    wanted = sorted({0, *(int(s) for s in lin.steps)})
    missing = [s for s in wanted if s not in set(saved)]
    if missing:
        raise ConfigError(f"linearity.steps: step(s) {', '.join(map(str, missing))} not in the trajectory "
                          f"(saved: {_span(saved)}); linearity.steps=null uses every saved step")
    return wanted


def _span(steps: list[int]) -> str:
    """A short listing of saved steps for error lines."""
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]} ({len(steps)} steps)"


def weight_state(cfg, traj, steps, out: Path, names=None):
    """The weight-R² pass over `names` (default: every tensor `linearity.tensors` selects) as a
    mergeable `WeightState`."""
    from rlvr_linearity.linearity.weights import weight_pass

    lin = cfg.linearity
    return weight_pass(
        traj, steps, windows=list(lin.windows), device=_device(lin), chunk_elements=int(lin.chunk_elements),
        per_weight_path=out / "weights_r2.safetensors" if lin.save_per_weight else None, names=names,
        scope=list(traj.tensor_names), **r2_filters(lin))


def trajectory_grams(cfg, traj, observed: list[int], names=None) -> dict:
    """Per-tensor Grams of the deltas over `observed` (cached under the cache dir's grams/), for
    `names` (default: every tensor)."""
    from rlvr_linearity.linearity.gram import compute_grams
    from rlvr_linearity.paths import cache_dir

    threads = torch.get_num_threads()
    if _device(cfg.linearity) == "cpu":
        torch.set_num_threads(1)  # block copies are memory-bound; OpenMP spinning starves a shared CPU
    try:
        return compute_grams(traj, observed, cache_dir=cache_dir(cfg) / "grams", names=names)
    finally:
        torch.set_num_threads(threads)


def lowrank(cfg, traj, steps, grams: dict, out: Path) -> dict:
    """lowrank.json's content from every tensor's Gram over `steps` (and the reconstructions it asks for)."""
    from rlvr_linearity.linearity.lowrank import lowrank_report

    lin = cfg.linearity
    observed = [s for s in steps if s != 0]
    report = lowrank_report(grams, observed, list(lin.windows), list(lin.ranks), lin.coefficient_history)
    if lin.reconstruct_steps:
        report["reconstruct"] = reconstruct(traj, grams, observed, [int(s) for s in lin.reconstruct_steps],
                                            int(lin.reconstruct_rank), lin.coefficient_history,
                                            out / "reconstruct", int(lin.chunk_elements))
    return report


def reconstruct(traj, grams: dict, observed: list[int], targets: list[int], rank: int, history, out_root: Path,
                chunk_elements: int = 1 << 21) -> list[dict]:
    """Write W_0 + Δ̃_s for each target step s (`reconstruct.Reconstruct`, through the executor:
    one streaming read of the window). Returns [{step, rank, history, path}]."""
    from rlvr_linearity.linearity.executor import execute
    from rlvr_linearity.linearity.reconstruct import Reconstruct

    method = Reconstruct(grams, observed, targets, rank, history, out_root)
    execute(traj, method.plan(traj), max_elements=chunk_elements)
    return method.report()


def _problem_texts(cfg, benchmark: str, instruction: str | None) -> list[str]:
    """The problem texts probes store (LIN's `problem`): the bare statements when
    `linearity.probes.instruction` is set (`logprob.prompt_text` appends it, once), else the
    benchmark's own prompt, which already asks for \\boxed{}."""
    try:
        from rlvr_linearity.evaluate.benchmarks import load_benchmark
    except ImportError:  # evaluation package not installed in this tree: the demo task directly
        load_benchmark = None
    if load_benchmark is not None:
        rows = load_benchmark(benchmark, cfg)
    elif benchmark == "arithmetic":
        from rlvr_linearity.tasks.arithmetic import make_split

        rows = make_split(cfg.task, "test")
    else:
        raise ConfigError(f"linearity.probes: cannot load benchmark {benchmark!r}; give linearity.probes.file")

    def text(r):
        get = r.get if isinstance(r, dict) else (lambda k: getattr(r, k, None))
        return get("problem") if instruction else (get("prompt") or get("problem"))

    return [text(r) for r in rows]


def _remote_code(cfg) -> bool:
    """trajectory.trust_remote_code: models with custom code load for the log-prob pass too."""
    return bool(cfg.trajectory.trust_remote_code)


def _probes(cfg, traj, out: Path) -> list[dict]:
    from rlvr_linearity.linearity.logprob import generate_probes, load_probes

    pc = cfg.linearity.probes
    if pc.file:
        return load_probes(pc.file)
    if not pc.generate:
        raise ConfigError("linearity.logprobs=true needs linearity.probes.file or linearity.probes.generate=true")
    texts = _problem_texts(cfg, str(pc.benchmark), pc.instruction)[: int(pc.n_problems)]
    items = generate_probes(traj.model(0).path, texts, n_samples=int(pc.n_samples),
                            max_new_tokens=int(cfg.sampling.max_tokens), temperature=pc.temperature, top_p=pc.top_p,
                            top_k=pc.top_k, seed=int(cfg.sampling.seed), batch_size=int(pc.batch_size), instruction=pc.instruction,
                            device=_device(cfg.linearity), trust_remote_code=_remote_code(cfg))
    _write(out / "probes.json", items)
    return [{"problem": it["problem"], "response_id": g["response_id"], "response": g["text"]}
            for it in items for g in it["generated_texts"]]


def logprobs(cfg, traj, steps, out: Path) -> dict:
    from rlvr_linearity.linearity.logprob import teacher_forced_matrix, token_linearity

    pc = cfg.linearity.probes
    probes = _probes(cfg, traj, out)
    lp, lg, tokens = teacher_forced_matrix(traj, steps, probes, instruction=pc.instruction,
                                           batch_size=int(pc.batch_size), chunk=int(pc.chunk_positions),
                                           device=_device(cfg.linearity), trust_remote_code=_remote_code(cfg))
    res = token_linearity(lp.astype(np.float64), lg.astype(np.float64), steps, min_change=float(pc.min_change or 0.0),
                          max_tokens=pc.max_tokens_sampled, seed=int(cfg.linearity.sample_seed),
                          tokens=tokens)
    res["n_sequences"] = len(probes)
    return res


def analyse(cfg, out_dir) -> dict:
    """Run every analysis that `cfg.linearity` enables on `cfg.trajectory`; write the outputs
    under out_dir and return the summary numbers (weights: mean/median/frac_above; low rank).
    A second run into the same out_dir while this one runs fails at once with one line."""
    from rlvr_linearity.trajectory.writer import claim_output

    with claim_output(Path(out_dir) / "linearity"):
        return _analyse(cfg, out_dir)


def open_checked(cfg):
    """The trajectory (up to trajectory.max_step / linearity.max_step), its steps, and the steps
    weight and log-prob R² run over (`r2_steps`); bad steps or windows fail before any work."""
    from rlvr_linearity.trajectory import open_trajectory

    caps = [m for m in (cfg.trajectory.max_step, cfg.linearity.max_step) if m is not None]
    traj = open_trajectory(cfg.trajectory, max_step=min(caps, default=None))
    steps = list(traj.steps)
    selected = r2_steps(cfg.linearity, steps)
    window_lengths(selected, list(cfg.linearity.windows))
    return traj, steps, selected


def _analyse(cfg, out_dir) -> dict:
    from rlvr_linearity.linearity.weights import weights_result

    lin = cfg.linearity
    out = Path(out_dir) / "linearity"
    traj, steps, selected = open_checked(cfg)
    weights = weights_result(weight_state(cfg, traj, selected, out)) if lin.weights else None
    observed = [s for s in steps if s != 0]  # low rank: every step, deltas against the base
    low = lowrank(cfg, traj, steps, trajectory_grams(cfg, traj, observed), out) if lin.lowrank else None
    probes = logprobs(cfg, traj, selected, out) if lin.logprobs else None
    return write_outputs(out_dir, steps, selected, weights, low, probes)


def write_outputs(out_dir, steps, selected, weights: dict | None, lowrank: dict | None,
                  logprobs: dict | None) -> dict:
    """Write the JSON outputs and figures under out_dir (a run's, or a merge of partitions');
    return the summary numbers (`selected`: the steps weight and log-prob R² ran over)."""
    from rlvr_linearity.figures.linearity import linearity_figures

    out_dir = Path(out_dir)
    out = out_dir / "linearity"
    summary: dict = {"dir": str(out_dir), "steps": steps, "r2_steps": selected}
    if weights is not None:
        _write(out / "weights_r2.json", weights)
        summary.update({k: weights[k] for k in ("n_weights", "n_defined", "mean", "median", "frac_above")})
        summary["windows"] = {k: {"median": w["median"], "mean": w["mean"], "frac_above": w["frac_above"]}
                              for k, w in weights["windows"].items()}
    if lowrank is not None:
        _write(out / "lowrank.json", lowrank)
        summary["lowrank"] = lowrank["summary"]
    if logprobs is not None:
        _write(out / "logprob_r2.json", logprobs)
        summary["logprob"] = {k: logprobs["logprob"].get(k) for k in ("median", "mean", "frac_above", "n_tokens")}
    figs = linearity_figures(out_dir / "figures", weights=weights, lowrank=lowrank, logprobs=logprobs)
    summary["figures"] = {k: str(v) for k, v in figs.items()}
    return summary
