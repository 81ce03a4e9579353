"""`rlvr evaluate` end to end: a tiny model on the demo task, responses mode, resume, errors."""

import json
import subprocess
import sys

import pytest
from conftest import compose_config

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.app import evaluate
from rlvr_linearity.evaluate.benchmarks import load_benchmark


def compose_cfg(*overrides):
    return compose_config("evaluate", "logger=none", "task.n_test=6", *overrides, validate=False)


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
    key = (full / "evaluate/arithmetic/samples.key.json").read_text()
    (part / "evaluate/arithmetic/samples.key.json").write_text(key)
    assert evaluate(cfg, part)["arithmetic"] == m
    assert (part / "evaluate/arithmetic/samples.jsonl").read_text() == "".join(text)


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
    part.joinpath("samples.key.json").write_text((tmp_path / "full/evaluate/arithmetic/samples.key.json").read_text())
    assert evaluate(compose_cfg(*over), tmp_path / "part") == full
    assert part.joinpath("samples.jsonl").read_text() == "".join(full_lines)


def test_stale_samples_are_never_reused(tmp_path, tiny_model_dir, rlvr_cache):
    """Resume keys samples by model, responses, data, grader and sampling (issue 18, item 3)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base = tiny_model_dir()
    other = tmp_path / "other_model"  # another checkpoint: the same files, other weights
    shutil.copytree(base, other)
    weights = load_file(other / "model.safetensors")
    torch.manual_seed(0)
    save_file({k: v + 0.5 * torch.randn_like(v) for k, v in weights.items()}, other / "model.safetensors")
    over = ["sampling.max_tokens=6", "sampling.n=2", "sampling.temperature=1.0", "evaluate.max_problems=4"]
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    evaluate(compose_cfg(f"evaluate.model={other}", *over), shared)
    first = (shared / "evaluate/arithmetic/samples.jsonl").read_text()
    later = evaluate(compose_cfg(f"evaluate.model={base}", *over), shared)  # into the other model's output_dir
    assert later == evaluate(compose_cfg(f"evaluate.model={base}", *over), alone)
    own = (alone / "evaluate/arithmetic/samples.jsonl").read_text()
    assert own != first  # (else this test could not tell)
    assert (shared / "evaluate/arithmetic/samples.jsonl").read_text() == own

    # a corrected responses file is graded again
    problems = load_benchmark("arithmetic", compose_cfg())
    resp = tmp_path / "r.jsonl"
    _write_responses(resp, [{"problem_id": p.problem_id, "response": "\\boxed{-1}"} for p in problems])
    out = tmp_path / "graded"
    assert evaluate(compose_cfg(f"evaluate.responses={resp}"), out)["arithmetic"]["accuracy"] == 0
    _write_responses(resp, [{"problem_id": p.problem_id, "response": f"\\boxed{{{p.answer}}}"} for p in problems])
    assert evaluate(compose_cfg(f"evaluate.responses={resp}"), out)["arithmetic"]["accuracy"] == 1


def test_grader_selection_reaches_metrics_and_samples(tmp_path, rlvr_cache):
    """evaluate.grader overrides the benchmark's grader: lin takes the first of two boxed answers."""
    problems = load_benchmark("arithmetic", compose_cfg())
    rows = [{"problem_id": p.problem_id, "response": f"first \\boxed{{{p.answer}}}, no, \\boxed{{{int(p.answer) + 1}}}"}
            for p in problems]
    resp = _write_responses(tmp_path / "r.jsonl", rows)
    out = tmp_path / "out"
    by = {g: evaluate(compose_cfg(f"evaluate.responses={resp}", f"evaluate.grader={g}"), out)["arithmetic"]
          for g in ("math_verify", "lin", "relex")}
    assert (by["lin"]["accuracy"], by["relex"]["accuracy"], by["math_verify"]["accuracy"]) == (1, 0, 0)
    saved = json.loads((out / "evaluate/metrics.json").read_text())["arithmetic"]
    assert saved["grader"] == "relex" and by["lin"]["grader"] == "lin"
    line = json.loads((out / "evaluate/arithmetic/samples.jsonl").read_text().splitlines()[0])
    assert line["extracted"] == str(int(problems[0].answer) + 1) and line["gold_extracted"] == problems[0].answer
    with pytest.raises(Exception, match="unknown grader 'nope'"):
        evaluate(compose_cfg(f"evaluate.responses={resp}", "evaluate.grader=nope"), tmp_path / "o")


