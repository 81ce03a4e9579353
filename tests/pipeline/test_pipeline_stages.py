import json
import threading

from rlvr_linearity.io import stage_key
from rlvr_linearity.pipeline.stages import MARKER, StageCache


def test_stage_runs_once_and_is_reused(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def work(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"value": 3}

    first = cache.run("train", {"lr": 1}, work)
    second = StageCache(tmp_path).run("train", {"lr": 1}, work)
    assert len(calls) == 1 and not first.cached and second.cached
    assert second.result == {"value": 3} and second.path == first.path
    other = cache.run("train", {"lr": 2}, work)
    assert len(calls) == 2 and other.path != first.path


def test_inputs_change_the_key():
    assert stage_key("a", {"x": 1}, ["t1"]) != stage_key("a", {"x": 1}, ["t2"])
    assert stage_key("a", {"x": 1, "y": 2}) == stage_key("a", {"y": 2, "x": 1})


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    cache = StageCache(tmp_path)

    def boom(d):
        (d / "partial").write_text("half")
        raise RuntimeError("killed")

    try:
        cache.run("s", {}, boom)
    except RuntimeError:
        pass
    stage_dir = cache.path("s", stage_key("s", {}))
    assert (stage_dir / "partial").exists() and not (stage_dir / MARKER).exists()
    seen = []
    res = cache.run("s", {}, lambda d: seen.append((d / "partial").read_text()) or {"ok": 1})
    assert seen == ["half"] and res.result == {"ok": 1}  # resumes in the same directory
    assert json.loads((stage_dir / MARKER).read_text())["result"] == {"ok": 1}


def test_concurrent_jobs_compute_a_stage_once(tmp_path):
    calls = []
    lock = threading.Lock()

    def work(d):
        with lock:
            calls.append(1)
        return {}

    threads = [threading.Thread(target=lambda: StageCache(tmp_path).run("g", {"k": 1}, work)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_pipeline_on_a_given_trajectory_dry_run_agrees_with_the_run(tmp_path):
    """A dry run keys a given trajectory by its content, as the run does: after the run, it lists
    every stage as cached; results.json names the trajectory."""
    import os
    import subprocess
    import sys

    from conftest import make_trajectory

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3, 4, 6), write_json=True)
    args = [sys.executable, "-m", "rlvr_linearity", "pipeline", "logger=none", f"trajectory.path={tt.path}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}",
            "pipeline.stages=[linearity,relex,weight]", "extrapolate.windows=[2,3]",
            "extrapolate.targets=[6,8]", "pipeline.weight.pairs=[[0,2]]", "pipeline.weight.targets=[4]"]
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def listing():
        res = subprocess.run(args + ["pipeline.dry_run=true"], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return [line.split() for line in res.stdout.splitlines() if line.strip().startswith(("to run", "cached"))]

    before = listing()
    assert [row[-2] for row in before] == ["linearity", "relex", "weight_0_2"] and all(r[0] == "to" for r in before)
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["trajectory"] == str(tt.path)
    after = listing()
    assert [r[0] for r in after] == ["cached"] * 3 and [r[-1] for r in after] == [r[-1] for r in before]
