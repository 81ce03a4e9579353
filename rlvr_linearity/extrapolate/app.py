"""`rlvr extrapolate`: predicted checkpoints by RELEX (`extrapolate=relex`) or LIN's two-point
weight extrapolation (`extrapolate=weight`).

Outputs under DIR/extrapolate/:
  step_<t>/            one complete HF model per target (one window, or method=weight)
  h<T>/step_<t>/       with several windows (`extrapolate.windows=[...]`): one dir per history
  extrapolation.json   method, parameters, steps observed per window, targets, per-tensor
                       explained variance (relex), the weights w of each prediction
                       (Δ̂ = Σ_t w_t Δ_t per tensor), α per target (weight), timings.
`run(cfg, tracker)` is the command; `extrapolate(cfg, out_dir)` the same work for the pipeline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from rlvr_linearity.config import section
from rlvr_linearity.errors import ConfigError

log = logging.getLogger(__name__)


def _open(cfg, max_step=None):
    from rlvr_linearity.trajectory import open_trajectory

    return open_trajectory(cfg.trajectory, max_step=max_step)


def histories(ex) -> list[int]:
    """The RELEX histories (T_cut) asked for: extrapolate.windows, or extrapolate.history for one."""
    return [int(h) for h in ex.windows] if ex.windows else ([int(ex.history)] if ex.history is not None else [])


def _hub_max_step(cfg, ex) -> int | None:
    """For hub trajectories with only histories asked: download no step beyond the largest (nor
    beyond trajectory.max_step); grams over every step (gram_steps=all) read them all."""
    tr = cfg.trajectory
    if not tr.hub_repo or tr.steps is not None or ex.window is not None or ex.gram_steps == "all":
        return None
    hists = histories(ex)
    if not hists:
        return None
    return max(hists) if tr.max_step is None else min(max(hists), int(tr.max_step))


def _relex(cfg, traj, root: Path, names) -> tuple[dict, dict, list[int]]:
    """RELEX from `cfg.extrapolate`: (result, parameters, steps observed)."""
    from rlvr_linearity.paths import cache_dir

    from .relex import run_relex, select_windows

    ex = cfg.extrapolate
    windows = select_windows(traj.steps, history=ex.history, window=ex.window, last=ex.last, windows=ex.windows)
    res = run_relex(traj, windows, list(ex.targets), root, rank=int(ex.rank), fit=str(ex.fit),
                    degree=int(ex.degree), mode=str(ex.mode), dtype=ex.dtype,
                    cache_dir=cache_dir(cfg) / "grams" if ex.cache else None, memory_budget=int(ex.memory_budget),
                    gram_steps=traj.steps if ex.gram_steps == "all" else None, axis=str(ex.axis),
                    target_scale=float(ex.target_scale), fit_window=ex.fit_window, ar_window=ex.ar_window,
                    names=names)
    params = {"rank": int(ex.rank), "fit": str(ex.fit), "degree": int(ex.degree), "mode": str(ex.mode),
              "axis": str(ex.axis), "target_scale": float(ex.target_scale), "fit_window": ex.fit_window,
              "ar_window": ex.ar_window,
              "history": ex.history, "window": section(cfg, "extrapolate.window"), "last": ex.last,
              "windows": section(cfg, "extrapolate.windows")}
    steps = res["windows"][0]["steps"] if len(res["windows"]) == 1 else res["steps_read"]
    return res, params, steps


def _weight(cfg, traj, root: Path, names) -> tuple[dict, dict, list[int]]:
    """LIN's weight extrapolation from `cfg.extrapolate`: (result, parameters, steps observed)."""
    from .weight import run_weight

    ex = cfg.extrapolate
    if OmegaConf.is_missing(ex, "second_step") or ex.second_step is None:
        raise ConfigError("weight extrapolation needs the second step: "
                          "`extrapolate=weight extrapolate.second_step=B` (base_step A defaults to 0)")
    base_step = int(ex.base_step)
    res = run_weight(traj, base_step, int(ex.second_step), list(ex.targets), root,
                     extrapolate_norms=bool(ex.extrapolate_norms), dtype=ex.dtype, names=names)
    params = {"base_step": base_step, "second_step": int(ex.second_step),
              "extrapolate_norms": bool(ex.extrapolate_norms)}
    return res, params, sorted({base_step, int(ex.second_step)})


