"""The rank-r reconstruction of observed steps (`linearity.reconstruct_steps`) as a weight-space
method: W_0 + Δ̃_s, Δ̃_s the projection of the actual Δ_s onto the top-`rank` right singular
subspace of the window (steps <= history, all if None), a weighted sum of the window's deltas
(`lowrank.projection_weights`), float64 from the stored values, written by the executor."""

from __future__ import annotations

from pathlib import Path

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.lowrank import projection_weights
from rlvr_linearity.linearity.plan import Combine, Copy, Plan


def reconstruction_dir(out_root: Path, step: int, rank: int) -> Path:
    """Where the rank-`rank` reconstruction of `step` is written under `out_root`."""
    return Path(out_root) / f"step_{step}_rank{rank}"


class Reconstruct:
    """Plans the reconstructions of `targets` from the Grams over `observed` (base excluded)."""

    def __init__(self, grams: dict, observed: list[int], targets: list[int], rank: int, history, out_root: Path):
        for s in targets:
            if s not in observed:
                raise ConfigError(f"linearity.reconstruct_steps: step {s} is not in the trajectory's steps {observed}")
        self.grams, self.observed, self.targets = grams, observed, targets
        self.rank, self.history, self.out_root = rank, history, Path(out_root)
        self.n_win = len(observed) if history is None else sum(1 for s in observed if s <= int(history))

    def path(self, step: int) -> Path:
        return reconstruction_dir(self.out_root, step, self.rank)

    def plan(self, traj) -> Plan:
        window = tuple(self.observed[: self.n_win])  # the projection is a combination of the window's deltas
        tensors = {}
        for name in traj.base.tensor_names:
            g = self.grams.get(name)
            rows = [self.observed.index(s) for s in self.targets]
            tensors[name] = Copy(0) if g is None else Combine(0, window, projection_weights(g, self.n_win, rows, self.rank),
                                                              exact=True)
        return Plan([self.path(s) for s in self.targets], tensors, label="reconstruct")

    def report(self) -> list[dict]:
        return [{"step": s, "rank": self.rank, "history": self.history, "path": str(self.path(s))}
                for s in self.targets]
