"""Writes notebooks/lin.ipynb and notebooks/relex.ipynb (no outputs: what git stores).

    .venv/bin/python notebooks/make_notebooks.py
Both draw through the same functions as `rlvr figures` (rlvr_linearity.figures).
"""

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

LIN = [
    new_markdown_cell("# LIN: linear dynamics of RLVR training (arXiv 2601.04537)\n\n"
                      "Loads a results directory (`RLVR_RESULTS`, default the demo's `outputs/demo`) and draws the "
                      "LIN figures and tables that its files allow, through `rlvr_linearity.figures` "
                      "(the same functions as `rlvr figures`)."),
    new_code_cell(SETUP),
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
    new_markdown_cell("## Which paper figures these results cannot make yet"),
    new_code_cell('''index = regenerate([RESULTS], OUT / "all")
display(Markdown("\\n".join(f"- **{m['title']}**: needs {m['needs']}; `{m['command']}`" for m in index["missing"] if m["paper"] == "LIN") or "nothing missing"))'''),
]

RELEX = [
    new_markdown_cell("# RELEX: extrapolating RLVR with rank-1 trajectories (arXiv 2605.21468)\n\n"
                      "Loads a results directory (`RLVR_RESULTS`, default the demo's `outputs/demo`) and draws the "
                      "RELEX figures that its files allow, through `rlvr_linearity.figures`."),
    new_code_cell(SETUP),
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
    new_markdown_cell("## Which paper figures these results cannot make yet"),
    new_code_cell('''index = regenerate([RESULTS], OUT / "all")
display(Markdown("\\n".join(f"- **{m['title']}**: needs {m['needs']}; `{m['command']}`" for m in index["missing"] if m["paper"] == "RELEX") or "nothing missing"))'''),
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
