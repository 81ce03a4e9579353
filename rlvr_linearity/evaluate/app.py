"""`rlvr evaluate`: thin command entry point; `evaluate(cfg, out_dir)` does the work.

Samples are appended to `DIR/evaluate/<benchmark>/samples.jsonl` one problem at a time (all its
samples together, fsynced), so an interrupted run resumes by skipping the problems already there
and ends with the same metrics as an uninterrupted one. `samples.key.json` beside it names what
produced the samples (model identity, responses-file content, benchmark data, grader, sampling,
prompt, engine; the sampling is the benchmark's effective one, `benchmark_sampling`): a run with anything different starts the benchmark afresh instead of reusing
them. `metrics.json` is written atomically last, and never holds NaN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.benchmarks import Problem, benchmark_spec, load_benchmark
from rlvr_linearity.evaluate.metrics import benchmark_metrics, macro_average
from rlvr_linearity.io import write_json_atomic

log = logging.getLogger(__name__)


def resolve_model(cfg) -> str | None:
    """`evaluate.model`, or `evaluate.step` of `trajectory.path`; a missing directory is an error."""
    ev = cfg.evaluate
    if ev.step is not None:
        from rlvr_linearity.trajectory import open_trajectory

        return str(open_trajectory(cfg.trajectory).model(int(ev.step)).path)
    model = ev.model
    if not model:
        return None
    path = Path(str(model)).expanduser()
    if str(model).startswith((".", "/", "~")) and not path.is_dir():
        raise EvaluationError(f"model directory {model} does not exist")
    return str(path) if path.is_dir() else str(model)  # otherwise a hub id


def read_responses(path) -> dict[str, list[dict]]:
    """problem_id -> its response records in file order (a problem may have several samples)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"responses file {path} does not exist")
    out: dict[str, list[dict]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"responses file {path}: unreadable ({err})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvaluationError(f"responses file {path}: line {i} is not JSON ({err.msg})") from None
        except RecursionError:
            raise EvaluationError(f"responses file {path}: line {i} is nested too deeply") from None
        if not isinstance(rec, dict) or "problem_id" not in rec or not isinstance(rec.get("response"), str):
            raise EvaluationError(f"responses file {path}: line {i} needs \"problem_id\" and a string \"response\"")
        try:  # samples.jsonl is UTF-8: a lone surrogate (\ud800) cannot be written back
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise EvaluationError(f"responses file {path}: line {i} holds a lone surrogate (not valid Unicode)") from None
        except RecursionError:
            raise EvaluationError(f"responses file {path}: line {i} is nested too deeply") from None
        out.setdefault(str(rec["problem_id"]), []).append(rec)
    if not out:
        raise EvaluationError(f"responses file {path} holds no responses")
    return out


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(model: str | None) -> dict | None:
    """What identifies a model's outputs: a local directory by its resolved path, every file's
    name, size, mtime and inode, and the sampled content digest of its weights; a hub id by name."""
    if model is None or not Path(model).is_dir():
        return None if model is None else {"hub": model}
    from rlvr_linearity.errors import RlvrError
    from rlvr_linearity.trajectory.files import ModelFiles

    root = Path(model).resolve()
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
                   for p in root.rglob("*") if p.is_file())
    try:
        weights = ModelFiles(root).sample_digest()
    except RlvrError:  # not safetensors: the file list above still identifies it
        weights = None
    return {"path": str(root), "files": files, "weights": weights}


def benchmark_sampling(name: str, cfg) -> dict:
    """The sampling benchmark `name` is evaluated with: `sampling.*`, overridden by the keys its
    registry file's `sampling:` sets, overridden by the keys `evaluate.benchmark_sampling.<name>`
    sets (null keeps the layer below), so one run can mix greedy MATH with avg@8 OOD sets."""
    from rlvr_linearity.schemas import BenchmarkSamplingConfig, SamplingConfig

    out = OmegaConf.to_container(cfg.sampling, resolve=True)
    own = cfg.evaluate.benchmark_sampling.get(name)
    layers = [(f"conf/evaluate/benchmark/{name}.yaml: sampling", benchmark_spec(name).get("sampling") or {}),
              (f"evaluate.benchmark_sampling.{name}", OmegaConf.to_container(own, resolve=True) if own else {})]
    allowed = {f.name for f in dataclasses.fields(BenchmarkSamplingConfig)}
    for where, layer in layers:
        unknown = sorted(set(layer) - allowed)
        if unknown:
            raise EvaluationError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
        out.update({k: v for k, v in layer.items() if v is not None})
    SamplingConfig(**out).check(f"sampling of benchmark {name}")
    return out


