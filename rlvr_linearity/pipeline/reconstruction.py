"""RELEX Finding 1 as a pipeline stage (`reconstruct`, docs/methods.md §A3): rank-r
reconstructions of trained checkpoints, W_0 + the projection of Δ_s onto the top-r right
singular subspace of the window (steps <= `pipeline.reconstruct.history`, every step if null),
written by `linearity.app.reconstruct` through the weight-space executor. One stage per rank, so
each rank has its own key; the chain evaluates the models like any checkpoint."""

from __future__ import annotations

from pathlib import Path

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.reconstruct import reconstruction_dir


def reconstruct_config(cfg, rank: int) -> dict:
    """What one rank's stage depends on besides the trajectory."""
    rc = cfg.pipeline.reconstruct
    return {"steps": sorted({int(s) for s in rc.steps}), "rank": int(rank), "history": rc.history}


def reconstruct_stage(cfg, traj, rank: int, out: Path) -> dict:
    """Write the rank-`rank` reconstruction of every `pipeline.reconstruct.steps` step under
    `out/reconstruct/` (`stage_rows` names them); returns {"steps": [...]}."""
    from rlvr_linearity.linearity.app import reconstruct, trajectory_grams

    rc = cfg.pipeline.reconstruct
    observed = [s for s in traj.steps if s != 0]
    steps = reconstruct_config(cfg, rank)["steps"]
    missing = [s for s in steps if s not in observed]
    if missing:
        raise ConfigError(f"pipeline.reconstruct.steps: step(s) {missing} not in the trajectory's steps {observed}")
    if rc.history is not None and not any(s <= rc.history for s in observed):
        raise ConfigError(f"pipeline.reconstruct.history={rc.history}: no trained step at or before it (first: {observed[0]})")
    rows = reconstruct(traj, trajectory_grams(cfg, traj, observed), observed, steps, int(rank), rc.history,
                       out / "reconstruct", int(cfg.linearity.chunk_elements))
    return {"steps": [r["step"] for r in rows]}


def stage_rows(cfg, rank: int, stage_dir: Path) -> list[dict]:
    """The results.json rows of one rank's stage (known in a dry run too: the paths key the
    reconstructions' evaluations)."""
    history = cfg.pipeline.reconstruct.history
    return [{"step": s, "rank": int(rank), "history": history,
             "path": str(reconstruction_dir(Path(stage_dir) / "reconstruct", s, rank))}
            for s in reconstruct_config(cfg, rank)["steps"]]


def eval_label(row: dict) -> str:
    """The stage label of a reconstruction's evaluation (`DIR/stages/eval_<label>`)."""
    h = "all" if row["history"] is None else row["history"]
    return f"recon_r{row['rank']}_h{h}_s{row['step']}"
