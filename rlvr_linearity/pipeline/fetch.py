"""What a pipeline reads of a hub trajectory: planned from the config, said first, fetched once.

A hub trajectory (RELEX's 1.5B: 500 steps of 3.1 GB) is never downloaded whole. `stage_steps`
maps each stage of the chain to the steps it reads (pure: the config and the steps available);
the pipeline fetches their union before any stage runs, each stage then opens only its own
steps, and `pipeline.dry_run=true` prints the plan with its size from the hub's file listing,
before anything is fetched. The trajectory's identity (the stages' cache key) is the hub's
commit of every selected step, so it needs no download either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rlvr_linearity.extrapolate.app import histories


def pair_targets(pcfg) -> list[tuple[int, int, list[int]]]:
    """(base, second, targets) of `pipeline.weight` / `pipeline.logits`: every `pairs` entry with the
    shared `targets`, then every `per_pair` entry with its own (LIN Fig. 5: t′ depends on t₁)."""
    shared = [(int(a), int(b), [int(t) for t in pcfg.targets]) for a, b in pcfg.pairs]
    return shared + [(int(e.base), int(e.second), [int(t) for t in e.targets]) for e in pcfg.per_pair]


def stage_steps(cfg, available: list[int]) -> dict[str, list[int]]:
    """{stage: sorted steps it reads} for the chain's stages in `pipeline.stages`, out of the
    trajectory's `available` steps (after trajectory.steps / max_step). Step 0 (the base) is
    read by every stage and listed by none; a stage that reads no step is left out."""
    from rlvr_linearity.extrapolate.relex import select_windows

    avail = sorted(int(s) for s in available if int(s) != 0)
    stages, pc, ex = set(cfg.pipeline.stages), cfg.pipeline, cfg.extrapolate
    reads: dict[str, list[int]] = {}
    targets: list[int] = []  # predictions compared with the trained checkpoint at their target
    if "linearity" in stages:  # R² over linearity.steps (low rank: every step), windows within max_step
        lin = cfg.linearity
        reads["linearity"] = [s for s in (avail if lin.steps is None or lin.lowrank else lin.steps)
                              if lin.max_step is None or s <= lin.max_step]
    if "relex" in stages and ex.method == "relex" and histories(ex) and ex.targets:
        windows = select_windows(avail, history=ex.history, window=ex.window, last=ex.last, windows=ex.windows)
        reads["relex"] = avail if ex.gram_steps == "all" else [s for w in windows for s in w.steps]
        targets += ex.targets
    if "weight" in stages:
        reads["weight"] = [s for a, b, _ in pair_targets(pc.weight) for s in (a, b)]
        targets += [t for *_, ts in pair_targets(pc.weight) for t in ts]
    if {"logits", "evaluate"} <= stages:  # logits extrapolation runs inside evaluate
        reads["logits"] = [s for a, b, ts in pair_targets(pc.logits) if ts for s in (a, b)]
    if "evaluate" in stages:
        reads["evaluate"] = avail if pc.evaluate_steps == "all" else pc.evaluate_steps
    if "mechanism" in stages:
        reads["mechanism"] = avail
    if "reconstruct" in stages and pc.reconstruct.steps:  # the subspace from every trained step's Gram
        reads["reconstruct"] = avail
        targets += pc.reconstruct.steps
    reads["prediction_error"] = targets
    picked = {stage: sorted(set(avail) & {int(s) for s in steps}) for stage, steps in reads.items()}
    return {stage: steps for stage, steps in picked.items() if steps}


def union(reads: dict[str, list[int]]) -> list[int]:
    return sorted({s for steps in reads.values() for s in steps})


@dataclass
class HubFetch:
    """A hub trajectory's fetch plan: the selected steps' commits and what each stage reads."""

    repo: str
    prefix: str
    cache: Path  # trajectory.cache_dir: validated steps are linked under <cache>/hub/<org>--<name>/
    commits: dict[int, str]  # selected step -> its commit on the hub
    reads: dict[str, list[int]]
    base_in_repo: bool  # step 0 is a revision of the repository (no trajectory.base)
    identity: str  # the trajectory's identity for the stage cache: its content as the hub names it

    @property
    def root(self) -> Path:
        from rlvr_linearity.trajectory.hub import hub_cache_dir

        return hub_cache_dir(self.cache, self.repo)

    @property
    def steps(self) -> list[int]:
        """What to fetch: every step some stage reads, and the repository's step 0 if it is the base."""
        return sorted({*union(self.reads), *([0] if self.base_in_repo and 0 in self.commits else [])})

    def reading(self, stage: str) -> list[int]:
        """The steps a stage opens: its own, and step 0 when the repository holds it."""
        return sorted({*self.reads.get(stage, []), *([0] if 0 in self.commits else [])})


