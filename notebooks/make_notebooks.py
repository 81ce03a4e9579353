"""Writes notebooks/lin.ipynb, notebooks/relex.ipynb and notebooks/explore.ipynb (no outputs:
what git stores).

    .venv/bin/python notebooks/make_notebooks.py
The paper notebooks draw through the same functions as `rlvr figures` (rlvr_linearity.figures);
explore.ipynb loads results into pandas DataFrames for questions the figures do not answer.
"""

import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = '''import os
from pathlib import Path

from IPython.display import Image, Markdown, display

from rlvr_linearity.figures import extrapolation as ext, linearity as lin, paper, tables
from rlvr_linearity.figures.discover import discover, load_json, merge_results, robustness_settings
from rlvr_linearity.figures.regenerate import regenerate

# The repository root whether the notebook runs from notebooks/ or from the root.
ROOT = Path.cwd() if (Path.cwd() / "rlvr_linearity").is_dir() else Path.cwd().parent
RESULTS = Path(os.environ.get("RLVR_RESULTS", ROOT / "outputs" / "demo"))  # a results directory
OUT = Path(os.environ.get("RLVR_FIGURES_OUT", ROOT / "outputs" / "notebook_figures"))
if not RESULTS.is_dir():
    raise FileNotFoundError(f"{RESULTS}: no results here; run `make demo` or set RLVR_RESULTS to a results directory")
files = discover([RESULTS])
results = merge_results([(p, load_json(p)) for p in files["results"]])  # [(paths, merged results.json)]
print(RESULTS, {kind: len(paths) for kind, paths in files.items() if paths})


def show(path):
    """Display a figure the functions wrote (they return None when the input holds nothing)."""
    if path is not None:
        display(Image(filename=str(path)))'''

def opening(title: str, drawn: str, aside: str = "") -> list:
    """The opening cells of a paper notebook: what it draws from which results, and SETUP."""
    return [
        new_markdown_cell(f"# {title}\n\nLoads a results directory (`RLVR_RESULTS`, default the demo's "
                          f"`outputs/demo`) and draws the {drawn} that its files allow, through "
                          f"`rlvr_linearity.figures`{aside}."),
        new_code_cell(SETUP),
    ]


def missing_figures(paper: str) -> list:
    """The closing cells: the paper's figures and tables these results cannot make yet."""
    return [
        new_markdown_cell("## Which paper figures these results cannot make yet"),
        new_code_cell('''index = regenerate([RESULTS], OUT / "all")
display(Markdown("\\n".join(f"- **{m['title']}**: needs {m['needs']}; `{m['command']}`" for m in index["missing"] if m["paper"] == "%s") or "nothing missing"))''' % paper),
    ]


LIN = [
    *opening("LIN: linear dynamics of RLVR training (arXiv 2601.04537)", "LIN figures and tables",
             " (the same functions as `rlvr figures`)"),
    new_markdown_cell("## Weight linearity: R² histogram, module × layer heatmap, example trajectories"),
    new_code_cell('''for p in files["weights"]:
    res = load_json(p)
    print(p, f"median R² {res['median']:.3f}, {100 * res['frac_above']['0.7']:.1f}% of weights above 0.7")
    show(lin.plot_weight_r2_histogram(res, OUT / "lin_weight_r2_histogram.png"))
    show(lin.plot_r2_heatmap(res, OUT / "lin_weight_r2_heatmap.png"))
    show(lin.plot_weight_examples(res, OUT / "lin_weight_trajectories.png"))'''),
    new_markdown_cell("## Token log-prob linearity"),
    new_code_cell('''for p in files["logprobs"]:
    res = load_json(p)
    show(lin.plot_logprob_histogram(res, OUT / "lin_logprob_r2_histogram.png"))
    show(lin.plot_token_examples(res, OUT / "lin_token_trajectories.png"))'''),
    new_markdown_cell("## Fig. 2: robustness across settings (needs several linearity runs or `robustness.json`)"),
    new_code_cell('''settings, _ = robustness_settings([], files, [RESULTS])
show(paper.plot_robustness(settings, OUT / "lin_robustness.png") if settings else None)'''),
    new_markdown_cell("## Fig. 5: weight extrapolation and Table 1: logits extrapolation"),
    new_code_cell('''rows = [r for p in files["logits"] for r in load_json(p)["rows"]]
for _, res in results:
    show(paper.plot_weight_extrapolation(res, OUT / "lin_weight_extrapolation.png"))
    rows = rows or tables.logits_rows_from_results(res)
if rows:
    made = paper.table1(rows, OUT)
    display(Markdown(made["md"].read_text()))
    show(made["png"])'''),
    new_markdown_cell("## Table 2 and Fig. 6: periodic re-grounding (`regrounding.json`)"),
    new_code_cell('''for p in files["regrounding"]:
    made = paper.regrounding_figures(load_json(p), OUT)
    for key in ("lin_table2_md", "lin_fig6_md"):
        if key in made:
            display(Markdown(made[key].read_text()))
    show(made.get("lin_table2"))
    show(made.get("lin_fig6"))'''),
    *missing_figures("LIN"),
]

