"""`rlvr extrapolate`: predicted checkpoints (relex, weight)."""

from __future__ import annotations

import logging

from rlvr_linearity.extrapolate import partition
from rlvr_linearity.extrapolate.app import extrapolate, result_rows
from rlvr_linearity.figures.extrapolation import extrapolation_figures
from rlvr_linearity.paths import resolve_output_dir

log = logging.getLogger(__name__)


def run(cfg, tracker):
    out = resolve_output_dir(cfg)
    part = cfg.partition
    res = (partition.merge if part.merge else extrapolate)(cfg, out)
    if part.count > 1 and not part.merge:  # one share of the tensors: the merge reports the whole
        tracker.summary({"method": res["method"], "partition": int(part.index), "count": int(part.count)})
        return res
    for name, path in extrapolation_figures(out / "figures", res).items():
        tracker.figure(name, path)
    rows = result_rows(res)
    tracker.table("extrapolation", rows)
    tracker.summary({"method": res["method"], "n_outputs": len(rows), "time_s": res["timings"]["run_s"]})
    for r in rows:
        log.info("wrote %s", r["path"])
    return res