@pytest.mark.parametrize("content,message", [
    ("", "holds no responses"),
    ('{"problem_id": "test-0", "response": "\\ud800"}\n', "lone surrogate"),
    ('{"problem_id": "test-0", "response": "x", "deep": ' + "[" * 100000 + "]" * 100000 + "}\n", "nested too deeply"),
])
def test_bad_responses_files_are_one_line(tmp_path, content, message, rlvr_cache):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    r = subprocess.run([sys.executable, "-m", "rlvr_linearity", "evaluate", "logger=none", f"evaluate.responses={bad}",
                        f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out/evaluate/metrics.json").exists()


def test_no_samples_no_answers_no_nan(tmp_path, rlvr_cache):
    with pytest.raises(EvaluationError, match="sampling.n must be >= 1"):
        evaluate(compose_cfg("sampling.n=0", "evaluate.model=x"), tmp_path / "a")
    data = tmp_path / "m.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "solution": "2", "unique_id": "a"}) + "\n")
    with pytest.raises(EvaluationError, match="row 0 has no answer"):
        load_benchmark("math500", compose_cfg(f"evaluate.data_files.math500={data}"))
    assert not (tmp_path / "a").exists()


# -- per-benchmark sampling (issue 15, item 2) --------------------------------------------------
def test_benchmark_sampling_precedence(monkeypatch):
    """evaluate.benchmark_sampling.<b> over the registry file's sampling: over sampling.*, key by key."""
    from rlvr_linearity.evaluate import app

    real = app.benchmark_spec
    monkeypatch.setattr(app, "benchmark_spec", lambda name: {**real(name), "sampling": {"n": 4, "top_p": 0.9}})
    cfg = compose_config("evaluate", "sampling.n=1", "sampling.temperature=0.0", "sampling.top_p=1.0",
                         "sampling.max_tokens=16", "sampling.seed=7", "evaluate.benchmark_sampling.arithmetic.n=8",
                         "evaluate.benchmark_sampling.arithmetic.temperature=0.7")
    assert app.benchmark_sampling("arithmetic", cfg) == {"n": 8, "temperature": 0.7, "top_p": 0.9, "top_k": -1,
                                                         "max_tokens": 16, "seed": 7}
    monkeypatch.setattr(app, "benchmark_spec", real)  # no registry sampling: sampling.* where unset
    assert app.benchmark_sampling("arithmetic", cfg)["top_p"] == 1.0
    assert app.benchmark_sampling("math500", cfg) == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
                                                      "max_tokens": 16, "seed": 7}


def test_benchmark_sampling_errors(monkeypatch):
    from rlvr_linearity.errors import ConfigError
    from rlvr_linearity.evaluate import app

    with pytest.raises(ConfigError, match=r"sampling of benchmark arithmetic.top_p: 1.5"):
        app.benchmark_sampling("arithmetic", compose_cfg("evaluate.benchmark_sampling.arithmetic.top_p=1.5"))
    real = app.benchmark_spec
    monkeypatch.setattr(app, "benchmark_spec", lambda name: {**real(name), "sampling": {"beams": 4}})
    with pytest.raises(EvaluationError, match=r"arithmetic.yaml: sampling: unknown key 'beams'"):
        app.benchmark_sampling("arithmetic", compose_cfg())


@pytest.mark.parametrize("preset, math, ood", [
    ("paper/relex_qwen2.5_math_1.5b", (1, 0.0, 1.0, 4096), (8, 0.7, 0.8, 4096)),
    ("paper/relex_qwen3_4b_base", (1, 0.7, 0.8, 16384), (8, 0.7, 0.8, 16384)),
    ("paper/relex_qwen3_8b_base", (1, 0.7, 0.8, 16384), (8, 0.7, 0.8, 16384)),
])
def test_relex_presets_sample_math_and_ood_sets_as_the_paper(preset, math, ood):
    """RELEX §D2: MATH at the model's setting, the five OOD sets at avg@8 (T 0.7, top-p 0.8), one run."""
    from rlvr_linearity.evaluate.app import benchmark_sampling

    cfg = compose_config("pipeline", f"experiment={preset}")

    def key(b):
        s = benchmark_sampling(b, cfg)
        return s["n"], s["temperature"], s["top_p"], s["max_tokens"]

    assert list(cfg.benchmarks) == ["relex_math", "aime25", "aime26", "hmmt_feb_2025", "amc23", "olympiadbench"]
    assert key("relex_math") == math
    assert all(key(b) == ood for b in list(cfg.benchmarks)[1:])


def test_lin_preset_samples_avg64():
    """D1: the math benchmarks at avg@64, LiveCodeBench at the paper's avg@4, all at T 0.6, top-p 0.95."""
    from rlvr_linearity.evaluate.app import benchmark_sampling

    cfg = compose_config("pipeline", "experiment=paper/lin_deepscaler_r1_distill_1.5b")
    assert "livecodebench" in cfg.benchmarks
    for b in cfg.benchmarks:
        s = benchmark_sampling(b, cfg)
        assert (s["n"], s["temperature"], s["top_p"]) == (4 if b == "livecodebench" else 64, 0.6, 0.95), b


def test_resume_key_holds_the_benchmarks_own_sampling(tmp_path, tiny_model_dir, rlvr_cache):
    """Samples drawn at one benchmark temperature are not reused at another (samples.key.json)."""
    model = tiny_model_dir()
    over = [f"evaluate.model={model}", "sampling.max_tokens=6", "sampling.n=2", "evaluate.max_problems=4"]
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    greedy = evaluate(compose_cfg(*over), shared)
    first = (shared / "evaluate/arithmetic/samples.jsonl").read_text()
    hot = ["evaluate.benchmark_sampling.arithmetic.temperature=1.5"]
    later = evaluate(compose_cfg(*over, *hot), shared)
    assert later == evaluate(compose_cfg(*over, *hot), alone)
    own = (alone / "evaluate/arithmetic/samples.jsonl").read_text()
    assert own != first  # (else this test could not tell)
    assert (shared / "evaluate/arithmetic/samples.jsonl").read_text() == own
    key = json.loads((shared / "evaluate/arithmetic/samples.key.json").read_text())
    assert key["sampling"]["temperature"] == 1.5 and later["arithmetic"]["sampling"]["temperature"] == 1.5
    assert greedy["arithmetic"]["sampling"]["temperature"] == 0.0