RELEX = [
    *opening("RELEX: extrapolating RLVR with rank-1 trajectories (arXiv 2605.21468)", "RELEX figures"),
    new_markdown_cell("## Finding 1: rank-1 explained variance per tensor; Finding 2: the rank-1 coefficient is linear in the step"),
    new_code_cell('''for p in files["lowrank"]:
    res = load_json(p)
    print(p, "whole-model explained variance:", res.get("summary", {}).get("model_ev"))
    show(lin.plot_explained_variance(res, OUT / "relex_explained_variance.png"))
    if (res.get("coefficients") or {}).get("model"):
        show(lin.plot_rank1_coefficients(res, OUT / "relex_rank1_coefficient.png"))'''),
    new_markdown_cell("## The same findings from RELEX runs (`rlvr extrapolate`'s extrapolation.json)"),
    new_code_cell('''for p in files["extrapolation"]:
    res = load_json(p)
    if res.get("method") == "relex":
        show(ext.plot_explained_variance_histogram(res, OUT / "relex_run_explained_variance.png"))
        show(ext.plot_relex_coefficient(res, OUT / "relex_run_coefficient.png"))'''),
    new_markdown_cell("## Accuracy vs target step per T_cut, and rank / fit ablations"),
    new_code_cell('''for _, res in results:
    show(paper.plot_relex_accuracy(res, OUT / "relex_accuracy_vs_target.png"))
    show(paper.plot_relex_ablations(res, OUT / "relex_ablations.png"))'''),
    new_markdown_cell("## Finding 1 (rank-r reconstructions vs the trained checkpoints), denoising, and the main table"),
    new_code_cell('''from rlvr_linearity.figures import relex as rlx
from rlvr_linearity.figures.discover import run_label

for _, res in results:
    show(rlx.plot_finding1(res, OUT / "relex_finding1_reconstruction.png"))
    made = rlx.denoising_outputs(res, OUT / "relex_denoising.png")
    if made:
        show(made["png"])
        display(Markdown(made["md"].read_text()))
models = merge_results([(p, load_json(p)) for p in files["results"]], key=lambda p, r: r.get("trajectory") or str(p))
made = rlx.main_table_outputs([(run_label(paths[0], [RESULTS]), res) for paths, res in models], OUT / "relex_main_table.png")
if made:
    show(made["png"])
    display(Markdown(made["md"].read_text()))'''),
    *missing_figures("RELEX"),
]


