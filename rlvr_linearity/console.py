"""What a command prints on the terminal: quiet by default, a results table at the end.

Quiet (`verbose=false`): Hugging Face progress bars (loading and writing weights, datasets) and
library INFO logs are off, the console log handler shows warnings only (the run's log file keeps
everything), and TRL's per-step metric dicts are not printed (they are in train_metrics.jsonl
and W&B). One progress bar per long stage (training, evaluation, R²) stays.
"""

from __future__ import annotations

import logging
import shutil
import sys

from rlvr_linearity.evaluate.metrics import powers_of_two


def quiet(verbose: bool) -> None:
    """Turn library chatter off for this process unless `verbose`."""
    if verbose:
        return
    import huggingface_hub.utils

    huggingface_hub.utils.disable_progress_bars()
    # transformers reads the hub's switch once, at import; a later call needs its own switch.
    if "transformers" in sys.modules:
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
    for name in ("transformers", "trl", "datasets", "accelerate", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # Hydra's console handler; its file handler keeps INFO
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def quiet_trainer(trainer) -> None:
    """Keep a HF Trainer's progress bar but not the metrics dict it prints at every logging step."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())


def _ci(metrics: dict, key: str = "accuracy_ci95") -> str:
    ci = metrics.get(key)
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def _print_table(title: str, columns: list[str], rows: list[list[str]], file=None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.MARKDOWN, title_justify="left", pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    width = max(shutil.get_terminal_size((120, 24)).columns, 100)
    Console(file=file or sys.stdout, width=width, highlight=False, color_system=None).print(table)


def evaluation_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """metrics.json as rows: benchmark, problems, samples, accuracy, its 95% CI, pass@k at 1, 2, 4… n."""
    benches = {b: m for b, m in metrics.items() if isinstance(m, dict) and "pass@k" in m}
    ks = sorted({k for m in benches.values() for k in powers_of_two(max(map(int, m["pass@k"]), default=1))})
    columns = ["benchmark", "problems", "samples", "accuracy", "95% CI"] + [f"pass@{k}" for k in ks]
    rows = []
    for b, m in benches.items():
        shown = set(powers_of_two(max(map(int, m["pass@k"]), default=1)))
        rows.append([b, str(m["n_problems"]), str(m["n_samples"]), f"{m['accuracy']:.3f}", _ci(m)]
                    + [f"{m['pass@k'][str(k)]:.3f}" if k in shown else "–" for k in ks])
    return columns, rows


def print_evaluation(metrics: dict, title: str = "Results", file=None) -> None:
    columns, rows = evaluation_rows(metrics)
    if rows:
        _print_table(title, columns, rows, file)


def pipeline_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """results.json as rows: the base, the trained checkpoints that predictions are compared with
    (and the last), then every prediction with its paired difference from the trained checkpoint."""
    trained = {r["step"]: r for r in results.get("rlvr", []) if r.get("accuracy") is not None}
    if (results.get("base") or {}).get("accuracy") is not None:
        trained.setdefault(0, results["base"])
    preds = [(name, r) for name, key in (("RELEX", "relex"), ("weight", "weight_extrapolation"),
                                         ("logits", "logits_extrapolation"))
             for r in results.get(key) or [] if r.get("accuracy") is not None]
    shown = sorted({0, *([max(trained)] if trained else []), *(r["target"] for _, r in preds)} & set(trained))
    columns = ["model", "step", "accuracy", "95% CI", "− trained", "diff 95% CI", "p (paired)"]
    rows = [["base" if s == 0 else "trained", str(s), f"{trained[s]['accuracy']:.3f}", _ci(trained[s]),
             "", "", ""] for s in shown]
    for name, r in preds:
        src = f"≤{r['history']}" if "history" in r else f"{r['base_step']}→{r['second_step']}"
        vs = r.get("vs_trained") or {}
        rows.append([f"{name} {src}", str(r["target"]), f"{r['accuracy']:.3f}", _ci(r),
                     f"{vs['diff']:+.3f}" if vs else "–", _ci(vs, "diff_ci95") if vs else "–",
                     (f"{vs['p_value']:.3f}" if vs["p_value"] >= 0.001 else "<0.001") if vs else "–"])
    return columns, rows


def print_pipeline(results: dict, file=None) -> None:
    columns, rows = pipeline_rows(results)
    if rows:
        _print_table(f"Results on {results.get('benchmark')} (− trained: paired difference from the trained "
                     "checkpoint at that step)", columns, rows, file)
