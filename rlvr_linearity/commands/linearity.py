"""`rlvr linearity`: weight, log-prob and low-rank linearity of a trajectory."""

from __future__ import annotations


from rlvr_linearity.forecast.watch import watch
from rlvr_linearity.linearity import partition
from rlvr_linearity.linearity.app import analyse
from rlvr_linearity.paths import resolve_output_dir


def run(cfg, tracker):
    if cfg.watch:  # follow a run's checkpoint directory: live R² and forecasts
        return watch(cfg, resolve_output_dir(cfg), tracker)
    part = cfg.partition
    if part.count > 1 and not part.merge:  # one share of the tensors (docs/scaling.md)
        share = partition.run_partition(cfg, resolve_output_dir(cfg))
        tracker.summary(share)
        return share
    summary = (partition.merge if part.merge else analyse)(cfg, resolve_output_dir(cfg))
    flat = {"median_r2": summary.get("median"), "mean_r2": summary.get("mean"), "n_weights": summary.get("n_weights"),
            "n_defined": summary.get("n_defined")}
    flat.update({f"frac_above_{k}": v for k, v in (summary.get("frac_above") or {}).items()})
    if summary.get("lowrank") and summary["lowrank"].get("rank1_ev"):
        flat["rank1_ev_median"] = summary["lowrank"]["rank1_ev"].get("median")
    if summary.get("logprob"):
        flat["logprob_median_r2"] = summary["logprob"].get("median")
    tracker.summary({k: v for k, v in flat.items() if v is not None})
    for name, path in summary["figures"].items():
        tracker.figure(name, path)
    return summary
