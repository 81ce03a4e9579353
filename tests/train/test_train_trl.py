"""Tiny model build/cache, tokenizer round trip, and `rlvr train trainer=trl` end to end (tiny sizes)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from conftest import TRL_RECIPE, TRL_TASK, REPO_ROOT, compose_config
from safetensors.torch import load_file

from rlvr_linearity.train.rewards import BoxedAnswerReward

# An easy task (9 distinct problems, answers 0..4) and a small recipe: SFT gets the format and
# some answers right within seconds, so sampled rewards vary within groups.
ROOT = REPO_ROOT


def _cfg(cache):
    return OmegaConf.create({"train": {"tiny": TRL_RECIPE}, "task": {**TRL_TASK, "max_products": None}, "paths": {"cache_dir": str(cache)}})


@pytest.fixture(scope="module")
def tiny_dir(rlvr_cache):
    from rlvr_linearity.train.tiny_model import tiny_model

    return tiny_model(_cfg(rlvr_cache))


def test_tiny_model_builds_and_caches(tiny_dir, rlvr_cache):
    from transformers import AutoModelForCausalLM

    from rlvr_linearity.train.tiny_model import tiny_model

    stats = json.loads((tiny_dir / "tiny_recipe.json").read_text())
    assert stats["sft_steps"] == 40 and stats["n_params"] > 1000
    assert tiny_dir.parent == rlvr_cache / "tiny_models"
    mtime = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_model(_cfg(rlvr_cache)) == tiny_dir  # cache hit: not rebuilt
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    other = OmegaConf.merge(_cfg(rlvr_cache), {"train": {"tiny": {"seed": 1}}})
    from rlvr_linearity.train.tiny_model import recipe_from_cfg, recipe_hash
    assert recipe_hash(*recipe_from_cfg(other)) != tiny_dir.name
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.tie_word_embeddings and next(model.parameters()).dtype == torch.float32


def test_tokenizer_round_trip(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for text in ["Compute 12 - 7 * 3. Put the final answer in \\boxed{}.", "\\boxed{-45}", "héllo 0123"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    digits = tok.convert_ids_to_tokens(tok("123", add_special_tokens=False)["input_ids"])
    assert digits == ["1", "2", "3"]  # digits stay separate tokens
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_rewards():
    completions = [[{"role": "assistant", "content": "\\boxed{5}"}], "\\boxed{6}", "\\boxed{-3}", "no box",
                   "\\boxed{1} or rather \\boxed{2}"]
    answers = ["5", "5", "-3", "1", "1"]
    graded = BoxedAnswerReward(timeout=5.0, workers=1)  # the evaluation's default grader
    assert graded(completions=completions, answer=answers) == [1, 0, 1, 0, 0]
    lin = BoxedAnswerReward(timeout=5.0, workers=1, grader="lin")  # LIN's: the first box
    assert lin(completions=completions, answer=answers) == [1, 0, 1, 0, 1]
    with pytest.raises(Exception, match="unknown grader"):
        BoxedAnswerReward(grader="nope")


@pytest.mark.parametrize("grader", ["math_verify", "lin", "relex"])
def test_trl_trains_with_each_grader(grader, tiny_dir, rlvr_cache, tmp_path):
    """One GRPO step per grader (train.reward_grader), in process."""
    from rlvr_linearity.train.trl_grpo import train_trl

    task = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TRL_TASK.items()]
    tiny = [f"train.tiny.{k}={v}" for k, v in TRL_RECIPE.items()]
    cfg = compose_config("train", "trainer=trl", "train.steps=1", "train.group_size=2", "train.prompts_per_step=2",
                         "train.max_completion_length=6", f"train.reward_grader={grader}",
                         f"paths.cache_dir={rlvr_cache}", "logger=none", *task, *tiny)
    traj = train_trl(cfg, tmp_path)
    assert (traj / "checkpoint-1" / "model.safetensors").is_file()
    (row,) = [json.loads(line) for line in (tmp_path / "train_metrics.jsonl").read_text().splitlines()]
    assert 0 <= row["reward_mean"] <= 1


def test_rlvr_train_trl_end_to_end(tiny_dir, rlvr_cache, tmp_path):
    out = tmp_path / "run"
    task = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TRL_TASK.items()]
    tiny = [f"train.tiny.{k}={v}" for k, v in TRL_RECIPE.items()]
    cmd = [sys.executable, "-m", "rlvr_linearity", "train", "trainer=trl", "train.group_size=4",
           "train.prompts_per_step=4", "train.max_completion_length=8", "train.lr=0.01", f"output_dir={out}",
           "logger=none", *task, *tiny]
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache), "TQDM_DISABLE": "1"}
    # a run "killed" after step 2, in the middle of writing checkpoint-3 ...
    res = subprocess.run(cmd + ["train.steps=2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    traj = out / "trajectory"
    step2 = load_file(traj / "checkpoint-2" / "model.safetensors")
    (traj / "checkpoint-3").mkdir()
    (traj / "checkpoint-3" / "config.json").write_text("{}")
    # ... resumes from checkpoint-2
    cmd.append("train.steps=3")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(torch.equal(v, load_file(traj / "checkpoint-2" / "model.safetensors")[k]) for k, v in step2.items())
    meta = json.loads((traj / "trajectory.json").read_text())
    assert meta["steps"] == [1, 2, 3] and meta["trainer"] == "trl" and meta["base"] == str(tiny_dir)
    assert meta["config"]["steps"] == 3
    assert not (traj / "README.md").exists() and "URL not available" not in res.stderr  # no TRL model card
    rows = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert 0 <= r["reward_mean"] <= 1 and r["step_time"] > 0 and r["completion_length_mean"] > 0
    # optimizer state only in the newest checkpoint
    assert not (traj / "checkpoint-1" / "optimizer.pt").exists() and (traj / "checkpoint-3" / "optimizer.pt").exists()
    weights = [load_file(tiny_dir / "model.safetensors")]
    weights += [load_file(traj / f"checkpoint-{s}" / "model.safetensors") for s in (1, 2, 3)]
    for w in weights[1:]:
        assert set(w) == set(weights[0]) and all(t.dtype == torch.float32 for t in w.values())
    for a, b in zip(weights, weights[1:]):
        assert any(not torch.equal(a[k], b[k]) for k in a), "weights did not move"
    # a finished trajectory is not retrained
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_file(traj / "checkpoint-3" / "model.safetensors").keys() == weights[3].keys()
    assert len((out / "train_metrics.jsonl").read_text().splitlines()) == 3


# A `rlvr train` process that SIGKILLs itself at one point of one step: in a callback event
# (on_step_end: the step is taken, nothing saved; on_log: its metrics line is written; on_save:
# its checkpoint is complete), or "mid_save" (weights written; optimizer, RNG and trainer state not).
_KILLED_TRAIN = r"""
import os, signal, sys
from transformers import Trainer, TrainerCallback
import rlvr_linearity.forecast.hooks as hooks
from rlvr_linearity.cli import main

