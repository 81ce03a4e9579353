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
               "relex_ablations.png", "relex_run_explained_variance.png", "relex_run_coefficient.png",
               "relex_finding1_reconstruction.png", "relex_denoising.png", "relex_main_table.png"}),
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


def _tiny_run(root: Path) -> Path:
    """A run directory with a 4-step trajectory, results.json pointing at it, the fixture's
    weights_r2.json and a per-weight weights_r2.safetensors whose least linear weight is known."""
    import json
    import shutil

    import torch
    from safetensors.torch import save_file

    traj = root / "trajectory"
    for s in range(4):
        d = traj / f"checkpoint-{s}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        save_file({"w": torch.arange(6, dtype=torch.float32) + s * torch.tensor([1, 1, 1, 1, 1, -2.0])},
                  str(d / "model.safetensors"))
    (traj / "trajectory.json").write_text(json.dumps({"base": str(traj / "checkpoint-0"), "steps": [1, 2, 3]}))
    results = json.loads((FIX / "run_a" / "results.json").read_text())
    results["trajectory"] = str(traj)
    (root / "results.json").write_text(json.dumps(results))
    (root / "linearity").mkdir()
    shutil.copy(FIX / "run_a" / "linearity" / "weights_r2.json", root / "linearity" / "weights_r2.json")
    save_file({"w": torch.tensor([1.0, 0.99, 0.98, 0.97, 0.96, 0.2])}, str(root / "linearity" / "weights_r2.safetensors"))
    return root


def test_explore_notebook_loads_dataframes_and_plots_a_weight(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path / "mine")
    nb = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("RLVR_RESULTS", os.pathsep.join([str(run), str(FIX / "run_a"), str(FIX / "run_b")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "mine" in text and "run_a" in text  # both runs in the comparison
    assert "self_attn" in text and "median" in text  # the per-tensor queries
    last = nb.cells[-1].outputs  # the least linear weight of the per-weight file, read from the trajectory
    assert any("image/png" in o.get("data", {}) for o in last)
    assert "w[5] over steps 0..3: slope -2 per step" in "".join(o.get("text", "") for o in last)
