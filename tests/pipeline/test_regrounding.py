"""LIN's periodic re-grounding (`rlvr pipeline experiment=regrounding`): α, the prompt order
(segments continue plain GRPO's order, nothing replayed), optimizer keep (N = 0 reproduces plain
GRPO exactly), the regrounding.json / figures / report outputs, a run killed during its second
segment resuming to the uninterrupted result, and the verl segment config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_RECIPE, compose_config
from omegaconf import OmegaConf
from safetensors.torch import load_file

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.train import regrounding as rg

ROOT = REPO_ROOT
# 30 distinct a+b problems (0..5): 24 train, 6 test. The test_train_trl recipe: SFT gets the format
# and some answers right within seconds, so sampled rewards vary within groups.
TASK = {"name": "arithmetic", "seed": 3, "n_train": 24, "n_test": 6, "min_terms": 2, "max_terms": 2,
        "min_operand": 0, "max_operand": 5, "operators": ["+"]}
RECIPE = {**TINY_RECIPE, "sft_batch_size": 8}
TRAIN = {"group_size": 4, "prompts_per_step": 2, "max_completion_length": 8, "lr": 0.01, "save_every": 1}


def _overrides(stage_dir: Path, out: Path, *extra: str) -> list[str]:
    ov = ["experiment=regrounding", "logger=none", f"output_dir={out}", f"pipeline.stage_dir={stage_dir}",
          "sampling.max_tokens=8", "figures.pdf=false", "evaluate.grading_workers=1"]
    ov += [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TASK.items()]
    ov += [f"train.tiny.{k}={v}" for k, v in RECIPE.items()]
    ov += [f"train.{k}={v}" for k, v in TRAIN.items()]
    return ov + list(extra)


def _compose(overrides: list[str]):
    return compose_config("pipeline", *overrides, validate=False)


# -- pure pieces ------------------------------------------------------------------------------------
def test_alpha():
    assert rg.alpha(10, 10) == 2.0 and rg.alpha(5, 10) == 3.0 and rg.alpha(20, 100) == 6.0 and rg.alpha(4, 0) == 1.0
    for M, N in ((0, 5), (3, -1)):
        with pytest.raises(ConfigError):
            rg.alpha(M, N)


def test_prompt_order_is_trls_sampler_order():
    """prompt_order reproduces TRL's RepeatSampler (what plain GRPO uses) over several epochs."""
    from trl.trainer.utils import RepeatSampler

    n, P, G, seed = 23, 3, 4, 7
    sampler = RepeatSampler(list(range(n)), mini_repeat_count=G, batch_size=P, repeat_count=1, shuffle=True, seed=seed)
    trl_order = []
    for _ in range(3):  # the Trainer iterates the same sampler once per epoch
        indices = list(sampler)
        assert indices[::G] == [i for i in indices[::G] for _ in range(1)] and len(indices) == (n // P) * P * G
        trl_order += indices[::G]
    steps = len(trl_order) // P
    assert rg.prompt_order(n, P, seed, steps) == trl_order
    assert rg.prompt_order(n, P, seed, 5) == trl_order[:15]


def test_segments_continue_the_order_without_replay():
    rows = [{"problem_id": f"train-{i}"} for i in range(40)]
    M, P, seed = 3, 4, 11
    order = rg.prompt_order(40, P, seed, 3 * M)
    segs = [rg.segment_rows(rows, k, M, P, seed) for k in range(3)]
    seen = [r["problem_id"] for s in segs for r in s]
    assert seen == [f"train-{i}" for i in order[: 3 * M * P]]  # segment k = real steps kM+1 .. (k+1)M
    assert len(set(seen)) == len(seen) == 36  # within an epoch no prompt comes twice
    assert rg.segment_steps(2, M) == (7, 9)
    replay = [rg.segment_rows(rows, k, M, P, seed, data="replay") for k in range(3)]
    assert replay[0] == replay[1] == replay[2] == segs[0]  # LIN as released: every segment restarts the order
    with pytest.raises(ConfigError):
        rg.segment_steps(0, M, data="shuffle")


def test_configurations():
    from rlvr_linearity.pipeline.regrounding_configs import configurations

    cfg = OmegaConf.create({"regrounding": {"M": 10, "N": 10, "iterations": 3, "optimizer": "keep", "data": "continue",
                                            "compare": [{"M": 5, "N": 10}, {"M": 20, "N": 100, "optimizer": "reset"}]}})
    confs = configurations(cfg)
    assert [(c["label"], c["iterations"], c["alpha"], c["real_steps"], c["virtual_steps"], c["optimizer"]) for c in confs] == [
        ("(10,10)", 3, 2.0, 30, 60, "keep"), ("(5,10)", 6, 3.0, 30, 90, "keep"), ("(20,100)", 2, 6.0, 40, 240, "reset")]
    cfg.regrounding.compare = [{"M": 5, "N": 10, "iterations": 2, "bogus": 1}]
    with pytest.raises(ConfigError, match="unknown keys"):
        configurations(cfg)
    cfg.regrounding.compare = [{"M": 10, "N": 10}]
    with pytest.raises(ConfigError, match="distinct labels"):
        configurations(cfg)


def test_experiment_composes_with_schema():
    cfg = _compose(["experiment=regrounding", "logger=none"])
    assert (cfg.regrounding.M, cfg.regrounding.N, cfg.regrounding.iterations) == (10, 10, 6)
    assert "regrounding" in cfg.pipeline.stages and cfg.train.steps == 30
    with pytest.raises(Exception, match="regrounding.M"):  # the schema types the keys
        _compose(["experiment=regrounding", "logger=none", "regrounding.M=ten"])
    with pytest.raises(Exception, match="optimiser"):
        _compose(["experiment=regrounding", "logger=none", "regrounding.optimiser=keep"])


# -- a real (tiny) run in process -----------------------------------------------------------------------
def _prompt_ids(prompts, by_prompt: dict, G: int) -> list[str]:
    texts = [p[-1]["content"] if isinstance(p, list) else str(p) for p in prompts]
    assert all(texts[i] == texts[i - i % G] for i in range(len(texts)))  # G samples of each prompt
    return [by_prompt[t] for t in texts[::G]]


def test_regrounding_run(rlvr_cache, tmp_path, monkeypatch):
    """(2,2) with the optimizer kept, and (2,0) (α = 1): prompts per step follow plain GRPO's order
    in every segment (no replay), α is applied, N = 0 with the optimizer kept reproduces plain
    GRPO bit for bit, and regrounding.json / figures / report.md are written."""
    from rlvr_linearity.figures.discover import check_regrounding
    from rlvr_linearity.pipeline.regrounding import run_regrounding
    from rlvr_linearity.tasks.arithmetic import make_split
    from rlvr_linearity.train.rewards import BoxedAnswerReward

    seen: list[list] = []
    original = BoxedAnswerReward.__call__

    def recording(self, prompts=None, completions=None, answer=None, **kw):
        seen.append(list(prompts))
        return original(self, prompts=prompts, completions=completions, answer=answer, **kw)

    monkeypatch.setattr(BoxedAnswerReward, "__call__", recording)
    out = tmp_path / "out"
    cfg = _compose(_overrides(tmp_path / "stages", out, "regrounding.M=2", "regrounding.N=2", "regrounding.iterations=2",
                              "regrounding.eval_every=2", "regrounding.optimizer=keep",
                              "regrounding.compare=[{M: 2, N: 0, label: n0}]"))
    t0 = time.time()
    data = run_regrounding(cfg, out)
    print(f"in-process run: {time.time() - t0:.1f}s")

    rows = make_split(cfg.task, "train")
    by_prompt = {r["prompt"]: r["problem_id"] for r in rows}
    P, G = TRAIN["prompts_per_step"], TRAIN["group_size"]
    steps = [_prompt_ids(p, by_prompt, G) for p in seen]
    # plain GRPO 4 steps, (2,2) 2 segments of 2 steps, (2,0) only its second segment: its first
    # (same M, optimizer, data and start) is (2,2)'s, shared through the stage cache
    assert len(steps) == 4 + 2 * 2 + 2
    order = [rows[i]["problem_id"] for i in rg.prompt_order(len(rows), P, int(cfg.seed), 4)]
    plain = [order[s * P:(s + 1) * P] for s in range(4)]
    assert steps[:4] == plain  # TRL's own shuffle = prompt_order
    assert steps[4:8] == plain and steps[8:10] == plain[2:]  # both arms: the same prompt at the same real step
    assert len({i for s in steps[4:8] for i in s}) == 4 * P  # no prompt replayed across segments

    # regrounding.json: the figures schema, real vs virtual steps
    on_disk = json.loads((out / "regrounding.json").read_text())
    check_regrounding(on_disk, out / "regrounding.json")
    assert on_disk["benchmark"] == "arithmetic" and on_disk["budget"] == 4
    assert [p["real_steps"] for p in on_disk["std_rl"]] == [0, 2, 4]
    m22, m20 = on_disk["methods"]
    assert (m22["label"], m22["M"], m22["N"], m22["alpha"]) == ("(2,2)", 2, 2, 2.0)
    assert [(p["real_steps"], p["virtual_step"], p["kind"]) for p in m22["points"]] == [
        (0, 0, "base"), (2, 4, "extrapolated"), (4, 8, "extrapolated")]
    assert [(p["real_steps"], p["virtual_step"]) for p in m20["points"]] == [(0, 0), (2, 2), (4, 4)]
    for pt in m22["points"] + on_disk["std_rl"]:
        assert 0 <= pt["accuracy"]["arithmetic"] <= 1
    assert [s["k"] for s in m22["segments"]] == [0, 1]

    # α: W = W_0 + 2 (W_2 - W_0) for extrapolated tensors, norms copied from the end model
    seg0 = Path(m22["segments"][0]["model"]).parent.parent  # the extrapolation stage dir
    marker = json.loads((seg0 / "_stage.json").read_text())["result"]
    assert marker["alpha"] == 2.0
    seg_stage = [s for s in data["stages"] if s["stage"] == "rg_2_2_seg0"][0]
    traj = Path(tmp_path / "stages" / f"regrounding_segment-{seg_stage['key']}" / "trajectory")
    start = load_file(Path(json.loads((traj / "trajectory.json").read_text())["base"]) / "model.safetensors")
    end = load_file(traj / "checkpoint-2" / "model.safetensors")
    extra = load_file(Path(m22["segments"][0]["model"]) / "model.safetensors")
    for name, w in extra.items():
        want = end[name] if rg_is_norm(name) else (start[name].double() + 2 * (end[name].double() - start[name].double())).float()
        assert torch.equal(w, want), name
    assert any(not torch.equal(start[n], end[n]) for n in start)

    # N = 0, optimizer kept: segments + α = 1 "extrapolation" = plain GRPO, exactly
    plain_traj = Path(data["baseline_trajectory"])
    n0_last = load_file(Path(m20["segments"][-1]["model"]) / "model.safetensors")
    plain_last = load_file(plain_traj / "checkpoint-4" / "model.safetensors")
    assert n0_last.keys() == plain_last.keys()
    for name in plain_last:
        assert torch.equal(n0_last[name], plain_last[name]), name
    assert [p["accuracy"] for p in m20["points"]] == [p["accuracy"] for p in on_disk["std_rl"]]

    # figures (LIN Table 2, Fig. 6) and the report
    figs = out / "figures"
    assert (figs / "lin_fig6_regrounding.png").exists() and (figs / "lin_table2.md").exists()
    assert (figs / "lin_fig6_speedups.json").exists()
    report = (out / "report.md").read_text()
    assert "Accuracy vs real RL steps" in report and "(2,2)" in report and "plain GRPO" in report
    assert "lin_fig6_regrounding.png" in report

    # a second call is fully cached
    seen.clear()
    again = run_regrounding(cfg, out)
    assert not seen and all(s["cached"] for s in again["stages"])
    assert [m["points"] for m in again["methods"]] == [m["points"] for m in on_disk["methods"]]


def rg_is_norm(name: str) -> bool:
    from rlvr_linearity.extrapolate.weight import is_norm

    return is_norm(name)


def test_optimizer_reset_segment_starts_fresh(rlvr_cache, tmp_path):
    """optimizer=reset: segment 0 equals plain GRPO's first M steps (same prompts, same seed) and
    the second segment does not load the first one's state (its first step differs from keep)."""
    from rlvr_linearity.pipeline.regrounding import run_regrounding

    runs = {}
    for mode in ("reset", "keep"):
        out = tmp_path / mode
        cfg = _compose(_overrides(tmp_path / "stages", out, "regrounding.M=2", "regrounding.N=0",
                                  "regrounding.iterations=2", "regrounding.eval_every=0", "regrounding.baseline=false",
                                  f"regrounding.optimizer={mode}", "pipeline.stages=[regrounding]"))
        data = run_regrounding(cfg, out)
        runs[mode] = [load_file(Path(s["model"]) / "model.safetensors") for s in data["methods"][0]["segments"]]
    first = [all(torch.equal(runs["reset"][0][n], runs["keep"][0][n]) for n in runs["keep"][0])]
    assert first == [True]  # segment 0 is the same in both modes
    assert any(not torch.equal(runs["reset"][1][n], runs["keep"][1][n]) for n in runs["keep"][1])


def test_verl_segment_config(tmp_path):
    """trainer=verl: a segment is a fresh verl run from the start model on its rows, in order."""
    pytest.importorskip("verl")
    import pyarrow.parquet as pq

    cfg = _compose(["experiment=regrounding", "logger=none", "trainer=verl", "train.model=/models/base",
                    "train.launch=false", "train.prompts_per_step=4", "train.mini_batch_size=4", "task.n_train=40",
                    "regrounding.optimizer=reset"])
    traj = rg.train_segment(cfg, tmp_path / "seg", "/models/start", 1, 3, optimizer="reset")
    v = OmegaConf.load(tmp_path / "seg" / "verl_config.yaml")
    assert traj == (tmp_path / "seg" / "trajectory").resolve()
    assert v.actor_rollout_ref.model.path == "/models/start" and v.trainer.total_training_steps == 3
    assert v.data.shuffle is False and v.data.train_files.endswith("segment.parquet")
    ids = [r["extra_info"]["problem_id"] for r in pq.read_table(v.data.train_files).to_pylist()]
    order = rg.prompt_order(40, 4, int(cfg.seed), 6)
    assert ids == [f"train-{i}" for i in order[12:24]]  # real steps 4..6 of the seeded order
    with pytest.raises(ConfigError, match="needs trainer=trl"):
        rg.train_segment(cfg, tmp_path / "seg2", "/models/start", 1, 3, optimizer="keep")


# -- killed during the second segment, resumed -------------------------------------------------------
def _segment_dirs(stage_dir: Path) -> list[Path]:
    return sorted(stage_dir.glob("regrounding_segment-*")) if stage_dir.exists() else []


@pytest.mark.slow
def test_killed_during_a_segment_resumes_to_the_uninterrupted_result(rlvr_cache, tmp_path):
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache), "TQDM_DISABLE": "1", "WANDB_MODE": "offline"}
    extra = ["regrounding.M=3", "regrounding.N=3", "regrounding.iterations=2", "regrounding.eval_every=3",
             "regrounding.compare=[]"]

    def cmd(name):
        return [sys.executable, "-m", "rlvr_linearity", "pipeline",
                *_overrides(tmp_path / f"stages_{name}", tmp_path / name, *extra)]

    t0 = time.time()
    res = subprocess.run(cmd("whole"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    t_whole = time.time() - t0

    stages = tmp_path / "stages_killed"
    proc = subprocess.Popen(cmd("killed"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    second = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            segs = _segment_dirs(stages)
            done = [d for d in segs if (d / "_stage.json").exists()]
            running = [d for d in segs if not (d / "_stage.json").exists()
                       and (d / "trajectory" / "checkpoint-1" / "model.safetensors").exists()]
            if len(done) == 1 and running:
                second = running[0]
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers (its own session)
        proc.wait(timeout=60)
    assert second is not None, "the run never reached its second segment"
    assert not (second / "_stage.json").exists()  # killed mid-segment
    # complete checkpoints of the killed segment (trainer_state.json is written last): resumed from,
    # not retrained; a save cut short is discarded
    kept = {c: (c / "model.safetensors").stat().st_mtime_ns for c in (second / "trajectory").glob("checkpoint-*")
            if (c / "trainer_state.json").exists()}
    assert not (second / "trajectory" / "checkpoint-3" / "trainer_state.json").exists()
    first = [d for d in _segment_dirs(stages) if (d / "_stage.json").exists()][0]
    first_marker = (first / "_stage.json").stat().st_mtime_ns

    res = subprocess.run(cmd("killed"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (first / "_stage.json").stat().st_mtime_ns == first_marker  # the complete segment was not redone
    for c, mtime in kept.items():
        assert (c / "model.safetensors").stat().st_mtime_ns == mtime, c
    print(f"killed during segment 2 with complete checkpoints {sorted(c.name for c in kept)}")
    metrics = [json.loads(line)["step"] for line in (second / "train_metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2, 3]  # each step once, after the resume too

    whole = json.loads((tmp_path / "whole" / "regrounding.json").read_text())
    killed = json.loads((tmp_path / "killed" / "regrounding.json").read_text())
    assert [p["real_steps"] for p in killed["std_rl"]] == [0, 3, 6]  # plain GRPO, same budget
    for key in ("std_rl",):
        assert killed[key] == whole[key]
    assert [m["points"] for m in killed["methods"]] == [m["points"] for m in whole["methods"]]
    w_last = load_file(Path(whole["methods"][0]["segments"][-1]["model"]) / "model.safetensors")
    k_last = load_file(Path(killed["methods"][0]["segments"][-1]["model"]) / "model.safetensors")
    for name in w_last:
        assert torch.equal(w_last[name], k_last[name]), name
    assert (tmp_path / "killed" / "report.md").exists()
    print(f"uninterrupted run {t_whole:.1f}s")


def test_a_first_save_cut_short_is_discarded(tmp_path):
    """A kill while TRL writes the first checkpoint of a segment (weights there, trainer_state.json
    not yet) leaves nothing resumable: the partial checkpoint is removed and the segment restarts."""
    from rlvr_linearity.train.trl_grpo import _resumable, saved_steps

    ck = tmp_path / "checkpoint-1"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    (ck / "model.safetensors").write_bytes(b"partial")
    assert saved_steps(tmp_path) == [1]
    assert _resumable(tmp_path) is None and not ck.exists()


def test_paper_preset_plans_lins_loop(tmp_path, capsys):
    """experiment=paper/lin_regrounding: verl, LIN's (100,100) x 12 and Fig. 6's configurations on
    the same 1,200 real steps; the dry run lists every stage without running anything."""
    from rlvr_linearity.pipeline.regrounding import run_regrounding
    from rlvr_linearity.pipeline.regrounding_configs import configurations

    cfg = _compose(["experiment=paper/lin_regrounding", "logger=none", "pipeline.dry_run=true",
                    f"pipeline.stage_dir={tmp_path / 'stages'}", f"output_dir={tmp_path / 'out'}"])
    assert cfg.train.backend == "verl" and cfg.regrounding.optimizer == "reset"
    confs = configurations(cfg)
    assert [(c["label"], c["iterations"], c["alpha"]) for c in confs] == [
        ("(100,100)", 12, 2.0), ("(300,300)", 4, 2.0), ("(300,600)", 4, 3.0), ("(20,100)", 60, 6.0)]
    listing = run_regrounding(cfg, tmp_path / "out")["dry_run"]
    names = [row["stage"] for row in listing]
    assert names.count("train") == 1 and not any(row["cached"] for row in listing)
    assert sum(n.startswith("rg_") and "_seg" in n and not n.startswith("eval") for n in names) == 12 + 4 + 4 + 60
    assert "rg_100_100_extra11" in names and "eval_rg_20_100_seg59_extrapolated" in names
    assert not (tmp_path / "out" / "regrounding.json").exists()