def samples_key(name: str, problems: list[Problem], cfg, grader: str, model: dict | None) -> dict:
    """Everything that decides a benchmark's samples and grades (see the module docstring)."""
    ev = cfg.evaluate
    return {
        "benchmark": name,
        "data": _digest([(p.problem_id, p.prompt, p.answer, p.meta) for p in problems]),
        "grader": grader,
        "model": model,
        "responses": _file_digest(ev.responses) if ev.responses else None,
        "sampling": benchmark_sampling(name, cfg),
        "prompt": ev.prompt,
        "batch_size": ev.batch_size,
        "engine": OmegaConf.to_container(cfg.engine, resolve=True) if cfg.get("engine") is not None else None,
    }


def _start(bdir: Path, key: dict, resume: bool) -> None:
    """Keep samples.jsonl only when resuming the very same evaluation; record its key."""
    samples, key_path = bdir / "samples.jsonl", bdir / "samples.key.json"
    try:
        same = json.loads(key_path.read_text()) == json.loads(json.dumps(key, default=str))
    except (OSError, json.JSONDecodeError):
        same = False
    if samples.exists() and not (resume and same):
        if resume:
            log.warning("%s was written by a different model, responses file, data, grader or sampling: "
                        "starting afresh", samples)
        samples.unlink()
    write_json_atomic(key_path, key)


def _read_done(path: Path) -> dict[str, list[dict]]:
    """Completed problems of an earlier run; a torn last line (crash mid-write) is cut off."""
    done: dict[str, list[dict]] = {}
    if not path.is_file():
        return done
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                break
            done.setdefault(rec["problem_id"], []).append(rec)
            good += len(raw)
    if good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _drop_problems(path: Path, drop: set[str]) -> None:
    """Rewrite samples.jsonl (atomically) without the given problems' lines."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
            if json.loads(line)["problem_id"] not in drop:
                dst.write(line)
    os.replace(tmp, path)


def grader_name(name: str, cfg) -> str:
    """The grader of a math benchmark: `evaluate.grader`, else the benchmark's `grader:`."""
    from rlvr_linearity.evaluate.grading import DEFAULT_GRADER, check_grader

    return check_grader(cfg.evaluate.grader or benchmark_spec(name).get("grader") or DEFAULT_GRADER)


def grade(problems: list[Problem], responses: list[list[str]], cfg, grader: str = "math_verify") -> list[list[dict]]:
    """Sample records (without problem_id/sample) for each problem's responses."""
    ev = cfg.evaluate
    flat = [(p, r) for p, rs in zip(problems, responses) for r in rs]
    out: list[dict] = []
    math = [(i, p, r) for i, (p, r) in enumerate(flat) if p.type == "math"]
    recs: list[dict | None] = [None] * len(flat)
    if math:
        from rlvr_linearity.evaluate.grading import grade_math

        grades = grade_math([r for _, _, r in math], [p.answer or "" for _, p, _ in math],
                            timeout=float(ev.grading_timeout), workers=int(ev.grading_workers),
                            grader=grader)
        for (i, _, _), g in zip(math, grades):
            recs[i] = {"extracted": g.extracted, "gold_extracted": g.gold_extracted, "correct": g.correct,
                       "status": g.status}
    code = [(i, p, r) for i, (p, r) in enumerate(flat) if p.type == "code"]
    if code:
        from rlvr_linearity.evaluate.sandbox import grade_code

        for (i, p, r), v in zip(code, grade_code([p for _, p, _ in code], [r for _, _, r in code],
                                                  workers=int(ev.grading_workers))):
            recs[i] = {"extracted": v.program_excerpt, "correct": v.verdict == "passed", "verdict": v.verdict}
    it = iter(recs)
    for rs in responses:
        out.append([next(it) for _ in rs])
    return out  # type: ignore[return-value]


def _generations(name: str, cfg, engine_factory, chunks):
    """Responses of each (start, problems) chunk in order, through `Engine.generate_many` (data
    parallel engines run several chunks at once); the engine is built at the first chunk."""
    from rlvr_linearity.evaluate.prompts import render

    chunks = [(start, batch) for start, batch in chunks if batch]
    if not chunks:
        return
    engine = engine_factory()
    template = cfg.evaluate.prompt or benchmark_spec(name).get("prompt", "chat")
    base = benchmark_sampling(name, cfg)
    yield from engine.generate_many(
        ([render(template, p, engine.tokenizer) for p in batch], {**base, "seed": int(base.get("seed") or 0) + start})
        for start, batch in chunks)


