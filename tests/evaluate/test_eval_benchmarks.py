"""Every registered benchmark loads from its local fixture (hub format) and grades end to end."""

import json

import pytest
from conftest import FIXTURES, compose_config

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.app import evaluate
from rlvr_linearity.evaluate.benchmarks import available, load_benchmark

FIX = FIXTURES / "benchmarks"
MATH = ["aime24", "aime25", "aime26", "amc23", "gsm8k", "hmmt_feb_2025", "math500", "minerva_math",
        "olympiadbench", "relex_math"]
GOLDS = {"math500": ["2", "\\frac{1}{2}", "2"], "gsm8k": ["7", "1000"], "relex_math": ["5", "3\\sqrt{2}"],
         "olympiadbench": ["3", "1024"], "amc23": ["4.0", "0.75"], "aime26": ["42", "81"]}
IDS = {"math500": "test/algebra/1.json", "aime24": "60", "livecodebench": "abc001_a", "aime26": "1"}


def compose_cfg(*overrides):
    return compose_config("evaluate", "logger=none", *overrides, validate=False)


def test_registry_complete():
    assert set(MATH) | {"livecodebench", "humaneval", "arithmetic"} == set(available())


@pytest.mark.parametrize("name", MATH)
def test_math_fixture_end_to_end(name, tmp_path, rlvr_cache):
    cfg = compose_cfg(f"benchmarks=[{name}]", f"evaluate.data_files.{name}={FIX / (name + '.jsonl')}")
    problems = load_benchmark(name, cfg)
    if name in GOLDS:
        assert [p.answer for p in problems] == GOLDS[name]
    if name in IDS:
        assert problems[0].problem_id == IDS[name]
    assert problems[0].prompt.endswith("within \\boxed{}.")
    rows = [{"problem_id": p.problem_id, "response": f"Thus \\boxed{{{p.answer if i == 0 else '-12345'}}}"}
            for i, p in enumerate(problems)]
    resp = tmp_path / "r.jsonl"
    resp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = evaluate(compose_cfg(f"benchmarks=[{name}]", f"evaluate.data_files.{name}={FIX / (name + '.jsonl')}",
                             f"evaluate.responses={resp}"), tmp_path / "out")[name]
    assert m["n_problems"] == len(problems)
    assert m["accuracy"] == pytest.approx(1 / len(problems))


def test_livecodebench_fixture(tmp_path, rlvr_cache):
    lcb = f"evaluate.data_files.livecodebench={FIX / 'livecodebench.jsonl'}"
    problems = load_benchmark("livecodebench", compose_cfg(lcb))
    assert [p.problem_id for p in problems] == ["abc001_a", "2999", "abc000_a"]
    assert len(problems[0].meta["tests"]) == 2  # public + (pickled, zlib, base64) private
    problems = load_benchmark("livecodebench", compose_cfg(lcb, "evaluate.date_from=2024-08-01"))
    assert [p.problem_id for p in problems] == ["abc001_a", "2999"]
    rows = [{"problem_id": "abc001_a", "response": "```python\nprint(2 * int(input()))\n```"},
            {"problem_id": "2999", "response": "```python\nclass Solution:\n    def add(self, a, b):\n"
                                               "        return a - b\n```"}]
    resp = tmp_path / "r.jsonl"
    resp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    m = evaluate(compose_cfg(lcb, "benchmarks=[livecodebench]", "evaluate.date_from=2024-08-01",
                             f"evaluate.responses={resp}"), out)["livecodebench"]
    assert m["accuracy"] == pytest.approx(0.5)
    lines = [json.loads(x) for x in (out / "evaluate/livecodebench/samples.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in lines] == ["passed", "wrong_answer"]


def test_humaneval_offline(tmp_path, rlvr_cache):
    problems = load_benchmark("humaneval", compose_cfg("evaluate.max_problems=2"))
    assert [p.problem_id for p in problems] == ["HumanEval/0", "HumanEval/1"]
    rows = [{"problem_id": p.problem_id, "response": p.meta["canonical_solution"] if i == 0 else "    return 1\n"}
            for i, p in enumerate(problems)]
    resp = tmp_path / "r.jsonl"
    resp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = evaluate(compose_cfg("benchmarks=[humaneval]", "evaluate.max_problems=2", f"evaluate.responses={resp}"),
                 tmp_path / "o")["humaneval"]
    assert m["accuracy"] == pytest.approx(0.5)


def test_hub_offline_error_suggests_data_files(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(EvaluationError, match="evaluate.data_files.math500"):
        load_benchmark("math500", compose_cfg())


def test_parquet_data_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (FIX / "gsm8k.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    probs = load_benchmark("gsm8k", compose_cfg(f"evaluate.data_files.gsm8k={tmp_path / 'g.parquet'}"))
    assert [p.answer for p in probs] == ["7", "1000"] and probs[1].problem_id == "1"
