"""`rlvr evaluate` end to end: a tiny model on the demo task, responses mode, resume, errors."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from rlvr_linearity.paths import conf_dir
from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.app import evaluate
from rlvr_linearity.evaluate.benchmarks import load_benchmark
from rlvr_linearity.schemas import register_configs


def compose_cfg(*overrides):
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("evaluate", overrides=["logger=none", "task.n_test=6", *overrides])


def _write_responses(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tiny_model_arithmetic(tmp_path, tiny_model_dir, rlvr_cache):
    model = tiny_model_dir()
    cfg = compose_cfg(f"evaluate.model={model}", "sampling.max_tokens=8", "sampling.n=2",
                      "sampling.temperature=1.0", f"output_dir={tmp_path}")
    m = evaluate(cfg, tmp_path)["arithmetic"]
    assert m["n_problems"] == 6 and m["n_samples"] == 12
    assert set(m["pass@k"]) == {"1", "2"}
    lines = [json.loads(x) for x in (tmp_path / "evaluate/arithmetic/samples.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    assert {(r["problem_id"], r["sample"]) for r in lines} == {(f"test-{i}", k) for i in range(6) for k in range(2)}
    assert all({"response", "extracted", "correct"} <= set(r) for r in lines)
    assert json.loads((tmp_path / "evaluate/metrics.json").read_text())["arithmetic"] == m


def test_responses_mode_and_resume(tmp_path, rlvr_cache):
    cfg0 = compose_cfg()
    problems = load_benchmark("arithmetic", cfg0)
    rows = []
    for i, p in enumerate(problems):
        ans = p.answer if i % 2 == 0 else str(int(p.answer) + 1)
        rows += [{"problem_id": p.problem_id, "response": f"so \\boxed{{{ans}}}", "tag": i},
                 {"problem_id": p.problem_id, "response": "no idea"}]
    resp = _write_responses(tmp_path / "r.jsonl", rows)
    full = tmp_path / "full"
    cfg = compose_cfg(f"evaluate.responses={resp}")
    m = evaluate(cfg, full)["arithmetic"]
    assert m["accuracy"] == pytest.approx(0.25)
    assert m["pass@k"]["2"] == pytest.approx(0.5)
    lines = [json.loads(x) for x in (full / "evaluate/arithmetic/samples.jsonl").read_text().splitlines()]
    assert lines[0]["tag"] == 0 and lines[0]["correct"] and lines[1]["extracted"] is None
    # interrupted run: keep 5 lines plus a torn one, then resume
    part = tmp_path / "part"
    (part / "evaluate/arithmetic").mkdir(parents=True)
    text = (full / "evaluate/arithmetic/samples.jsonl").read_text().splitlines(keepends=True)
    (part / "evaluate/arithmetic/samples.jsonl").write_text("".join(text[:4]) + text[4][:10])
    assert evaluate(cfg, part)["arithmetic"] == m


def test_errors(tmp_path, rlvr_cache):
    with pytest.raises(EvaluationError, match="unknown benchmark"):
        evaluate(compose_cfg("benchmarks=[nope]", "evaluate.responses=x"), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem_id": "test-0", "response": "x"}\n{oops\n')
    with pytest.raises(EvaluationError, match="line 2"):
        evaluate(compose_cfg(f"evaluate.responses={bad}"), tmp_path / "o1")
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate(compose_cfg(f"evaluate.model={tmp_path}/missing"), tmp_path / "o2")
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate(compose_cfg("benchmarks=[math500]", f"evaluate.data_files.math500={tmp_path}/no.jsonl",
                             f"evaluate.responses={bad}"), tmp_path / "o3")


def test_cli_error_is_one_line(tmp_path, rlvr_cache):
    r = subprocess.run([sys.executable, "-m", "rlvr_linearity", "evaluate", "logger=none", "benchmarks=[nope]",
                        "evaluate.responses=x", f"output_dir={tmp_path}"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown benchmark" in r.stderr


def test_models_dir_and_step(tmp_path, tiny_trajectory, rlvr_cache):
    from rlvr_linearity.commands.evaluate import run

    tt = tiny_trajectory(steps=(1, 2))

    class T:
        def summary(self, d):
            pass

        def log(self, d, step=None):
            self.logged = d

    over = ["sampling.max_tokens=4", "evaluate.max_problems=2"]
    res = run(compose_cfg(f"evaluate.models_dir={tt.path}", f"output_dir={tmp_path / 'all'}", *over), T())
    assert len(res) >= 2 and all(m["arithmetic"]["n_problems"] == 2 for m in res.values())
    for label in res:
        assert (tmp_path / "all" / label / "evaluate/metrics.json").is_file()
    m = evaluate(compose_cfg(f"trajectory.path={tt.path}", f"trajectory.base={tt.base}", "evaluate.step=2", *over), tmp_path / "s")
    assert m["arithmetic"]["n_samples"] == 2


def test_prompt_templates(tiny_model_dir):
    from transformers import AutoTokenizer

    from rlvr_linearity.evaluate.benchmarks import Problem
    from rlvr_linearity.evaluate.prompts import LIN_INSTRUCTION, render

    p = Problem("0", "What is 1+1?", "What is 1+1?" + LIN_INSTRUCTION)
    assert render("plain", p) == p.prompt
    assert render("relex_qwen", p) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 1+1?\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    chat = render("chat", p, tok)
    if tok.chat_template:
        assert p.prompt in chat and chat != p.prompt
    with pytest.raises(Exception, match="unknown template"):
        render("nope", p)


def test_sampled_resume_equals_uninterrupted(tmp_path, tiny_model_dir, rlvr_cache):
    model = tiny_model_dir()
    over = [f"evaluate.model={model}", "sampling.max_tokens=6", "sampling.n=2", "sampling.temperature=1.0",
            "evaluate.batch_size=2"]
    full = evaluate(compose_cfg(*over), tmp_path / "full")
    full_lines = (tmp_path / "full/evaluate/arithmetic/samples.jsonl").read_text().splitlines(keepends=True)
    part = tmp_path / "part/evaluate/arithmetic"
    part.mkdir(parents=True)
    # first chunk complete, second chunk only partly written (torn), as after a crash
    part.joinpath("samples.jsonl").write_text("".join(full_lines[:6]) + full_lines[6][:7])
    assert evaluate(compose_cfg(*over), tmp_path / "part") == full
    assert part.joinpath("samples.jsonl").read_text() == "".join(full_lines)
