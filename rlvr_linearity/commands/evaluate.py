"""`rlvr evaluate`: benchmark evaluation of a model, model pair or responses file."""

from __future__ import annotations

from pathlib import Path

from omegaconf import open_dict

from rlvr_linearity.console import print_evaluation
from rlvr_linearity.evaluate.app import models_in, evaluate
from rlvr_linearity.io import write_json_atomic
from rlvr_linearity.paths import resolve_output_dir


def run(cfg, tracker):
    out = resolve_output_dir(cfg)
    models_dir = cfg.evaluate.models_dir
    if not models_dir:
        metrics = evaluate(cfg, out)
        tracker.summary({f"{b}/{k}": v for b, m in metrics.items() for k, v in m.items() if not isinstance(v, (dict, list))})
        print_evaluation(metrics)
        return metrics
    results = {}
    for label, path in models_in(Path(models_dir)):
        sub = cfg.copy()
        with open_dict(sub):
            sub.evaluate.model = path
            sub.evaluate.step = None
        results[label] = evaluate(sub, out / label)
        tracker.log({f"{label}/{b}/accuracy": m["accuracy"] for b, m in results[label].items() if "accuracy" in m})
        print_evaluation(results[label], title=f"Results: {label}")
    write_json_atomic(out / "evaluate_models.json", results)
    return results