def evaluate_benchmark(name: str, cfg, out_root: Path, engine_factory, model: dict | None = None) -> dict:
    problems = load_benchmark(name, cfg)
    if not problems:
        raise EvaluationError(f"benchmark {name}: no problems to evaluate")
    grader = grader_name(name, cfg) if problems[0].type == "math" else "sandbox"
    given = read_responses(cfg.evaluate.responses) if cfg.evaluate.responses else None
    bdir = out_root / "evaluate" / name
    bdir.mkdir(parents=True, exist_ok=True)
    samples_path = bdir / "samples.jsonl"
    _start(bdir, samples_key(name, problems, cfg, grader, model), bool(cfg.evaluate.resume))
    done = _read_done(samples_path)
    sampling = benchmark_sampling(name, cfg)
    n = int(sampling["n"])
    if given is not None:
        known = {p.problem_id for p in problems}
        unknown = [pid for pid in given if pid not in known]
        if unknown:
            raise EvaluationError(f"responses file {cfg.evaluate.responses}: problem_id {unknown[0]!r} "
                                  f"is not in benchmark {name}")
        todo = [p for p in problems if p.problem_id in given and p.problem_id not in done]
    chunk = int(cfg.evaluate.batch_size)
    # Generation works in fixed chunks of the problem list, each seeded by its position and
    # written in one append, so a resumed run regenerates whole chunks exactly as an
    # uninterrupted run would; a chunk left incomplete by a crash is dropped and redone.
    chunks = [problems[i:i + chunk] for i in range(0, len(problems), chunk)] if given is None else [todo]
    def complete(c):
        return all(len(done.get(p.problem_id, [])) >= n for p in c)

    if given is None:
        partial = {p.problem_id for c in chunks if not complete(c) for p in c if p.problem_id in done}
        if partial:
            _drop_problems(samples_path, partial)
            done = {k: v for k, v in done.items() if k not in partial}
        starts = [i * chunk for i, c in enumerate(chunks) if not complete(c)]
        chunks = [c for c in chunks if not complete(c)]
    else:
        starts = [0] * len(chunks)
    generated = _generations(name, cfg, engine_factory, zip(starts, chunks)) if given is None else None
    with open(samples_path, "a", encoding="utf-8") as f, tqdm(total=sum(map(len, chunks)), desc=f"evaluate {name}",
                                                                disable=None) as bar:
        for start, batch in zip(starts, chunks):
            if not batch:
                continue
            if given is not None:
                extras = [given[p.problem_id] for p in batch]
                responses = [[r["response"] for r in recs] for recs in extras]
            else:
                responses = next(generated)
                extras = [[{} for _ in rs] for rs in responses]
            graded = grade(batch, responses, cfg, grader)
            lines = []
            for p, rs, gs, xs in zip(batch, responses, graded, extras):
                for k, (r, g, x) in enumerate(zip(rs, gs, xs)):
                    rec = {**{key: v for key, v in x.items() if key not in ("problem_id", "response")},
                           "problem_id": p.problem_id, "sample": k, "response": r, **g}
                    lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
                    done.setdefault(p.problem_id, []).append(rec)
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    ids = [p.problem_id for p in problems if p.problem_id in done]
    if not ids:
        raise EvaluationError(f"benchmark {name}: nothing was graded")
    seed = int(sampling["seed"] or 0)
    metrics = benchmark_metrics({pid: [bool(r["correct"]) for r in done[pid]] for pid in ids}, seed=seed)
    return {**metrics, "grader": grader, "sampling": sampling}


def evaluate(cfg, out_dir) -> dict:
    """Evaluate one model (or a responses file) on `benchmarks`; returns metrics.json's content."""
    out_dir = Path(out_dir)
    names = list(cfg.benchmarks)
    if int(cfg.sampling.n) < 1:
        raise EvaluationError(f"sampling.n must be >= 1, got {cfg.sampling.n}")
    for name in names:
        benchmark_spec(name)  # unknown benchmark, grader or sampling: fail before any work
        grader_name(name, cfg)
        benchmark_sampling(name, cfg)
    model = None if cfg.evaluate.responses else resolve_model(cfg)
    if cfg.evaluate.responses is None and cfg.engine.name != "logits_extrapolation" and not model:
        raise EvaluationError("no model given: set evaluate.model=PATH, evaluate.step=N or evaluate.responses=FILE")
    engine = []

    def factory():
        if not engine:
            from rlvr_linearity.evaluate.engines import make_engine

            engine.append(make_engine(cfg, model))
        return engine[0]

    ident = model_identity(model)
    if ident is not None and cfg.evaluate.step is not None:
        ident["step"] = int(cfg.evaluate.step)
    metrics = {name: evaluate_benchmark(name, cfg, out_dir, factory, ident) for name in names}
    if len(names) > 1:
        metrics["macro_average"] = macro_average(metrics)
    try:
        json.dumps(metrics, allow_nan=False)
    except ValueError:
        raise EvaluationError(f"metrics of {', '.join(names)} hold NaN (nothing was graded): "
                              f"not writing {out_dir / 'evaluate' / 'metrics.json'}") from None
    (out_dir / "evaluate").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "evaluate" / "metrics.json", metrics)
    return metrics


def models_in(root: Path) -> list[tuple[str, str]]:
    """(label, path) of every model directory under a trajectory or sweep output directory."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"models directory {root} does not exist")
    found = sorted({p.parent for p in root.rglob("config.json") if any(p.parent.glob("*.safetensors"))})
    if not found:
        raise EvaluationError(f"models directory {root} holds no model (config.json + *.safetensors)")
    return [(str(d.relative_to(root)).replace(os.sep, "__") or "model", str(d)) for d in found]
