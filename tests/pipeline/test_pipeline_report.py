from omegaconf import OmegaConf

from rlvr_linearity.pipeline.report import verdict, write_report

RESULTS = {
    "benchmark": "arithmetic",
    "base": {"step": 0, "accuracy": 0.30},
    "rlvr": [{"step": 5, "accuracy": 0.38}, {"step": 10, "accuracy": 0.45}, {"step": 20, "accuracy": 0.50}],
    "relex": [{"history": 5, "target": 10, "accuracy": 0.44}, {"history": 5, "target": 20, "accuracy": 0.47},
              {"history": 5, "target": 40, "accuracy": 0.52}],
    "weight_extrapolation": [{"base_step": 0, "second_step": 5, "target": 20, "accuracy": 0.30}],
    "logits_extrapolation": [],
    "linearity": {"median_r2": 0.91, "frac_above_0.7": 0.8, "mean_r2": 0.85},
    "timings": {"train": 12.0},
}


def test_verdict_states_gains_and_shortfalls_from_numbers():
    lines = verdict(RESULTS)
    assert any("from 0.300 (base) to 0.500" in line and "+20.0 points" in line for line in lines)
    relex = [line for line in lines if line.startswith("RELEX falls short")]
    assert relex and "-2.0 points" in relex[0]  # (0.44-0.45 + 0.47-0.50)/2
    assert "observing steps ≤ 5 → step 10" in relex[0]
    assert any(line.startswith("Weight extrapolation falls short") for line in lines)
    assert any("beyond the trained run: best 0.520 at step 40, above" in line for line in lines)


def test_report_has_tables_and_figures(tmp_path):
    cfg = OmegaConf.create({"sampling": {"n": 1, "temperature": 0.0}, "experiment_name": None})
    path = write_report(cfg, tmp_path, RESULTS)
    text = path.read_text()
    assert "| 20 | 0.500 |" in text and "## RELEX" in text and "## Weight extrapolation" in text
    assert (tmp_path / "figures" / "accuracy_vs_step.png").stat().st_size > 1000
    assert "figures/accuracy_vs_step.png" in text
