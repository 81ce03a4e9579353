"""The terminal's results tables and the quiet switch."""

import io
import logging

from rlvr_linearity.console import evaluation_rows, pipeline_rows, print_evaluation, quiet


def test_evaluation_table_shows_intervals_and_pass_at_powers_of_two():
    metrics = {"math500": {"n_problems": 2, "n_samples": 12, "accuracy": 0.5, "accuracy_ci95": [0.25, 0.75],
                           "pass@k": {str(k): k / 6 for k in range(1, 7)}, "avg@n": 0.5},
               "macro_average": {"n_benchmarks": 1, "accuracy": 0.5, "pass@1": 0.1}}
    columns, rows = evaluation_rows(metrics)
    assert columns == ["benchmark", "problems", "samples", "accuracy", "95% CI", "pass@1", "pass@2", "pass@4", "pass@6"]
    assert rows == [["math500", "2", "12", "0.500", "[0.250, 0.750]", "0.167", "0.333", "0.667", "1.000"]]
    out = io.StringIO()
    print_evaluation(metrics, file=out)
    assert "|math500" in out.getvalue() and "[0.250, 0.750]" in out.getvalue()


def test_pipeline_table_pairs_predictions_with_the_trained_step():
    results = {"benchmark": "arithmetic", "base": {"step": 0, "accuracy": 0.3, "accuracy_ci95": [0.2, 0.4]},
               "rlvr": [{"step": 10, "accuracy": 0.5}, {"step": 20, "accuracy": 0.6}],
               "relex": [{"history": 5, "target": 10, "accuracy": 0.45, "accuracy_ci95": [0.35, 0.55],
                          "vs_trained": {"diff": -0.05, "diff_ci95": [-0.1, 0.0], "p_value": 0.0004}}],
               "weight_extrapolation": [], "logits_extrapolation": []}
    _, rows = pipeline_rows(results)
    assert [r[:2] for r in rows] == [["base", "0"], ["trained", "10"], ["trained", "20"], ["RELEX ≤5", "10"]]
    assert rows[-1][4:] == ["-0.050", "[-0.100, 0.000]", "<0.001"]


def test_quiet_leaves_warnings_on_the_console_and_verbose_changes_nothing():
    root = logging.getLogger()
    console, file = logging.StreamHandler(io.StringIO()), logging.FileHandler("/dev/null")
    for h in (console, file):
        h.setLevel(logging.INFO)
        root.addHandler(h)
    try:
        quiet(True)
        assert console.level == logging.INFO
        quiet(False)
        assert console.level == logging.WARNING and file.level == logging.INFO
        import huggingface_hub.utils

        assert huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        for h in (console, file):
            root.removeHandler(h)
        file.close()
        huggingface_hub.utils.enable_progress_bars()
