"""Live forecasting: incremental R² == batch R², the Forecaster's schedule / RELEX outputs / final
comparison, verl's checkpoint callback, `rlvr linearity watch=true` following a directory that
fills up step by step, and a TRL run that forecasts while it trains (W&B offline + JSONL)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, compose_config, make_trajectory

ROOT = REPO_ROOT


class FakeTracker:
    def __init__(self):
        self.logs, self.summaries, self.tables = [], [], []

    def log(self, metrics, step=None):
        self.logs.append((step, dict(metrics)))

    def summary(self, values):
        self.summaries.append(dict(values))

    def table(self, name, rows):
        self.tables.append((name, rows))


def wandb_history(run_dir: Path) -> list[dict]:
    """History rows of the offline W&B run under run_dir (parses the .wandb record log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    data = Path(files[0]).read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, block, buf = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (2, 3):  # FIRST, MIDDLE
            buf = chunk if kind == 2 else buf + chunk
            continue
        rec = pb.Record()
        rec.ParseFromString(buf + chunk if kind == 4 else chunk)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------- incremental R²
def test_incremental_r2_equals_batch(tmp_path):
    """Random-walk trajectory with gaps, 1-D tensors included, steps arriving out of order:
    per-weight R² and the summary equal the batch computation (float64) to 1e-10."""
    from rlvr_linearity.linearity.r2 import WindowDesign, block_deltas, block_r2
    from rlvr_linearity.linearity.stream import StreamingR2
    from rlvr_linearity.linearity.weights import weight_linearity
    from rlvr_linearity.trajectory import open_trajectory

    tt = make_trajectory(tmp_path, "checkpoint", steps=(1, 2, 5, 6, 9, 13), drift="random", write_json=True)
    traj = open_trajectory(path=tt.path)
    mem = StreamingR2(traj.base, chunk_elements=1000)  # several chunks per tensor
    disk = StreamingR2(traj.base, state_dir=tmp_path / "state")
    for s in (5, 1, 13, 2, 9, 6):
        mem.update(s, traj.model(s))
        disk.update(s, traj.model(s))
    design = WindowDesign.build(traj.steps, [len(traj.steps)])
    one_d = 0
    for name in traj.tensor_names:
        block = torch.stack([tt.values[s][name].reshape(-1) for s in traj.steps])
        ref = block_r2(block_deltas(block), design)[0]
        for st in (mem, disk):
            got = st.r2(name).reshape(-1)
            assert torch.equal(torch.isnan(got), torch.isnan(ref)), name
            ok = ~torch.isnan(ref)
            assert torch.allclose(got[ok], ref[ok], rtol=0, atol=1e-10), name
        one_d += len(traj.base.shape(name)) == 1
    assert one_d >= 4  # norms and biases covered
    batch = weight_linearity(traj, engine="torch", progress=False)
    inc = mem.summary()
    assert inc["steps"] == batch["steps"] and inc["n_weights"] == batch["n_weights"]
    assert inc["n_defined"] == batch["n_defined"]
    for k in ("mean", "median"):
        assert abs(inc[k] - batch[k]) < 1e-10
    assert inc["frac_above"] == pytest.approx(batch["frac_above"], abs=1e-12)
    for a, b in zip(inc["per_tensor"], batch["per_tensor"]):
        assert a["name"] == b["name"] and a["n_defined"] == b["n_defined"]
        assert abs(a["mean"] - b["mean"]) < 1e-10 and abs(a["median"] - b["median"]) < 1e-10


# ---------------------------------------------------------------------------- Forecaster
def test_forecaster_schedule_relex_output_keep_and_final(tmp_path):
    from rlvr_linearity.extrapolate.relex import Window, run_relex
    from rlvr_linearity.forecast import Forecaster, ForecastSettings
    from rlvr_linearity.trajectory import open_trajectory

    tt = make_trajectory(tmp_path / "t", "checkpoint", steps=(1, 2, 3, 4, 6, 8, 10), noise=1e-4, write_json=True)
    tr = FakeTracker()
    evals = []

    def evaluator(model, out):
        evals.append((model, out))
        return {"arithmetic": {"accuracy": 0.5}}

    fc = Forecaster(tmp_path / "out", tt.base, ForecastSettings(start_step=3, every=2, keep=1, evaluate=True),
                    target=10, trajectory_path=tt.path, tracker=tr, evaluator=evaluator)
    for s in tt.steps:
        fc.observe(s, tt.step_dirs[s])
    root = tmp_path / "out" / "forecast"
    recs = _jsonl(root / "forecasts.jsonl")
    # saved steps >= 3: 3 (first), 4, 6 (2 since), 8, 10 = target (no forecast)
    assert [r["observed_step"] for r in recs] == [3, 6]
    assert recs[1]["observed_steps"] == [1, 2, 3, 4, 6] and recs[1]["accuracy"] == 0.5
    assert not (root / "observed_3" / "step_10").exists()  # keep=1: only the newest model
    pred = root / "observed_6" / "step_10"
    # the same prediction as `rlvr extrapolate` (run_relex) from the same steps
    traj = open_trajectory(path=tt.path, max_step=6)
    run_relex(traj, [Window("h6", [1, 2, 3, 4, 6], 6)], [10], tmp_path / "ref")
    ref, got = load_file(tmp_path / "ref" / "step_10" / "model.safetensors"), load_file(pred / "model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # logged at the observed steps; R² every saved step, forecasts at 3 and 6, final at 10
    steps = [s for s, _ in tr.logs]
    assert steps == tt.steps
    by = dict(tr.logs)
    assert by[3]["forecast/observed_step"] == 3 and by[6]["forecast/accuracy"] == 0.5
    assert "forecast/observed_step" not in by[4] and all("forecast/r2_median" in m for m in by.values())
    assert by[6]["forecast/relex_ev_mean"] > 0.99
    final = json.loads((root / "final.json").read_text())
    assert final["actual_accuracy"] == 0.5
    kept = [f for f in final["forecasts"] if "rel_error" in f]
    assert [f["observed_step"] for f in kept] == [6]
    assert kept[0]["rel_error"] < 0.01 < kept[0]["rel_error_observed"]  # linear drift: RELEX nails it
    assert by[10]["forecast/final_rel_error"] == kept[0]["rel_error"]
    assert [e[1].name for e in evals] == ["eval_forecast", "eval_forecast", "actual_10"]
    assert json.loads((root / "weights_r2.json").read_text())["steps"] == [0, *tt.steps]


def test_verl_checkpoint_callback(tmp_path, monkeypatch):
    """verl's `trainer.checkpoint_callback_class` hook: rlvr config from DIR/tracking.jsonl."""
    from omegaconf import OmegaConf

    from rlvr_linearity.forecast.hooks import VerlForecastCallback

    tt = make_trajectory(tmp_path / "run", "verl", steps=(1, 2, 3, 4))
    run = tmp_path / "run"
    # the run's config as its Tracker records it (the whole composed config, resolved)
    cfg = OmegaConf.to_container(compose_config("train", "logger=none", "forecast.enabled=true", "forecast.start_step=2",
                                                "forecast.every=1", f"trajectory.base={tt.base}"), resolve=True)
    (run / "tracking.jsonl").write_text(json.dumps({"event": "config", "config": cfg}) + "\n")
    vcfg = OmegaConf.create({"trainer": {"default_local_dir": str(tt.path), "total_training_steps": 4}})
    monkeypatch.delenv("RLVR_FORECAST_CONFIG", raising=False)
    cb = VerlForecastCallback(config=vcfg)
    for s in (1, 2, 3):  # verl calls on_save after writing latest_checkpointed_iteration.txt
        (tt.path / "latest_checkpointed_iteration.txt").write_text(str(s))
        cb.on_save(trainer=None, global_step=s, checkpoint_dir=str(tt.path / f"global_step_{s}"))
    recs = _jsonl(run / "forecast" / "forecasts.jsonl")
    assert [r["observed_step"] for r in recs] == [2, 3] and all(r["target"] == 4 for r in recs)
    assert (run / "forecast" / "observed_3" / "step_4" / "model.safetensors").exists()
    events = _jsonl(run / "forecast" / "tracking.jsonl")
    assert [e["step"] for e in events if e["event"] == "metrics"] == [1, 2, 3]


def test_forecasting_leaves_the_random_state_alone(tmp_path, monkeypatch):
    """Forecasting runs between a checkpoint save and the next training step: whatever it seeds or
    draws (the HF evaluator calls torch.manual_seed), training then draws what it would without it."""
    import random

    import numpy as np

    from rlvr_linearity.forecast.hooks import _Live

    def reseeding(self):
        torch.manual_seed(0), random.seed(0), np.random.seed(0)
        torch.rand(3), random.random(), np.random.rand()
        return [{"observed_step": 1}]

    def draws():
        return torch.rand(4), random.random(), np.random.rand()

    monkeypatch.setattr(_Live, "_saved", reseeding)
    live = _Live(None, tmp_path, tmp_path / "trajectory", None, None)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected = draws()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    assert live.saved() == [{"observed_step": 1}]
    got = draws()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.parametrize("enabled", [True, False])
def test_verl_config_names_the_callback_when_enabled(enabled, tmp_path, monkeypatch):
    """`rlvr train trainer=verl forecast.enabled=true`: verl's composed and validated config names
    VerlForecastCallback as trainer.checkpoint_callback_class (null otherwise); trl gets no hook."""
    pytest.importorskip("verl")
    from omegaconf import OmegaConf

    from rlvr_linearity.forecast.hooks import trl_callbacks
    from rlvr_linearity.train.verl_launcher import write_verl_config

    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"problem": f"Compute {i} + {i}.", "answer": str(2 * i)}) + "\n"
                             for i in range(20)))
    cfg = compose_config("train", "logger=none", "trainer=verl", "train.model=/models/base", "train.dataset=deepscaler",
                         f"train.train_file={train}", "train.val_size=4", "train.val_dataset=null",
                         f"forecast.enabled={str(enabled).lower()}")
    v = OmegaConf.load(write_verl_config(cfg, tmp_path / "run"))
    want = "rlvr_linearity.forecast.hooks.VerlForecastCallback" if enabled else None
    assert v.trainer.checkpoint_callback_class == want
    assert (len(trl_callbacks(cfg, tmp_path)) == 1) == enabled


