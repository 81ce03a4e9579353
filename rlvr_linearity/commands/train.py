"""`rlvr train`: RL training (GRPO) that writes a trajectory of checkpoints."""

from __future__ import annotations

from rlvr_linearity.train.app import train
from rlvr_linearity.paths import resolve_output_dir


def run(cfg, tracker):
    traj = train(cfg, resolve_output_dir(cfg), tracker)
    return {"trajectory": str(traj)}
