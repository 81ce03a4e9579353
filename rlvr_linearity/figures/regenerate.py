"""`rlvr figures`: find results files under directories, draw every paper figure and table
their contents allow, and write an index of what was made from which files and what is
missing (with the command that would produce its inputs).

Linearity figures are drawn by `figures.linearity`, pipeline-style plots by
`figures.pipeline`; paper-only figures and tables by `figures.paper`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.figures import extrapolation as ext
from rlvr_linearity.figures import linearity as lin
from rlvr_linearity.figures import paper
from rlvr_linearity.figures.schemas import FILE_KINDS
from rlvr_linearity.figures.style import also_pdf
from rlvr_linearity.io import write_json_atomic

log = logging.getLogger(__name__)

LIN_EXP = "experiment=paper/lin_deepscaler_r1_distill_1.5b"
RELEX_EXP = "experiment=paper/relex_qwen2.5_math_1.5b"


@dataclass(frozen=True)
class PaperFigure:
    """One figure or table of a paper: what it needs and how to get it."""

    id: str
    paper: str
    title: str
    needs: str
    command: str


CATALOGUE = [
    PaperFigure("lin_weight_r2_histogram", "LIN", "Per-weight R² histogram (fraction > 0.7 marked)",
                "linearity/weights_r2.json with `histogram`",
                f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory"),
    PaperFigure("lin_logprob_r2_histogram", "LIN", "Token log-prob R² histogram",
                "linearity/logprob_r2.json", f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory linearity.logprobs=true"),
    PaperFigure("lin_weight_r2_heatmap", "LIN", "Mean weight R², module × layer (+ embedding / final norm / lm_head)",
                "linearity/weights_r2.json with `heatmap`", f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory"),
    PaperFigure("lin_weight_trajectories", "LIN", "Example weight trajectories with their fits",
                "linearity/weights_r2.json with `examples`", f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory"),
    PaperFigure("lin_token_trajectories", "LIN", "Example token log-prob trajectories with their fits",
                "linearity/logprob_r2.json with `examples`",
                f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory linearity.logprobs=true"),
    PaperFigure("lin_robustness", "LIN", "Fig. 2: weight and log-prob R² across training settings",
                "robustness.json, figures.robustness, or weights_r2.json/logprob_r2.json of >= 2 runs",
                "rlvr linearity -m trajectory.path=RUN_A/trajectory,RUN_B/trajectory linearity.logprobs=true (one run per setting, GPU-scale for the paper)"),
    PaperFigure("lin_weight_extrapolation", "LIN", "Fig. 5: weight extrapolation, accuracy vs target t′ per t₁",
                "results.json with `weight_extrapolation` rows",
                f"rlvr pipeline {LIN_EXP} trajectory.path=RUN/trajectory pipeline.weight.pairs=[[0,300],[0,600],[0,1400]] "
                "pipeline.weight.targets=[400,600,900,1200,1600,1800,2000] -m hydra/launcher=slurm_gpu (GPU)"),
    PaperFigure("lin_table1", "LIN", "Table 1: logits extrapolation vs standard RL per benchmark",
                "logits_extrapolation.json, or results.json with `logits_extrapolation` rows",
                f"rlvr pipeline {LIN_EXP} trajectory.path=RUN/trajectory pipeline.logits.pairs=[[200,1400]] "
                "pipeline.logits.targets=[2000] benchmarks=[aime24,aime25,math500,livecodebench] -m hydra/launcher=slurm_gpu (GPU)"),
    PaperFigure("lin_table2", "LIN", "Table 2: re-grounding at fixed real-step budgets",
                "regrounding.json (schema `Regrounding`)",
                "rlvr pipeline experiment=paper/lin_regrounding (GPU cluster; experiment=regrounding: the demo-scale "
                "loop on CPU)"),
    PaperFigure("lin_fig6", "LIN", "Fig. 6: re-grounding efficiency (real steps to accuracy thresholds)",
                "regrounding.json (schema `Regrounding`)",
                "rlvr pipeline experiment=paper/lin_regrounding (GPU cluster; experiment=regrounding: the demo-scale "
                "loop on CPU)"),
    PaperFigure("relex_explained_variance", "RELEX", "Finding 1: explained variance of rank r per tensor",
                "linearity/lowrank.json, or extrapolate/extrapolation.json of RELEX",
                f"rlvr linearity {RELEX_EXP} linearity.windows=[75,all]"),
    PaperFigure("relex_rank1_coefficient", "RELEX", "Finding 2: rank-1 coefficient vs step, fit and held-out steps",
                "linearity/lowrank.json with `coefficients`, or extrapolate/extrapolation.json of RELEX",
                f"rlvr linearity {RELEX_EXP} linearity.coefficient_history=75"),
    PaperFigure("relex_accuracy_vs_target", "RELEX", "Accuracy vs target step per T_cut, with the RLVR curve",
                "results.json with `relex` rows",
                f"rlvr pipeline {RELEX_EXP} extrapolate.windows=[25,50,75,100] extrapolate.history=null "
                "extrapolate.targets=[125,200,300,400,500] -m hydra/launcher=slurm_gpu (GPU)"),
    PaperFigure("relex_ablations", "RELEX", "Rank and fit ablations",
                "results.json `relex` rows with `rank`/`fit` keys (several values)",
                f"rlvr pipeline -m {RELEX_EXP} extrapolate.rank=1,2,5 extrapolate.fit=linear,polynomial hydra/launcher=slurm_gpu (GPU)"),
]
BY_ID = {f.id: f for f in CATALOGUE}


# -- discovery and loading ----------------------------------------------------------------
def discover(inputs) -> dict[str, list[Path]]:
    """Every known results file under the directories (or files), by kind; symlinks followed
    once (pipeline stage links), hidden directories skipped, each real file listed once."""
    found: dict[str, list[Path]] = {k: [] for k in FILE_KINDS.values()}
    seen_files, seen_dirs = set(), set()

    def add(path: Path):
        kind = FILE_KINDS.get(path.name)
        real = os.path.realpath(path)
        if kind and real not in seen_files:
            seen_files.add(real)
            found[kind].append(path)

    for item in inputs:
        root = Path(str(item)).expanduser()
        if root.is_file():
            add(root)
            continue
        if not root.is_dir():
            raise ConfigError(f"figures.inputs: {root} is neither a results directory nor a file")
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f in FILE_KINDS:
                    add(Path(dirpath) / f)
    return found


def load_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"file {path}: not readable as JSON ({err})") from None


def run_label(path: Path, inputs) -> str:
    """A short label for a results file: the run directory holding it, relative to its input."""
    d = Path(path).parent
    if d.name in ("linearity", "extrapolate", "evaluate"):
        d = d.parent
    for item in inputs:
        root = Path(str(item)).expanduser()
        try:
            rel = d.relative_to(root)
            return str(rel) if str(rel) != "." else root.resolve().name
        except ValueError:
            continue
    return d.name


ROW_KEYS = {"rlvr": ("step",), "relex": ("history", "target"), "weight_extrapolation": ("base_step", "second_step", "target"),
            "logits_extrapolation": ("second_step", "target")}


def _require(rows, keys, path: Path, what: str) -> None:
    """Rows must be objects holding `keys`: else one error line naming the file and the row."""
    if not isinstance(rows, list):
        raise ConfigError(f"file {path}: `{what}` must be a list")
    for i, r in enumerate(rows):
        missing = [k for k in keys if not isinstance(r, dict) or k not in r]
        if missing:
            raise ConfigError(f"file {path}: {what}[{i}] lacks {', '.join(repr(k) for k in missing)}")


def check_regrounding(data, path: Path) -> dict:
    if not isinstance(data, dict) or "std_rl" not in data or "methods" not in data:
        raise ConfigError(f"file {path}: expected {{\"std_rl\": [...], \"methods\": [{{M, N, points}}, ...]}}")
    _require(data["std_rl"], ("real_steps", "accuracy"), path, "std_rl")
    _require(data["methods"], ("M", "N", "points"), path, "methods")
    for i, m in enumerate(data["methods"]):
        _require(m["points"], ("real_steps", "accuracy"), path, f"methods[{i}].points")
    return data


def merge_results(files: list[tuple[Path, dict]]) -> list[tuple[list[Path], dict]]:
    """Pipeline results.json files merged per benchmark (a sweep's jobs): prediction rows
    concatenated without duplicates, the RLVR curve deduplicated by step."""
    groups: dict[str, tuple[list[Path], dict]] = {}
    for path, res in files:
        bench = res.get("benchmark", "test")
        paths, m = groups.setdefault(bench, ([], {"benchmark": bench, "base": {}, "rlvr": [], "relex": [],
                                                    "weight_extrapolation": [], "logits_extrapolation": []}))
        for key, keys in ROW_KEYS.items():
            _require(res.get(key) or [], keys, path, key)
        if path not in paths:
            paths.append(path)
        if (res.get("base") or {}).get("accuracy") is not None and not m["base"]:
            m["base"] = res["base"]
        steps = {r["step"] for r in m["rlvr"]}
        m["rlvr"] += [r for r in res.get("rlvr") or [] if r.get("step") not in steps]
        for key in ("relex", "weight_extrapolation", "logits_extrapolation"):
            for r in res.get(key) or []:
                row = {k: v for k, v in r.items() if k != "path"}
                if row not in m[key]:
                    m[key].append(row)
    return list(groups.values())


_STEP_DIR = re.compile(r"^(?:global_step_|checkpoint-|step_)(\d+)$")


def _run_config(run_dir: Path) -> dict | None:
    """The resolved config a command recorded in its `tracking.jsonl` (first config event)."""
    path = run_dir / "tracking.jsonl"
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "config":
                return rec.get("config") or {}
    return None


def _prediction_identity(e: dict, d: Path, step: int) -> dict:
    """Method and parameters of the prediction in `d` from its extrapolation.json; the RELEX
    history is the window whose targets list `d` (else an `h<T>/` parent, else the only one)."""
    params = {**e, **(e.get("parameters") or {})}
    ident = {"target": step, "method": e.get("method"), "base_step": params.get("base_step"),
             "second_step": params.get("second_step"), "history": params.get("history"),
             "rank": params.get("rank"), "fit": params.get("fit")}
    windows = e.get("windows") or []
    real = os.path.realpath(d)
    hit = [w for w in windows if any(os.path.realpath(str(t.get("path", ""))) == real for t in w.get("targets") or [])]
    m = re.match(r"^h(\d+)$", d.parent.name)
    if hit or len(windows) == 1:
        w = (hit or windows)[0]
        ident["history"] = w.get("history") or max(w.get("steps") or [0])
    elif m:
        ident["history"] = int(m.group(1))
    return ident


def _model_identity(model: str) -> dict | None:
    """What an evaluated model is: a trajectory step ({"step"}), a prediction of `rlvr
    extrapolate` ({"target", "method", parameters}), else None."""
    p = Path(model)
    for d in (p, *p.parents[:3]):
        m = _STEP_DIR.match(d.name)
        if m:
            break
    else:
        return None
    step = int(m.group(1))
    for parent in (d.parent, d.parent.parent):
        if (parent / "extrapolation.json").exists():
            return _prediction_identity(load_json(parent / "extrapolation.json"), d, step)
    return {"step": step}


def results_from_evaluations(metrics_files: list[Path]) -> list[tuple[Path, dict]]:
    """Pipeline-shaped results from a sweep of `rlvr evaluate` runs (one model each, or one
    `evaluate.models_dir` run): the run's tracking.jsonl names the model; trajectory steps give the RLVR curve, predictions of
    `rlvr extrapolate` (their extrapolation.json) give weight / RELEX rows, per benchmark."""
    out = []
    for path in metrics_files:
        run_dir = path.parent.parent if path.parent.name == "evaluate" else path.parent
        cfg = _run_config(run_dir) or {}
        ev = cfg.get("evaluate") or {}
        model = ev.get("model")
        if not model and not ev.get("step"):  # `evaluate.models_dir=D`: one sub-run per model, named by its path
            models_dir = ((_run_config(run_dir.parent) or {}).get("evaluate") or {}).get("models_dir")
            if models_dir:
                model = str(Path(models_dir) / run_dir.name.replace("__", os.sep)) if run_dir.name != "model" else models_dir
        ident = _model_identity(str(model)) if model else None
        if ident is None and ev.get("step") is not None:
            ident = {"step": int(ev["step"])}
        if ident is None:
            continue
        for bench, m in (load_json(path) or {}).items():
            if not isinstance(m, dict) or m.get("accuracy") is None:
                continue
            res = {"benchmark": bench, "rlvr": [], "relex": [], "weight_extrapolation": []}
            acc = m["accuracy"]
            if "step" in ident:
                res["base" if ident["step"] == 0 else "rlvr"] = (
                    {"step": 0, "accuracy": acc} if ident["step"] == 0 else [{"step": ident["step"], "accuracy": acc}])
            elif ident["method"] == "weight":
                res["weight_extrapolation"] = [{"base_step": ident["base_step"], "second_step": ident["second_step"],
                                                "target": ident["target"], "accuracy": acc}]
            elif ident["method"] == "relex":
                row = {"history": ident["history"], "target": ident["target"], "accuracy": acc}
                row.update({k: ident[k] for k in ("rank", "fit") if ident.get(k) is not None})
                res["relex"] = [row]
            else:
                continue
            out.append((path, res))
    return out


def logits_rows(table: dict, path: Path) -> list[dict]:
    rows = table.get("rows") if isinstance(table, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"benchmark", "std_rl", "ours"} <= set(r) for r in rows):
        raise ConfigError(f"file {path}: expected {{\"rows\": [{{benchmark, std_rl, ours}}, ...]}}")
    return rows


def robustness_settings(cfg_settings, files: dict[str, list[Path]], inputs) -> tuple[list[dict], list[Path]]:
    """LIN Fig. 2 settings: figures.robustness, else robustness.json, else every linearity run found."""
    def resolve(entries, base: Path | None):
        out, used = [], []
        for e in entries:
            s = {"label": str(e["label"])}
            for key in ("weights", "logprobs"):
                if e.get(key):
                    p = Path(str(e[key]))
                    p = p if p.is_absolute() or base is None else base / p
                    s[key] = load_json(p)
                    used.append(p)
            out.append(s)
        return out, used

    if cfg_settings:
        return resolve(cfg_settings, None)
    if files["robustness"]:
        path = files["robustness"][0]
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("settings"), list):
            raise ConfigError(f"file {path}: expected {{\"settings\": [{{label, weights, logprobs}}, ...]}}")
        s, used = resolve(data["settings"], path.parent)
        return s, [path, *used]
    runs: dict[str, dict] = {}
    for kind in ("weights", "logprobs"):
        for p in files[kind]:
            runs.setdefault(str(p.parent), {"label": run_label(p, inputs)})[kind] = p
    if len(runs) < 2:
        return [], []
    return [{"label": r["label"], **{k: load_json(r[k]) for k in ("weights", "logprobs") if k in r}} for r in runs.values()], \
        [r[k] for r in runs.values() for k in ("weights", "logprobs") if k in r]


# -- regeneration ---------------------------------------------------------------------------
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
    # RELEX findings come from lowrank.json (rlvr linearity) and from RELEX runs' extrapolation.json
    relex_runs = [(p, d) for p in files["extrapolation"] if (d := load_json(p)) and d.get("method") == "relex"]
    n_coef = len(files["lowrank"]) + len(relex_runs)
    with also_pdf(pdf):
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

        settings, used = robustness_settings(robustness, files, inputs)
        if settings:
            index.add("lin_robustness", paper.plot_robustness(settings, fig_dir / "lin_robustness.png", reference=reference),
                      used)

        loaded = [(p, load_json(p)) for p in files["results"]]
        loaded = [(p, r) for p, r in loaded if isinstance(r, dict) and ("rlvr" in r or "relex" in r)]
        groups = merge_results(loaded + results_from_evaluations(files["metrics"]))
        for paths, res in groups:
            label, multi = res["benchmark"], len(groups) > 1
            _draw(index, "lin_weight_extrapolation", paper.plot_weight_extrapolation, res, paths, label, multi,
                  reference=reference)
            _draw(index, "relex_accuracy_vs_target", paper.plot_relex_accuracy, res, paths, label, multi)
            _draw(index, "relex_ablations", paper.plot_relex_ablations, res, paths, label, multi)

        t1_rows, t1_inputs = [], []
        for p in files["logits"]:
            t1_rows += logits_rows(load_json(p), p)
            t1_inputs.append(p)
        if not t1_rows:
            for paths, res in groups:
                rows = paper.logits_rows_from_results(res)
                if rows:
                    t1_rows += rows
                    t1_inputs += paths
        if t1_rows:
            index.add("lin_table1", paper.table1(t1_rows, fig_dir, reference=reference), t1_inputs)

        for p in files["regrounding"][:1]:
            data = check_regrounding(load_json(p), p)
            made = paper.regrounding_figures(data, fig_dir, budgets=table2_budgets, thresholds=fig6_thresholds,
                                             benchmark=fig6_benchmark, reference=reference)
            index.add("lin_table2", {k: v for k, v in made.items() if k.startswith("lin_table2")}, [p])
            index.add("lin_fig6", {k: v for k, v in made.items() if k.startswith("lin_fig6")}, [p])

    made_ids = {m["id"] for m in index.made}
    missing = [{"id": f.id, "paper": f.paper, "title": f.title, "needs": f.needs, "command": f.command}
               for f in CATALOGUE if f.id not in made_ids]
    result = {"inputs": inputs, "files": {k: [str(p) for p in v] for k, v in files.items() if v},
              "made": index.made, "missing": missing}
    fig_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(fig_dir / "index.json", result)
    readme = fig_dir / "README.md"
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text(render_readme(result))
    tmp.replace(readme)
    return result


def render_readme(index: dict) -> str:
    """The index as Markdown: made figures with their inputs, missing ones with their command."""
    lines = ["# Paper figures and tables", "", f"Inputs: {', '.join(f'`{i}`' for i in index['inputs'])}", "",
             "## Made", "", "| Paper | Figure | Outputs | From |", "| --- | --- | --- | --- |"]
    for m in index["made"]:
        title = m["title"] + (f" ({m['label']})" if m.get("label") else "")
        lines.append(f"| {m['paper']} | {title} | {', '.join(f'`{o}`' for o in m['outputs'])} | "
                     f"{', '.join(f'`{i}`' for i in m['inputs'])} |")
    lines += ["", "## Missing (inputs not found)", "", "| Paper | Figure | Needs | Command |", "| --- | --- | --- | --- |"]
    lines += [f"| {m['paper']} | {m['title']} | {m['needs']} | `{m['command']}` |" for m in index["missing"]]
    return "\n".join(lines) + "\n"


def print_summary(index: dict) -> None:
    print(f"rlvr figures: {len(index['made'])} figure(s)/table(s) made, {len(index['missing'])} missing")
    for m in index["made"]:
        print(f"  made     {m['id']}{' (' + m['label'] + ')' if m.get('label') else ''}: {m['outputs'][0]}")
    for m in index["missing"]:
        print(f"  missing  {m['id']}: needs {m['needs']}\n           run: {m['command']}")
