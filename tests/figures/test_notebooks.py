"""The paper notebooks execute on fixture results (nbclient) and draw through the same
functions as `rlvr figures`; git stores them without outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from conftest import REPO_ROOT

REPO = REPO_ROOT
FIX = REPO / "tests" / "fixtures" / "figures"


@pytest.mark.parametrize("name,expected", [
    ("lin", {"lin_weight_r2_histogram.png", "lin_weight_r2_heatmap.png", "lin_token_trajectories.png",
             "lin_robustness.png", "lin_weight_extrapolation.png", "lin_table1.png", "lin_table2.png",
             "lin_fig6_regrounding.png"}),
    ("relex", {"relex_explained_variance.png", "relex_rank1_coefficient.png", "relex_accuracy_vs_target.png",
               "relex_ablations.png", "relex_run_explained_variance.png", "relex_run_coefficient.png"}),
])
def test_notebook_executes_on_fixture_results(tmp_path, monkeypatch, name, expected):
    path = REPO / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("RLVR_RESULTS", str(FIX))
    monkeypatch.setenv("RLVR_FIGURES_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the venv's python first on PATH: the "python3" kernel spec runs `python`
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    assert expected <= {p.name for p in tmp_path.glob("*.png")}
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= len(expected)
