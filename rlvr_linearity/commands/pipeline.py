"""`rlvr pipeline`: an experiment chaining the commands (experiment=demo, paper runs)."""

from __future__ import annotations

from rlvr_linearity.console import print_pipeline
from rlvr_linearity.paths import resolve_output_dir
from rlvr_linearity.pipeline.app import run_pipeline


def run(cfg, tracker):
    out = resolve_output_dir(cfg)
    results = run_pipeline(cfg, out, tracker)
    if not cfg.pipeline.dry_run:
        if "rlvr" in results:  # the standard chain (re-grounding writes its own tables)
            print_pipeline(results)
        print(f"rlvr pipeline: report at {out / 'report.md'}")
    return results
