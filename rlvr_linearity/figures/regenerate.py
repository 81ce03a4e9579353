"""`rlvr figures`: find results files under directories, draw every paper figure and table
their contents allow, and write an index of what was made from which files and what is
missing (with the command that would produce its inputs).

Inputs are found and loaded by `figures.discover`, the figures listed in `figures.catalogue`;
linearity figures are drawn by `figures.linearity`, pipeline-style plots by `figures.pipeline`,
paper-only figures by `figures.paper` (their tables' numbers by `figures.tables`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.figures import extrapolation as ext
from rlvr_linearity.figures import linearity as lin
from rlvr_linearity.figures import lr_sweep
from rlvr_linearity.figures import mechanism as mech
from rlvr_linearity.figures import paper
from rlvr_linearity.figures import relex
from rlvr_linearity.figures.catalogue import BY_ID, CATALOGUE, render_readme
from rlvr_linearity.figures.discover import (check_regrounding, discover, load_json, logits_rows, merge_results,
                                             results_from_evaluations, robustness_settings, run_label)
from rlvr_linearity.figures.style import also_pdf
from rlvr_linearity.figures.tables import logits_rows_from_results
from rlvr_linearity.io import write_json_atomic, write_text_atomic


class Index:
    """What was made from which files; entries keyed by paper-figure id (+ run label)."""

    def __init__(self, out_dir: Path, pdf: bool):
        self.out_dir, self.pdf, self.made = out_dir, pdf, []

    def add(self, fig_id: str, result, inputs: list[Path], label: str | None = None):
        if not result:
            return
        outs = sorted(result.values() if isinstance(result, dict) else [result], key=lambda p: Path(p).suffix != ".png")
        files = []
        for p in outs:
            p = Path(p)
            files.append(p)
            if p.suffix == ".png" and self.pdf and p.with_suffix(".pdf").exists():
                files.append(p.with_suffix(".pdf"))
        spec = BY_ID[fig_id]
        self.made.append({"id": fig_id, "paper": spec.paper, "title": spec.title, "label": label,
                          "outputs": [str(f.relative_to(self.out_dir.parent)) if f.is_relative_to(self.out_dir.parent) else str(f)
                                      for f in files],
                          "inputs": [str(p) for p in inputs]})


def _draw(index: Index, fig_id: str, fn: Callable, data, inputs: list[Path], label: str | None, multi: bool, **kw):
    name = f"{fig_id}__{_slug(label)}" if multi and label else fig_id
    index.add(fig_id, fn(data, index.out_dir / f"{name}.png", **kw), inputs, label)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text)).strip("_") or "run"


def regenerate(inputs, out_dir, *, pdf: bool = True, reference: bool = True, robustness=None,
               table2_budgets=None, fig6_thresholds=None, fig6_benchmark=None, coefficient_tensor=None) -> dict:
    """Draw every paper figure/table the results under `inputs` allow into `out_dir/figures/`;
    write `index.json` and `README.md` there; return the index."""
    inputs = [str(i) for i in inputs or []]
    if not inputs:
        raise ConfigError("figures.inputs is empty: give results directories, e.g. figures.inputs=[outputs/demo]")
    fig_dir = Path(out_dir) / "figures"
    files = discover(inputs)
    index = Index(fig_dir, pdf)
    with also_pdf(pdf):
        _linearity_figures(index, files, inputs, coefficient_tensor)
        settings, used = robustness_settings(robustness, files, inputs)
        if settings:
            index.add("lin_robustness", paper.plot_robustness(settings, fig_dir / "lin_robustness.png", reference=reference),
                      used)
        _mechanism_figures(index, files, inputs)
        groups = _results_figures(index, files, inputs, reference)
        _table1(index, files, groups, reference)
        _lr_sweep(index, files, inputs)
        for p in files["regrounding"][:1]:
            data = check_regrounding(load_json(p), p)
            made = paper.regrounding_figures(data, fig_dir, budgets=table2_budgets, thresholds=fig6_thresholds,
                                             benchmark=fig6_benchmark, reference=reference)
            index.add("lin_table2", {k: v for k, v in made.items() if k.startswith("lin_table2")}, [p])
            index.add("lin_fig6", {k: v for k, v in made.items() if k.startswith("lin_fig6")}, [p])
    return _write_index(index, inputs, files)


def _linearity_figures(index: Index, files: dict[str, list[Path]], inputs, coefficient_tensor) -> None:
    """LIN's linearity figures and RELEX's findings, from `rlvr linearity` outputs and from RELEX
    runs' extrapolation.json; one figure per run when there are several."""
    relex_runs = [(p, d) for p in files["extrapolation"] if (d := load_json(p)) and d.get("method") == "relex"]
    n_coef = len(files["lowrank"]) + len(relex_runs)
    for kind, specs in (("weights", [("lin_weight_r2_histogram", lin.plot_weight_r2_histogram, {}),
                                     ("lin_weight_r2_heatmap", lin.plot_r2_heatmap, {}),
                                     ("lin_weight_trajectories", lin.plot_weight_examples, {})]),
                        ("logprobs", [("lin_logprob_r2_histogram", lin.plot_logprob_histogram, {}),
                                      ("lin_token_trajectories", lin.plot_token_examples, {})]),
                        ("lowrank", [("relex_rank1_coefficient", lin.plot_rank1_coefficients,
                                      {"tensor": coefficient_tensor})])):
        for path in files[kind]:
            data = load_json(path)
            for fig_id, fn, kw in specs:
                if fig_id == "relex_rank1_coefficient" and not (data.get("coefficients") or {}).get("model"):
                    continue
                multi = len(files[kind]) > 1 or (kind == "lowrank" and n_coef > 1)
                _draw(index, fig_id, fn, data, [path], run_label(path, inputs), multi, **kw)

    ev = [(p, load_json(p), lin.plot_explained_variance) for p in files["lowrank"]]
    ev += [(p, d, ext.plot_explained_variance_histogram) for p, d in relex_runs]
    for path, data, fn in ev:
        _draw(index, "relex_explained_variance", fn, data, [path], run_label(path, inputs), len(ev) > 1)
    for path, data in relex_runs:
        _draw(index, "relex_rank1_coefficient", ext.plot_relex_coefficient, data, [path], run_label(path, inputs),
              n_coef > 1, tensor=coefficient_tensor)


