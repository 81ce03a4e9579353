"""Inputs of `rlvr figures`: results files found under directories, loaded and checked, and
merged into one pipeline-shaped results dict per benchmark, also from a sweep of `rlvr evaluate`
runs (whose models are named in their tracking.jsonl) and from the settings of LIN Fig. 2."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.figures.schemas import FILE_KINDS


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
            "logits_extrapolation": ("second_step", "target"), "reconstruction": ("step", "rank")}


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


def merge_results(files: list[tuple[Path, dict]], key=None) -> list[tuple[list[Path], dict]]:
    """Pipeline results.json files merged per benchmark (a sweep's jobs), or per `key(path,
    results)`: prediction rows concatenated without duplicates, the RLVR curve deduplicated by step."""
    groups: dict[str, tuple[list[Path], dict]] = {}
    for path, res in files:
        bench = res.get("benchmark", "test")
        paths, m = groups.setdefault(key(path, res) if key else bench, (
            [], {"benchmark": bench, "benchmarks": res.get("benchmarks") or [bench], "trajectory": res.get("trajectory"),
                 "base": {}, "rlvr": [], "relex": [], "weight_extrapolation": [], "logits_extrapolation": [],
                 "reconstruction": []}))
        for kind, keys in ROW_KEYS.items():
            _require(res.get(kind) or [], keys, path, kind)
        if path not in paths:
            paths.append(path)
        if (res.get("base") or {}).get("accuracy") is not None and not m["base"]:
            m["base"] = res["base"]
        steps = {r["step"] for r in m["rlvr"]}
        m["rlvr"] += [r for r in res.get("rlvr") or [] if r.get("step") not in steps]
        for kind in ("relex", "weight_extrapolation", "logits_extrapolation", "reconstruction"):
            for r in res.get(kind) or []:
                row = {k: v for k, v in r.items() if k != "path"}
                if row not in m[kind]:
                    m[kind].append(row)
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
