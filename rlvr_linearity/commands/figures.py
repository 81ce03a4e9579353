"""`rlvr figures`: regenerate the paper figures and tables from results directories."""

from __future__ import annotations

from omegaconf import OmegaConf

from rlvr_linearity.figures.catalogue import print_summary
from rlvr_linearity.figures.regenerate import regenerate
from rlvr_linearity.paths import resolve_output_dir


def run(cfg, tracker):
    fc = cfg.figures
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
    index = regenerate(plain(fc.inputs), resolve_output_dir(cfg), pdf=bool(fc.pdf), reference=bool(fc.reference),
                       robustness=plain(fc.robustness), table2_budgets=plain(fc.table2_budgets),
                       fig6_thresholds=plain(fc.fig6_thresholds), fig6_benchmark=fc.fig6_benchmark,
                       coefficient_tensor=fc.coefficient_tensor)
    print_summary(index)
    tracker.summary({"figures_made": len(index["made"]), "figures_missing": len(index["missing"])})
    for m in index["made"]:
        png = next((o for o in m["outputs"] if o.endswith(".png")), None)
        if png:
            tracker.figure(m["id"] + (f"/{m['label']}" if m.get("label") else ""), resolve_output_dir(cfg) / png)
    tracker.table("figures_missing", index["missing"])
    return index