# ---------------------------------------------------------------------------- watch mode
def _copy_steps_slowly(src: dict, dst: Path, delay: float, done: threading.Event, ready: Path) -> None:
    """Once `ready` exists (the watcher is up), write steps into dst one by one like a trainer:
    config first, the weights in two halves."""
    try:
        t0 = time.time()
        while not ready.exists() and time.time() - t0 < 120:
            time.sleep(0.1)
        time.sleep(1.0)
        for s, d in sorted(src.items()):
            out = dst / f"step_{s}"
            out.mkdir(parents=True)
            for f in d.iterdir():
                if f.name != "model.safetensors":
                    shutil.copy2(f, out / f.name)
            data = (d / "model.safetensors").read_bytes()
            with open(out / "model.safetensors", "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(delay)
                f.write(data[len(data) // 2:])
            time.sleep(delay)
    finally:
        done.set()


@pytest.mark.slow
def test_watch_follows_a_directory_as_steps_appear(tmp_path):
    """`rlvr linearity trajectory.path=DIR watch=true` while a thread writes the steps (half-written
    weight files included): forecasts from start_step on, R² == batch at the end, W&B + JSONL."""
    from rlvr_linearity.linearity.weights import weight_linearity
    from rlvr_linearity.trajectory import open_trajectory

    tt = make_trajectory(tmp_path / "src", "step", steps=(1, 2, 3, 5, 6, 9), drift="random")
    live = tmp_path / "live"
    live.mkdir()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", RLVR_CACHE_DIR=str(tmp_path / "cache"), TQDM_DISABLE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlvr_linearity", "linearity", f"trajectory.path={live}", f"trajectory.base={tt.base}",
         "watch=true", "forecast.start_step=3", "forecast.target=9", "forecast.poll_s=0.2", "forecast.timeout_s=60",
         f"output_dir={out}", "logger=wandb"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()
    writer = threading.Thread(target=_copy_steps_slowly, args=(tt.step_dirs, live, 0.6, done, out / "tracking.jsonl"))
    writer.start()
    try:
        stdout, _ = proc.communicate(timeout=180)
    finally:
        writer.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:]
    assert done.is_set()
    root = out / "forecast"
    recs = _jsonl(root / "forecasts.jsonl")
    obs = [r["observed_step"] for r in recs]
    assert obs and obs[0] == 3 and set(obs) <= {3, 5, 6} and obs == sorted(obs)
    for r in recs:  # each forecast saw exactly the steps saved by then
        assert r["observed_steps"] == [s for s in tt.steps if s <= r["observed_step"]]
        assert Path(r["path"], "model.safetensors").exists()
    r2_lines = _jsonl(root / "r2.jsonl")
    assert r2_lines[-1]["steps"] == [0, *tt.steps]
    batch = weight_linearity(open_trajectory(path=live, base=tt.base), engine="torch", progress=False)
    assert abs(r2_lines[-1]["mean"] - batch["mean"]) < 1e-10 and abs(r2_lines[-1]["median"] - batch["median"]) < 1e-10
    events = _jsonl(out / "tracking.jsonl")
    logged = [e["step"] for e in events if e["event"] == "metrics" and "forecast/r2_median" in e["metrics"]]
    assert logged == sorted(logged) and logged[-1] == 9
    hist = wandb_history(out)
    assert {r["_step"] for r in hist if "forecast/relex_ev_mean" in r} == set(obs)
    # watching the finished directory again into the same output: one line per step, not two
    res = subprocess.run(
        [sys.executable, "-m", "rlvr_linearity", "linearity", f"trajectory.path={live}", f"trajectory.base={tt.base}",
         "watch=true", "forecast.start_step=3", "forecast.target=9", "forecast.poll_s=0.2", "forecast.timeout_s=1",
         f"output_dir={out}", "logger=none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    again = [r["observed_step"] for r in _jsonl(root / "forecasts.jsonl")]
    assert sorted(again) == sorted(set(again)) and set(obs) <= set(again)
    r2_steps = [r["observed_step"] for r in _jsonl(root / "r2.jsonl")]
    assert sorted(r2_steps) == sorted(set(r2_steps)) == tt.steps


# ---------------------------------------------------------------------------- TRL run
@pytest.mark.slow
def test_trl_run_forecasts_while_training(rlvr_cache, tmp_path):
    """8 GRPO steps on a tiny model with forecast.enabled=true, start_step=3, evaluated: forecasts
    are written between checkpoints (before the next one exists) and land in the W&B offline run
    and in forecasts.jsonl / tracking.jsonl."""
    from conftest import TRL_RECIPE as RECIPE, TRL_TASK as TASK

    out = tmp_path / "run"
    task = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TASK.items()]
    tiny = [f"train.tiny.{k}={v}" for k, v in RECIPE.items()]
    cmd = [sys.executable, "-m", "rlvr_linearity", "train", "trainer=trl", "train.steps=8", "train.group_size=4",
           "train.prompts_per_step=4", "train.max_completion_length=8", "train.lr=0.01", f"output_dir={out}",
           "logger=wandb", "forecast.enabled=true", "forecast.start_step=3", "forecast.evaluate=true",
           "forecast.keep=2", "sampling.max_tokens=8", *task, *tiny]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", RLVR_CACHE_DIR=str(rlvr_cache), TQDM_DISABLE="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    root = out / "forecast"
    recs = _jsonl(root / "forecasts.jsonl")
    assert [r["observed_step"] for r in recs] == [3, 4, 5, 6, 7]
    traj = out / "trajectory"
    for r in recs:
        assert r["target"] == 8 and r["observed_steps"] == list(range(1, r["observed_step"] + 1))
        assert 0.0 <= r["accuracy"] <= 1.0 and r["relex"]["explained_variance"]["n"] > 0
        # written during training: after its own checkpoint, before the next one
        s = r["observed_step"]
        assert (traj / f"checkpoint-{s}" / "model.safetensors").stat().st_mtime <= r["time"]
        assert r["time"] <= (traj / f"checkpoint-{s + 1}" / "model.safetensors").stat().st_mtime
    kept = sorted(p.parent.parent.name for p in root.glob("observed_*/step_8/model.safetensors"))
    assert kept == ["observed_6", "observed_7"]  # keep=2
    final = json.loads((root / "final.json").read_text())
    assert [f["observed_step"] for f in final["forecasts"] if "rel_error" in f] == [6, 7]
    events = _jsonl(out / "tracking.jsonl")
    fsteps = [e["step"] for e in events if e["event"] == "metrics" and "forecast/accuracy" in e["metrics"]]
    assert fsteps == [3, 4, 5, 6, 7]
    hist = wandb_history(out)
    rows = {r["_step"]: r for r in hist}
    for r in recs:
        row = rows[r["observed_step"]]
        assert row["forecast/accuracy"] == r["accuracy"] and row["forecast/observed_step"] == r["observed_step"]
        assert "train/reward_mean" in row  # beside the training metrics of the same step
    assert "forecast/final_rel_error" in rows[8]