EXPLORE = [
    new_markdown_cell("# Exploring results\n\n"
                      "Loads every `results.json`, `weights_r2.json` and `weights_r2.safetensors` under the directories "
                      "in `RLVR_RESULTS` (several separated by `%s`; default the demo's `outputs/demo`) into pandas "
                      "DataFrames: compare runs, query per-tensor and per-weight R², plot one weight's trajectory." % os.pathsep),
    new_code_cell('''%matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from rlvr_linearity.figures.discover import discover, load_json

ROOT = Path.cwd() if (Path.cwd() / "rlvr_linearity").is_dir() else Path.cwd().parent
RUNS = [Path(p) for p in os.environ.get("RLVR_RESULTS", str(ROOT / "outputs" / "demo")).split(os.pathsep)]
for run in RUNS:
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no results here; run `make demo` or set RLVR_RESULTS")
files = discover(RUNS)


def run_of(path):
    """The run directory a file belongs to (the RLVR_RESULTS entry holding it, then its subfolder)."""
    path = Path(path).resolve()
    for run in RUNS:
        if path.is_relative_to(run.resolve()):
            rel = path.relative_to(run.resolve()).parts
            return run.name + ("/" + rel[0] if len(rel) > 2 and rel[0] not in ("linearity", "stages") else "")
    return path.parent.name
print({kind: len(paths) for kind, paths in files.items() if paths})'''),
    new_markdown_cell("## Every evaluated model of every run: trained, RELEX, weight and logits extrapolation"),
    new_code_cell('''rows = []
for p in files["results"]:
    res = load_json(p)
    for kind, key in (("trained", "rlvr"), ("relex", "relex"), ("weight", "weight_extrapolation"),
                      ("logits", "logits_extrapolation")):
        for r in res.get(key) or []:
            rows.append({"run": run_of(p), "benchmark": res.get("benchmark"), "kind": kind, **r})
    if (res.get("base") or {}).get("accuracy") is not None:
        rows.append({"run": run_of(p), "benchmark": res.get("benchmark"), "kind": "base", **res["base"]})
models = pd.json_normalize(rows)
models["step"] = models["step"].fillna(models.get("target"))
models.head()'''),
    new_markdown_cell("Compare runs: accuracy of each kind of model at each step, one column per run."),
    new_code_cell('''models.pivot_table(index=["kind", "step"], columns="run", values="accuracy", aggfunc="mean").round(3)'''),
    new_markdown_cell("## Per-tensor R² (`weights_r2.json`): query by module and layer"),
    new_code_cell('''tensors = pd.concat([pd.DataFrame(load_json(p)["per_tensor"]).assign(run=run_of(p)) for p in files["weights"]],
                    ignore_index=True)
print(len(tensors), "tensors")
tensors.sort_values("median").head(10)[["run", "name", "module", "layer", "numel", "median", "frac_above_0.7"]]'''),
    new_code_cell('''# median R² by module and layer (rows: module, columns: layer; NaN: no such tensor)
tensors.pivot_table(index="module", columns="layer", values="median", aggfunc="mean").round(3)'''),
    new_code_cell('''# the least linear attention tensors of layer 0, in any run
tensors.query("layer == 0 and module.str.startswith('self_attn')", engine="python").nsmallest(5, "median")[["run", "name", "median"]]'''),
    new_markdown_cell("## Per-weight R² (`weights_r2.safetensors`, written with `linearity.save_per_weight=true`)"),
    new_code_cell('''from safetensors.numpy import load_file

per_weight = {run_of(p): load_file(str(p)) for p in
              sorted({q for run in RUNS for q in run.rglob("weights_r2.safetensors")})}
summary = pd.DataFrame([{"run": run, "tensor": name, "numel": r2.size, "defined": int(np.isfinite(r2).sum()),
                         "q10": np.nanquantile(r2, 0.1) if np.isfinite(r2).any() else np.nan,
                         "median": np.nanmedian(r2) if np.isfinite(r2).any() else np.nan}
                        for run, tensors_r2 in per_weight.items() for name, r2 in tensors_r2.items()])
summary.head() if len(summary) else "no weights_r2.safetensors: run `rlvr linearity linearity.save_per_weight=true`"'''),
    new_markdown_cell("## One weight's trajectory, on demand\n\n"
                      "Set `TENSOR` and `INDEX` (a flat index into the tensor); by default the least linear weight of "
                      "the per-weight file, else the first example weight of `weights_r2.json`."),
    new_code_cell('''from rlvr_linearity.trajectory import open_trajectory

TENSOR, INDEX = None, None
if per_weight:
    run, tensors_r2 = next(iter(per_weight.items()))
    TENSOR = min(tensors_r2, key=lambda n: np.nanmin(tensors_r2[n]) if np.isfinite(tensors_r2[n]).any() else 1)
    INDEX = int(np.nanargmin(tensors_r2[TENSOR]))
trajectories = [Path(t) for p in files["results"] if (t := load_json(p).get("trajectory")) and Path(t).is_dir()]


def weight_trajectory(traj_dir, tensor, index):
    """(steps, values) of one weight across every checkpoint of a trajectory."""
    traj = open_trajectory(path=str(traj_dir))
    return traj.steps, [float(traj.model(s).read(tensor).flatten()[index]) for s in traj.steps]


if trajectories and TENSOR is not None:
    steps, values = weight_trajectory(trajectories[0], TENSOR, INDEX)
else:  # no trajectory on this machine: an example weight stored in weights_r2.json
    ex = load_json(files["weights"][0])["examples"][0]
    TENSOR, INDEX, steps, values = ex["tensor"], ex["index"], ex["steps"], ex["values"]
slope, intercept = np.polyfit(steps, values, 1)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(steps, values, "o", ms=3, label="checkpoint")
ax.plot(steps, intercept + slope * np.asarray(steps), "--", label="least-squares line")
ax.set_xlabel("step"); ax.set_ylabel("weight value"); ax.set_title(f"{TENSOR}[{INDEX}]", fontsize=9); ax.legend()
print(f"{TENSOR}[{INDEX}] over steps {steps[0]}..{steps[-1]}: slope {slope:.3g} per step")
display(fig)
plt.close(fig)'''),
]


def write(cells, path: Path):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                             "language_info": {"name": "python"}})
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb))


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    write(LIN, here / "lin.ipynb")
    write(RELEX, here / "relex.ipynb")
    write(EXPLORE, here / "explore.ipynb")
