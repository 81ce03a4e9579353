"""An experiment's stages, each cached by its config and inputs.

The standard chain (train → linearity → extrapolation → evaluation → report) is
`pipeline.chain`; an experiment with a `regrounding` stage runs LIN's periodic re-grounding
(`pipeline.regrounding`) instead.
"""

from __future__ import annotations

from pathlib import Path

from rlvr_linearity.pipeline.chain import run_chain
from rlvr_linearity.pipeline.regrounding import run_regrounding


def run_pipeline(cfg, out_dir: Path, tracker=None) -> dict:
    """Run (or, with `pipeline.dry_run`, list) the experiment's stages into `out_dir`."""
    if "regrounding" in cfg.pipeline.stages:  # LIN's periodic re-grounding (experiment=regrounding)
        return run_regrounding(cfg, out_dir, tracker)
    return run_chain(cfg, out_dir, tracker)
