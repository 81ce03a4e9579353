"""Which tensors a partition job handles, and whether every partition of a run is complete.

Every analysis here decomposes by tensor, so `partition.count=N` jobs can share a trajectory's
tensors: each takes a disjoint subset, balanced by bytes, and writes its partial results under
`DIR/partitions/part-<i>-of-<N>/` (`paths.partition_dir`); the merge (`linearity.partition`,
`extrapolate.partition`) combines them into DIR exactly as one job would have written them.
The assignment depends only on the tensors' names and sizes, never on which job runs first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlvr_linearity.errors import ConfigError, RlvrError
from rlvr_linearity.paths import partition_dir


def assign(sizes: dict[str, int], count: int) -> list[list[str]]:
    """Split tensors over `count` partitions by bytes: longest processing time first (largest
    tensor to the lightest partition; ties by name, then by partition index), each partition's
    tensors kept in the given order. Deterministic: a function of the names and sizes alone."""
    if count > len(sizes):
        raise ConfigError(f"partition.count={count}: the analysis has only {len(sizes)} tensors to share")
    load = [0] * count
    owner: dict[str, int] = {}
    for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        i = min(range(count), key=lambda j: (load[j], j))
        owner[name] = i
        load[i] += size
    return [[n for n in sizes if owner[n] == i] for i in range(count)]


def tensor_bytes(model) -> dict[str, int]:
    """Stored bytes of each tensor of a model (`ModelFiles`), in its order."""
    return {n: model.numel(n) * model.dtype(n).itemsize for n in model.tensor_names}


def partition_names(traj, count: int, index: int, names: list[str] | None = None) -> list[str]:
    """The tensors (in the trajectory's order) that partition `index` of `count` handles, of
    `names` (the tensors the analysis selects; default: every tensor)."""
    sizes = tensor_bytes(traj.base)
    if names is not None:
        sizes = {n: sizes[n] for n in names}
    return assign(sizes, count)[index]


def require_complete(root: Path, count: int, done: Callable[[Path], bool], what: str) -> list[Path]:
    """The partition directories of a run under `root`, or one error line naming every missing
    or unfinished partition (`done(dir)` says whether a partition finished)."""
    dirs = [partition_dir(root, count, i) for i in range(count)]
    missing = [i for i, d in enumerate(dirs) if not done(d)]
    if missing:
        listed = ", ".join(str(i) for i in missing)
        raise RlvrError(f"cannot merge {what}: partition(s) {listed} of {count} missing or unfinished under "
                        f"{Path(root) / 'partitions'}; rerun them with partition.index={','.join(map(str, missing))}")
    return dirs
