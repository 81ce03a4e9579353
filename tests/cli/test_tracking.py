"""Tracking: tracking.jsonl always; W&B offline without a key; `logger=none` writes no W&B run;
a multirun's jobs share the sweep as their W&B group.

The commands run through the real CLI (Hydra app, config, tracking) with `rlvr figures`' app
swapped for a probe that logs metrics, a table, a figure and a summary, so these tests do not
depend on the state of the other commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import json, os
from pathlib import Path

def run(cfg, tracker):
    from rlvr_linearity.paths import resolve_output_dir
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = resolve_output_dir(cfg)
    for step in range(3):
        tracker.log({"loss": 1.0 / (step + 1), "seed": cfg.seed}, step=step)
    tracker.table("per_tensor", [{"name": "w", "r2": 0.9}, {"name": "b", "r2": float("nan")}])
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(out / "line.png")
    plt.close(fig)
    tracker.figure("line", out / "line.png")
    tracker.summary({"seed": cfg.seed, "group": tracker.group})
'''

SITECUSTOMIZE = '''
try:
    import rlvr_linearity.cli as _cli
    _cli.COMMANDS["figures"] = ("rlvr_probe_app", "probe")
except Exception:
    pass
'''


@pytest.fixture()
def probe_env(tmp_path):
    pkg = tmp_path / "probe_path"
    pkg.mkdir()
    (pkg / "rlvr_probe_app.py").write_text(PROBE)
    (pkg / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), *filter(None, [env.get("PYTHONPATH")])])
    env["RLVR_CACHE_DIR"] = str(tmp_path / "cache")
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc
    (tmp_path / "home").mkdir()
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_RUN_GROUP", "WANDB_DISABLED"):
        env.pop(key, None)
    return env


def _rlvr(env, cwd, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "rlvr_linearity", "figures", *args], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "tracking.jsonl").read_text().splitlines()]


def test_offline_wandb_run_without_key(probe_env, tmp_path):
    out = tmp_path / "run"
    _rlvr(probe_env, tmp_path, f"output_dir={out}", "seed=7")
    runs = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    events = _events(out)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "config" and kinds[-1] == "end"
    assert kinds.count("metrics") == 3 and "table" in kinds and "figure" in kinds and "summary" in kinds
    config = events[0]
    assert config["wandb"]["mode"] == "offline"
    # the resolved config: interpolations replaced by values
    assert config["config"]["paths"]["cache_dir"] == str(tmp_path / "cache")
    assert config["config"]["seed"] == 7 and config["group"] is None
    assert events[-1]["failed"] is False
    # the figure went to W&B as media
    assert list(out.glob("wandb/offline-run-*/files/media/images/line_*.png"))


def test_logger_none_writes_no_wandb_run(probe_env, tmp_path):
    out = tmp_path / "run"
    _rlvr(probe_env, tmp_path, f"output_dir={out}", "logger=none")
    assert not (out / "wandb").exists()
    assert not list(tmp_path.rglob("offline-run-*"))
    events = _events(out)
    assert events[0]["wandb"] is None
    assert [e["event"] for e in events].count("metrics") == 3


def test_multirun_jobs_share_the_sweep_as_group(probe_env, tmp_path):
    sweep = tmp_path / "my_sweep"
    _rlvr(probe_env, tmp_path, "-m", "seed=1,2", f"hydra.sweep.dir={sweep}")
    groups = set()
    for num in (0, 1):
        job = sweep / str(num)
        assert list(job.glob("wandb/offline-run-*/run-*.wandb"))
        config = _events(job)[0]
        assert config["sweep"]["num"] == num and config["sweep"]["name"] == "my_sweep"
        assert config["name"] == f"figures-my_sweep-{num}"
        groups.add(config["group"])
        groups.add(config["wandb"]["group"])
    assert groups == {"figures-my_sweep"}


def test_explicit_group_wins(probe_env, tmp_path):
    sweep = tmp_path / "s"
    _rlvr(probe_env, tmp_path, "-m", "seed=3", f"hydra.sweep.dir={sweep}", "logger.group=ablation-A")
    config = _events(sweep / "0")[0]
    assert config["group"] == config["wandb"]["group"] == "ablation-A"


def test_only_rank_zero_of_a_multinode_job_reports(probe_env, tmp_path):
    out = tmp_path / "run"
    _rlvr({**probe_env, "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, tmp_path, f"output_dir={out}")
    assert not (out / "tracking.jsonl").exists() and not (out / "wandb").exists()
    assert [e["event"] for e in _events_file(out / "tracking.rank1.jsonl")].count("metrics") == 3


def _events_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("logger", ["wandb", "none"])
def test_real_command_writes_offline_wandb_run(logger, tmp_path):
    """`rlvr linearity` on a tiny trajectory, no key and WANDB_MODE unset: offline W&B run files
    (or none with logger=none) next to tracking.jsonl, which holds the metrics either way."""
    pytest.importorskip("rlvr_linearity.trajectory")
    from conftest import make_trajectory

    traj = make_trajectory(tmp_path / "traj", "checkpoint", steps=(1, 2, 3, 4), write_json=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), RLVR_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "rlvr_linearity", "linearity", f"trajectory.path={traj.path}",
                        "linearity.lowrank=false", f"output_dir={out}", f"logger={logger}"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == (1 if logger == "wandb" else 0)
    events = _events(out)
    assert events[0]["event"] == "config" and events[-1] == {**events[-1], "event": "end", "failed": False}
    assert (out / "linearity" / "weights_r2.json").exists()


def test_offline_run_reads_back_curves_figures_tables_and_references(tmp_path, monkeypatch):
    """What the pipeline's story sends, read back from the offline run's transaction log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from omegaconf import OmegaConf
    from wandb_records import read_run

    from rlvr_linearity.tracking import Tracker

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = OmegaConf.create({"logger": {"backend": "wandb", "project": "p", "entity": None, "group": None, "name": None,
                                       "tags": [], "mode": "offline", "dir": None},
                            "experiment_name": "x", "seed": 7})
    out = tmp_path / "run"
    out.mkdir()
    t = Tracker(cfg, "pipeline", out)
    t.curve("train", [{"step": s, "reward_mean": s / 10, "kl": 0.01 * s, "note": "text"} for s in (1, 2, 3)])
    t.curve("eval", [{"step": 0, "trained": 0.3}, {"step": 5, "trained": 0.5, "relex_h3": 0.45}])
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(out / "a.png")
    plt.close(fig)
    t.figure("figures/a", out / "a.png")
    t.table("samples", [{"model": "base", "response": "\\boxed{3}", "correct": True}])
    (out / "traj").mkdir()
    (out / "traj" / "model.safetensors").write_bytes(b"x" * 10)
    t.reference("trajectory", "trajectory", out / "traj")
    t.summary({"time/total": 3.0})
    t.finish()

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    run = read_run(run_dir)
    assert run["config"]["seed"] == 7 and run["config"]["experiment_name"] == "x"
    assert ("train/*", "train/step") in run["metrics"] and ("eval/*", "eval/step") in run["metrics"]
    train = [h for h in run["history"] if "train/step" in h]
    assert [(h["train/step"], h["train/reward_mean"]) for h in train] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert all("train/note" not in h for h in train)  # only numbers become series
    assert [h.get("eval/relex_h3") for h in run["history"] if "eval/step" in h] == [None, 0.45]
    image = next(h for h in run["history"] if "figures/a/_type" in h)
    assert image["figures/a/_type"] == "image-file" and (run_dir / "files" / image["figures/a/path"]).is_file()
    table = next(h for h in run["history"] if "samples/_type" in h)
    data = json.loads((run_dir / "files" / table["samples/path"]).read_text())
    assert data["columns"] == ["correct", "model", "response"] and data["data"] == [[True, "base", "\\boxed{3}"]]
    assert run["summary"]["time/total"] == 3.0
    traj = [a for a in run["artifacts"] if a[1] == "trajectory"]
    assert traj and traj[0][2] == [(out / "traj" / "model.safetensors").resolve().as_uri()]  # listed, not hashed
    assert not list((run_dir / "files").rglob("model.safetensors"))  # referenced, not copied