def _mechanism_figures(index: Index, files: dict[str, list[Path]], inputs) -> None:
    """LIN Fig. 3, Fig. 4 and activation linearity from the mechanism stages' files."""
    for kind, fig_id, fn in (("token_snr", "lin_fig3_token_snr", mech.plot_token_snr),
                             ("decomposition", "lin_fig4_decomposition", mech.plot_decomposition),
                             ("activations", "activation_linearity", mech.plot_activation_linearity)):
        for path in files[kind]:
            _draw(index, fig_id, fn, load_json(path), [path], run_label(path, inputs), len(files[kind]) > 1)


def _results_figures(index: Index, files: dict[str, list[Path]], inputs, reference: bool) -> list:
    """Weight extrapolation and RELEX accuracy figures per benchmark, from pipeline results.json
    files and `rlvr evaluate` sweeps merged; returns the merged groups."""
    loaded = [(p, load_json(p)) for p in files["results"]]
    loaded = [(p, r) for p, r in loaded if isinstance(r, dict) and ("rlvr" in r or "relex" in r)]
    groups = merge_results(loaded + results_from_evaluations(files["metrics"]))
    for paths, res in groups:
        label, multi = res["benchmark"], len(groups) > 1
        _draw(index, "lin_weight_extrapolation", paper.plot_weight_extrapolation, res, paths, label, multi,
              reference=reference)
        _draw(index, "relex_accuracy_vs_target", paper.plot_relex_accuracy, res, paths, label, multi)
        _draw(index, "relex_ablations", paper.plot_relex_ablations, res, paths, label, multi)
        _draw(index, "relex_finding1_reconstruction", relex.plot_finding1, res, paths, label, multi)
        _draw(index, "relex_denoising", relex.denoising_outputs, res, paths, label, multi)
    _main_table(index, loaded, inputs)
    return groups


def _main_table(index: Index, loaded: list, inputs) -> None:
    """RELEX's main table over every model found: pipeline results merged per trajectory (a
    sweep's jobs), labelled by the hub repository or the run directory."""
    models = merge_results(loaded, key=lambda p, r: r.get("trajectory") or str(p))
    groups = [(_model_label(paths[0], res, inputs), res) for paths, res in models]
    made = relex.main_table_outputs(groups, index.out_dir / "relex_main_table.png")
    index.add("relex_main_table", made, [p for paths, _ in models for p in paths])


def _model_label(path: Path, res: dict, inputs) -> str:
    traj = str(res.get("trajectory") or "")
    return traj.split("/")[-1] if traj.startswith("hub:") else run_label(path, inputs)


def _table1(index: Index, files: dict[str, list[Path]], groups: list, reference: bool) -> None:
    """LIN Table 1 from logits_extrapolation.json files, else from the results' logits rows."""
    t1_rows, t1_inputs = [], []
    for p in files["logits"]:
        t1_rows += logits_rows(load_json(p), p)
        t1_inputs.append(p)
    if not t1_rows:
        for paths, res in groups:
            rows = logits_rows_from_results(res)
            if rows:
                t1_rows += rows
                t1_inputs += paths
    if t1_rows:
        index.add("lin_table1", paper.table1(t1_rows, index.out_dir, reference=reference), t1_inputs)


def _lr_sweep(index: Index, files: dict[str, list[Path]], inputs) -> None:
    """Where linearity holds: pipeline runs trained at >= 2 learning rates (experiment=demo_lr_sweep)."""
    runs = [(p, row) for p in files["results"]
            if isinstance(res := load_json(p), dict) and (row := lr_sweep.sweep_row(res, run_label(p, inputs)))]
    index.add("lr_sweep", lr_sweep.lr_sweep([row for _, row in runs], index.out_dir), [p for p, _ in runs])


def _write_index(index: Index, inputs: list[str], files: dict[str, list[Path]]) -> dict:
    """`index.json` and `README.md` in the figures directory: what was made, what is missing."""
    made_ids = {m["id"] for m in index.made}
    missing = [{"id": f.id, "paper": f.paper, "title": f.title, "needs": f.needs, "command": f.command}
               for f in CATALOGUE if f.id not in made_ids]
    result = {"inputs": inputs, "files": {k: [str(p) for p in v] for k, v in files.items() if v},
              "made": index.made, "missing": missing}
    index.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(index.out_dir / "index.json", result)
    write_text_atomic(index.out_dir / "README.md", render_readme(result))
    return result