when, step = sys.argv[1], int(sys.argv[2])

def kill(now):
    if now == step:
        os.kill(os.getpid(), signal.SIGKILL)

if when == "mid_save":
    save = Trainer._save_optimizer_and_scheduler
    def _save(self, output_dir):
        kill(self.state.global_step)
        return save(self, output_dir)
    Trainer._save_optimizer_and_scheduler = _save
else:
    Kill = type("Kill", (TrainerCallback,), {when: lambda self, args, state, control, **kw: kill(state.global_step)})
    callbacks = hooks.trl_callbacks
    hooks.trl_callbacks = lambda *a, **k: [*callbacks(*a, **k), Kill()]
main(["train", *sys.argv[3:]])
"""


@pytest.mark.slow
def test_killed_training_resumes_bitwise(tiny_dir, rlvr_cache, tmp_path):
    """kill -9 at three points, each rerun resuming the last: every checkpoint's weights, the final
    optimizer state and every step's metrics equal an uninterrupted run's bit for bit. 7 problems,
    2 per step: an epoch is 3 steps, so the resumes land mid-epoch 1, on an epoch boundary and in
    epoch 2 (the data order of later epochs is what a resume used to get wrong)."""
    task = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TRL_TASK.items()]
    tiny = [f"train.tiny.{k}={v}" for k, v in TRL_RECIPE.items()]
    args = ["trainer=trl", "train.steps=8", "train.group_size=4", "train.prompts_per_step=2",
            "train.max_completion_length=8", "train.lr=0.003", "logger=none", *task, *tiny]
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}

    def train(out, when="none", step=0):
        log = tmp_path / f"{out.name}-{when}-{step}.log"
        with open(log, "w") as f:  # a file, not a pipe: two runs at once never block on output
            proc = subprocess.Popen([sys.executable, "-c", _KILLED_TRAIN, when, str(step), *args,
                                     f"output_dir={out}"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        return proc, log

    def finish(run, returncode):
        proc, log = run
        assert proc.wait(timeout=600) == returncode, log.read_text()[-3000:]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = train(whole)  # alongside the killed runs
    for when, step, newest in (("on_log", 5, 4), ("mid_save", 7, 7), ("on_save", 7, 7)):
        finish(train(killed, when, step), -9)
        # what the kill left behind: the newest checkpoint dir, complete or not
        assert max(int(d.name.split("-")[1]) for d in (killed / "trajectory").glob("checkpoint-*")) == newest
    finish(train(killed), 0)
    finish(uninterrupted, 0)

    for run in (whole, killed):
        assert json.loads((run / "trajectory" / "trajectory.json").read_text())["steps"] == list(range(1, 9))
    for s in range(1, 9):
        a = load_file(whole / "trajectory" / f"checkpoint-{s}" / "model.safetensors")
        b = load_file(killed / "trajectory" / f"checkpoint-{s}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"step {s} differs"
    opt = [torch.load(run / "trajectory" / "checkpoint-8" / "optimizer.pt", weights_only=True)["state"]
           for run in (whole, killed)]
    assert opt[0].keys() == opt[1].keys()
    assert all(torch.equal(opt[0][p][k], opt[1][p][k]) for p in opt[0] for k in opt[0][p])

    def metrics(run):  # everything but wall-clock times
        rows = [json.loads(line) for line in (run / "train_metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "time" not in k} for r in rows]

    whole_metrics = metrics(whole)
    assert [r["step"] for r in whole_metrics] == list(range(1, 9))
    assert metrics(killed) == whole_metrics
    assert len({r["reward_mean"] for r in whole_metrics}) > 1  # rewards vary: sampling shapes the weights