METHODS = {"relex": _relex, "weight": _weight}  # extrapolate.method -> the method's run from the config


def extrapolate(cfg, out_dir) -> dict:
    """Write the predictions and extrapolation.json under out_dir/extrapolate; return its content.
    A second run into the same out_dir while this one runs fails at once with one line. With
    `partition.count` > 1 only partition `partition.index`'s tensors are written (out_dir is then
    that partition's directory; `extrapolate.partition.merge` makes the whole models)."""
    from rlvr_linearity.trajectory.writer import claim_output

    with claim_output(Path(out_dir) / "extrapolate"):
        return _extrapolate(cfg, out_dir)


def open_keyed(cfg):
    """The trajectory the method reads, and the key of a run's outputs (the method's and the
    trajectory's config, the trajectory's content; not the partition: every partition and the
    merge share it)."""
    from rlvr_linearity.io import stage_key

    ex = cfg.extrapolate
    if str(ex.method) not in METHODS:
        raise ConfigError(f"extrapolate.method={ex.method!r}: expected one of {', '.join(METHODS)}")
    traj = _open(cfg, _hub_max_step(cfg, ex) if ex.method == "relex" else None)
    return traj, stage_key("extrapolate", {k: section(cfg, k) for k in ("extrapolate", "trajectory")},
                           [traj.fingerprint()])


def _extrapolate(cfg, out_dir) -> dict:
    from rlvr_linearity.io import jsonable, write_json_atomic
    from rlvr_linearity.linearity import gram
    from rlvr_linearity.partitions import partition_names

    t0, read0 = time.perf_counter(), gram.bytes_read()
    ex = cfg.extrapolate
    method = str(ex.method)
    root = Path(out_dir) / "extrapolate"
    traj, config_key = open_keyed(cfg)
    done = complete(root, config_key)
    if done is not None:  # a rerun of a finished job (a sweep resubmitted, a requeued Slurm job)
        log.info("extrapolate: %s is complete for this config; nothing to do", root)
        return done
    (root / "extrapolation.json").unlink(missing_ok=True)  # an earlier config's must not vouch for new models
    part = cfg.partition
    names = partition_names(traj, int(part.count), int(part.index)) if part.count > 1 else None
    res, params, steps = METHODS[method](cfg, traj, root, names)
    out = {"method": method, "trajectory": str(traj.path), "base": str(traj.base.path), "steps": steps,
           "targets": [int(t) for t in ex.targets], "dtype": ex.dtype, "parameters": params, **res}
    out["timings"] = {**res.get("timings", {}), "run_s": time.perf_counter() - t0}
    out["bytes_read"] = gram.bytes_read() - read0
    out["config_key"] = config_key
    write_json_atomic(root / "extrapolation.json", jsonable(out))  # last: marks the outputs complete
    return out


def complete(root: Path, config_key: str) -> dict | None:
    """extrapolation.json of a finished run with the same config whose predictions all exist."""
    import json

    path = root / "extrapolation.json"
    if not path.exists():
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if done.get("config_key") != config_key:
        return None
    paths = [t["path"] for t in done.get("targets", []) if isinstance(t, dict)]
    paths += [t["path"] for w in done.get("windows", []) for t in w.get("targets", [])]
    return done if paths and all((Path(p) / "config.json").exists() for p in paths) else None


def result_rows(res: dict) -> list[dict]:
    """One row per written prediction (the tracker's table)."""
    if res["method"] == "weight":
        return [{"base_step": res["base_step"], "second_step": res["second_step"], "target": t["target"],
                 "alpha": t["alpha"], "path": t["path"]} for t in res["targets"]]
    rows = []
    for w in res["windows"]:
        s = w["explained_variance_summary"]
        for t in w["targets"]:
            rows.append({"window": w["label"], "history": w["history"], "n_observed": len(w["steps"]),
                         "last_observed": w["steps"][-1], "target": t["target"],
                         "mean_explained_variance": s.get("mean"), "path": t["path"]})
    return rows
