"""RELEX's Finding 1, denoising and main table: numbers against a computation done here, the main
table from two run directories (a sweep's jobs of one model merged), and the figures README
listing every catalogued figure with its command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_figures import assert_nontrivial_png

from rlvr_linearity.figures import relex
from rlvr_linearity.figures import relex_tables as rt
from rlvr_linearity.figures.catalogue import CATALOGUE
from rlvr_linearity.figures.regenerate import regenerate

BENCHES = ["math", "aime25", "amc23"]


def _row(acc: dict, **keys) -> dict:
    return {**keys, "accuracy": acc[BENCHES[0]], "metrics": {b: {"accuracy": v} for b, v in acc.items()}}


def _results(offset: float = 0.0, trajectory: str = "T") -> dict:
    """A pipeline results.json: base, RLVR steps 10..40, RELEX (h 10) to 40 and 80, reconstructions."""
    acc = {s: {b: round(0.2 + offset + 0.004 * s + 0.01 * i, 4) for i, b in enumerate(BENCHES)} for s in (0, 10, 20, 30, 40)}
    return {
        "benchmark": BENCHES[0], "benchmarks": BENCHES, "trajectory": trajectory,
        "base": _row(acc[0], step=0), "rlvr": [_row(acc[s], step=s) for s in (10, 20, 30, 40)],
        "relex": [_row({b: v + 0.01 for b, v in acc[40].items()}, history=10, target=40, rank=1, fit="linear",
                       weight_error={"rel_l2": 0.3}, vs_trained={"p_value": 0.5}),
                  _row({b: v + 0.03 for b, v in acc[40].items()}, history=10, target=80, rank=1, fit="linear")],
        "reconstruction": [_row({b: v - 0.002 * r for b, v in acc[s].items()}, step=s, rank=r, history=None,
                                weight_error={"rel_l2": 0.4 / r, "cosine": 0.9})
                           for r in (1, 2) for s in (20, 40)],
    }


def test_denoising_numbers_match_a_direct_computation(tmp_path):
    res = _results()
    data = rt.denoising(res)
    trained = {r["step"]: r["metrics"] for r in res["rlvr"]}
    expect = [(r["step"], b, r["metrics"][b]["accuracy"] - trained[r["step"]][b]["accuracy"], r["weight_error"]["rel_l2"])
              for r in res["reconstruction"] for b in BENCHES]
    expect += [(40, b, 0.01, 0.3) for b in BENCHES]  # RELEX h 10 -> 40; its target 80 was not trained
    got = [(r["step"], b, r["change"][b], r["removed"]) for r in data["rows"] for b in BENCHES]
    assert [(s, b) for s, b, _, _ in got] == [(s, b) for s, b, _, _ in expect]
    assert [c for _, _, c, _ in got] == pytest.approx([c for _, _, c, _ in expect])
    assert [x for _, _, _, x in got] == [x for _, _, _, x in expect]
    by = {s["method"]: s for s in data["summary"]}
    r1 = by["rank-1 reconstruction (all steps)"]["benchmarks"]["amc23"]
    assert r1["mean_change"] == pytest.approx(-0.002) and r1["n_not_worse"] == 0 and r1["n"] == 2
    assert by["rank-2 reconstruction (all steps)"]["mean_removed"] == pytest.approx(0.2)
    assert by["RELEX (T_cut 10, rank 1)"]["benchmarks"]["math"]["n_not_worse"] == 1
    made = relex.denoising_outputs(res, tmp_path / "relex_denoising.png")
    assert_nontrivial_png(made["png"])
    assert json.loads(made["json"].read_text())["rows"][0]["p_value"] is None
    assert "0.280 → 0.276 (-0.004)" in made["md"].read_text()  # math at step 20, rank 2: 0.2 + 0.08, less 0.004


def test_finding1_keeps_the_share_of_the_rl_gain(tmp_path):
    res = _results()
    data = rt.finding1(res)
    base = res["base"]["metrics"]["math"]["accuracy"]
    trained = {r["step"]: r["accuracy"] for r in res["rlvr"]}
    for s in data["series"]:
        pts = [r for r in res["reconstruction"] if r["rank"] == s["rank"]]
        want = sum(r["accuracy"] - base for r in pts) / sum(trained[r["step"]] - base for r in pts)
        assert s["gain_kept"]["math"] == pytest.approx(want)
    assert [s["rank"] for s in data["series"]] == [1, 2]
    assert_nontrivial_png(relex.plot_finding1(res, tmp_path / "f1.png"))
    assert relex.plot_finding1({"rlvr": []}, tmp_path / "none.png") is None


def test_main_table_from_two_run_directories(tmp_path):
    for name, offset in (("qwen_small", 0.0), ("qwen_large", 0.1)):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_results(offset, trajectory=f"/runs/{name}/trajectory")))
    sweep = tmp_path / "qwen_large" / "sweep_h20"  # another job of the same model: merged into its rows
    sweep.mkdir()
    extra = _results(0.1, trajectory="/runs/qwen_large/trajectory")
    extra["relex"] = [{**r, "history": 20} for r in extra["relex"]]
    (sweep / "results.json").write_text(json.dumps(extra))
    index = regenerate([tmp_path / "qwen_small", tmp_path / "qwen_large"], tmp_path / "out", pdf=False)
    made = next(m for m in index["made"] if m["id"] == "relex_main_table")
    assert len(made["inputs"]) == 3
    table = json.loads((tmp_path / "out" / "figures" / "relex_main_table.json").read_text())
    assert table["benchmarks"] == BENCHES
    rows = [(r["model"], r["method"], r["rl_steps"]) for r in table["rows"]]
    assert rows == [("qwen_small", "Base", 0), ("qwen_small", "RLVR (step 40)", 40),
                    ("qwen_small", "RELEX (T_cut 10 → 40)", 10), ("qwen_small", "RELEX (T_cut 10 → 80)", 10),
                    ("qwen_large", "Base", 0), ("qwen_large", "RLVR (step 40)", 40),
                    ("qwen_large", "RELEX (T_cut 10 → 40)", 10), ("qwen_large", "RELEX (T_cut 10 → 80)", 10),
                    ("qwen_large", "RELEX (T_cut 20 → 40)", 20), ("qwen_large", "RELEX (T_cut 20 → 80)", 20)]
    large_rl = table["rows"][5]
    assert large_rl["scores"] == {"math": 0.46, "aime25": 0.47, "amc23": 0.48}
    assert large_rl["average"] == pytest.approx(0.47)
    md = (tmp_path / "out" / "figures" / "relex_main_table.md").read_text()
    assert "| model | method | RL steps | math | aime25 | amc23 | Avg. |" in md
    assert "| qwen_large | RLVR (step 40) | 40 | 0.460 | 0.470 | 0.480 | 0.470 |" in md
    assert_nontrivial_png(tmp_path / "out" / "figures" / "relex_main_table.png")


def test_figures_readme_lists_every_catalogued_figure_with_a_command():
    """Every figure and table of both papers has a row in rlvr_linearity/figures/README.md, with the
    command that makes it; none is marked missing."""
    text = (REPO_ROOT / "rlvr_linearity" / "figures" / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    for fig in CATALOGUE:
        row = next((line for line in rows if re.search(rf"`{re.escape(fig.id)}[`._]", line)), None)
        assert row is not None, f"{fig.id} has no row in the figures README"
        assert "rlvr " in row, f"{fig.id}: its README row names no command"
    assert "missing" not in "\n".join(rows).lower()
    for paper, figs in (("LIN", ("Fig. 2", "Fig. 3", "Fig. 4", "Fig. 5", "Fig. 6", "Table 1", "Table 2")),
                        ("RELEX", ("Finding 1", "Finding 2", "denoising", "main table"))):
        for f in figs:
            assert any(paper in line and f.lower() in line.lower() for line in rows), f"{paper} {f}"
    assert Path(REPO_ROOT / "rlvr_linearity" / "figures" / "README.md").exists()
