import json
import threading

from rlvr_linearity.pipeline.stages import MARKER, StageCache, stage_key


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