def plan_hub_fetch(cfg, required: bool = True) -> HubFetch | None:
    """The plan of `cfg`'s hub trajectory: its revisions listed (offline: the cached steps), no
    download. With the hub unreachable and nothing cached: an error, or None (said) if not `required`."""
    from rlvr_linearity.errors import TrajectoryError
    from rlvr_linearity.trajectory.hub import hub_cache_dir, hub_revisions, listed_revisions
    from rlvr_linearity.trajectory.load import hub_cache, select_steps

    tr = cfg.trajectory
    repo, prefix = str(tr.hub_repo), str(tr.hub_revision_prefix)
    cache = hub_cache(tr.cache_dir)
    root = hub_cache_dir(cache, repo)
    try:
        commits = hub_revisions(repo, prefix, root)
    except TrajectoryError as e:
        if required:
            raise
        print(f"{e}: the steps to fetch and their size are unknown", flush=True)
        return None
    where_ = f"trajectory.hub_repo {repo}"
    selected = select_steps(sorted(commits), tr.steps, tr.max_step, where_=where_)
    known = {**listed_revisions(root), **commits}  # offline: also the last listing's steps, not linked
    spec = {"hub": repo, "prefix": prefix, "base": tr.base,
            "commits": {s: known[s] for s in select_steps(sorted(known), tr.steps, tr.max_step, where_=where_)}}
    commits = {s: commits[s] for s in selected}
    identity = "hub:" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return HubFetch(repo, prefix, cache, commits, stage_steps(cfg, selected), not tr.base, identity)


def announce(plan: HubFetch, fetch: bool) -> dict:
    """Print the plan (steps per stage, then how many steps and bytes the run fetches: sizes from
    the hub's file listing, cached steps counted but not downloaded again); then, with `fetch`,
    download the steps not yet cached. Returns the plan's numbers."""
    from rlvr_linearity.errors import TrajectoryError
    from rlvr_linearity.trajectory.hub import fetch_hub_trajectory, hub_step_sizes

    print(f"hub {plan.repo}: {len(plan.commits)} steps selected; the stages read:")
    for stage, steps in plan.reads.items():
        print(f"  {stage:<17}{len(steps):>4} steps  {step_ranges(steps)}")
    cached = [s for s in plan.steps if (plan.root / f"step_{s}").is_dir()]
    try:
        sizes: dict[int, int] | None = hub_step_sizes(plan.repo, plan.prefix, plan.steps)
    except TrajectoryError:  # offline: the cached steps are all a run can use anyway
        sizes = None
    total = None if sizes is None else sum(sizes.values())
    todo = None if sizes is None else sum(n for s, n in sizes.items() if s not in cached)
    size = ("size unknown (the hub's file listing is unreachable)" if sizes is None
            else f"{human_bytes(total)} ({len(cached)} cached; {human_bytes(todo)} to download)")
    print(f"  fetch {len(plan.steps)} steps, {size}", flush=True)
    if fetch:
        fetch_hub_trajectory(plan.repo, plan.steps, plan.cache, plan.prefix)
    return {"reads": plan.reads, "steps": plan.steps, "bytes": total, "cached": cached, "to_download": todo}


def step_ranges(steps: list[int]) -> str:
    """`1-75,100,200`: runs of consecutive steps as ranges."""
    runs: list[list[int]] = []
    for s in steps:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def human_bytes(n: float) -> str:
    """Decimal units, as the hub shows sizes: 248 GB, 1.55 TB."""
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while n >= 999.5 and i < len(units) - 1:  # 999.7 GB is "1 TB", not "1e+03 GB"
        n, i = n / 1000, i + 1
    return f"{n:.3g} {units[i]}"
