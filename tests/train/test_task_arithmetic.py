"""The demo task: deterministic, disjoint splits, answers checked by an independent evaluator."""

import ast
import json
import operator

import pytest

from omegaconf import OmegaConf

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.tasks.arithmetic import format_prompt, make_split, write_jsonl

CFG = {"seed": 7, "n_train": 300, "n_test": 50, "min_terms": 2, "max_terms": 4, "min_operand": 0, "max_operand": 15,
       "max_products": None, "operators": ["+", "-", "*"]}


def task(**over):
    """A typed-style task config (attribute access, as commands see `cfg.task`) with overrides."""
    return OmegaConf.create({**CFG, **over})


OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def py_eval(expr: str) -> int:
    """Python's own parser and precedence, independent of the task's evaluator."""
    def ev(node):
        if isinstance(node, ast.BinOp):
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        return node.value
    return ev(ast.parse(expr, mode="eval").body)


def test_deterministic_and_sized():
    a, b = make_split(task(), "train"), make_split(task(), "train")
    assert a == b and len(a) == 300 and len(make_split(task(), "test")) == 50
    assert make_split(task(seed=8), "train") != a


def test_splits_disjoint_and_unique():
    train = {r["problem"] for r in make_split(task(), "train")}
    test = {r["problem"] for r in make_split(task(), "test")}
    assert len(train) == 300 and len(test) == 50 and not train & test
    # the test split does not depend on the train size
    assert make_split(task(n_train=10), "test") == make_split(task(), "test")


def test_answers_exact():
    rows = make_split(task(), "train") + make_split(task(), "test")
    assert any("*" in r["problem"] for r in rows) and any(int(r["answer"]) < 0 for r in rows)
    for r in rows:
        assert int(r["answer"]) == py_eval(r["problem"]), r
        assert r["prompt"] == format_prompt(r["problem"]) and "\\boxed{}" in r["prompt"]
        assert r["problem"] in r["prompt"]
    ids = [r["problem_id"] for r in rows]
    assert len(set(ids)) == len(ids)


def test_knobs():
    rows = make_split(task(max_terms=2, min_terms=2, operators=["+"], max_operand=9, n_train=40), "test")
    for r in rows:
        a, b = map(int, r["problem"].split(" + "))
        assert 0 <= a <= 9 and 0 <= b <= 9 and int(r["answer"]) == a + b
    capped = make_split(task(max_products=1, operators=["*"]), "train")
    assert all(r["problem"].count("*") <= 1 for r in capped)


@pytest.mark.parametrize("bad", [{"operators": ["/"]}, {"min_terms": 3, "max_terms": 2},
                                 {"max_operand": 1, "max_terms": 2, "n_train": 1000}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        make_split(task(**bad), "train")
    with pytest.raises(ConfigError):
        make_split(task(), "validation")


def test_write_jsonl(tmp_path):
    path = write_jsonl(task(), "test", tmp_path / "sub" / "test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == make_split(task(), "test")
    assert [p.name for p in path.parent.iterdir()] == ["test.jsonl"]
