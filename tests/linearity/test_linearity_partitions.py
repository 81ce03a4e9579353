"""Tensor-partitioned `rlvr linearity` (partition.count/index) and its merge: equal to one run.

The Slurm versions of these runs are in tests/cli/test_slurm.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import compose_config, differences, make_trajectory

from rlvr_linearity.errors import ConfigError, RlvrError
from rlvr_linearity.linearity.kernels.common import available as numba_available
from rlvr_linearity.paths import partition_dir
from rlvr_linearity.partitions import assign

STEPS = (1, 2, 3, 5, 8)


def test_assignment_is_balanced_disjoint_and_deterministic():
    sizes = {f"t{i}": s for i, s in enumerate([90, 10, 40, 40, 30, 30, 20, 5, 5, 1])}
    parts = assign(sizes, 3)
    assert sorted(n for p in parts for n in p) == sorted(sizes)  # disjoint and complete
    loads = [sum(sizes[n] for n in p) for p in parts]
    assert max(loads) - min(loads) <= 10  # LPT: within the smallest tensor that could move
    assert all(p == [n for n in sizes if n in p] for p in parts)  # each in the model's order
    assert assign(dict(reversed(list(sizes.items()))), 3) == [list(reversed(p)) for p in parts]  # names, not order
    with pytest.raises(ConfigError, match="only 10 tensors"):
        assign(sizes, 11)


def _cfg(tt, *extra):
    return compose_config("linearity", "logger=none", f"trajectory.path={tt.path}", "linearity.windows=[3,all]", *extra)


@pytest.mark.parametrize("engine", ["torch", pytest.param("kernel", marks=pytest.mark.skipif(
    not numba_available(), reason="numba not installed (fused kernel)"))])
def test_three_partitions_merge_into_the_single_run(tmp_path, rlvr_cache, engine):
    """weights_r2.json (histograms, per-tensor rows, medians exactly; means to float rounding) and
    lowrank.json of 3 partitions equal the single run's; the embedding (81920 weights) is large
    enough for the kernel's histogram path."""
    from rlvr_linearity.linearity.app import analyse
    from rlvr_linearity.linearity.partition import merge, run_partition

    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", write_json=True, hidden=256, layers=1)
    single = tmp_path / "single"
    analyse(_cfg(tt, f"linearity.engine={engine}"), single)
    out = tmp_path / "parts"
    for i in range(3):
        share = run_partition(_cfg(tt, f"linearity.engine={engine}", "partition.count=3", f"partition.index={i}"),
                              partition_dir(out, 3, i))
        assert share["tensors"] > 0
    summary = merge(_cfg(tt, f"linearity.engine={engine}", "partition.count=3", "partition.merge=true"), out)
    for name in ("weights_r2.json", "lowrank.json"):
        a = json.loads((single / "linearity" / name).read_text())
        b = json.loads((out / "linearity" / name).read_text())
        assert differences(a, b) == [], name
    w = json.loads((out / "linearity" / "weights_r2.json").read_text())
    assert summary["median"] == w["median"] and (out / "figures" / "weight_r2_histogram.png").exists()
    assert (w["median_error_bound"] > 0) == (engine == "kernel")  # the kernel's fine histogram was merged


def test_partitions_respect_lin_options(tmp_path, rlvr_cache):
    """linearity.tensors=weights_only, a linearity.steps subset, the bf16 unique filter and
    linearity.max_step: weight R² is shared over the *.weight tensors alone, the Grams over every
    tensor up to max_step, and the merge equals the single run with the same options."""
    from rlvr_linearity.linearity.app import analyse
    from rlvr_linearity.linearity.partition import merge, run_partition

    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", write_json=True)
    opts = ["linearity.tensors=weights_only", "linearity.steps=[2,3,5]", "linearity.max_step=5",
            "linearity.unique_filter_dtype=bfloat16", "linearity.min_unique=2"]
    single = tmp_path / "single"
    expect = analyse(_cfg(tt, *opts), single)
    assert expect["r2_steps"] == [0, 2, 3, 5] and expect["steps"] == [0, 1, 2, 3, 5]
    out = tmp_path / "parts"
    shares = []
    for i in range(3):
        run_partition(_cfg(tt, *opts, "partition.count=3", f"partition.index={i}"), partition_dir(out, 3, i))
        shares.append(json.loads((partition_dir(out, 3, i) / "linearity" / "partition.json").read_text())["names"])
    weights = [n for s in shares for n in s["weights"]]
    assert sorted(weights) == sorted(n for n in tt.names if n.endswith(".weight"))  # disjoint, *.weight only
    assert sorted(n for s in shares for n in s["lowrank"]) == sorted(tt.names)  # biases' Grams too
    summary = merge(_cfg(tt, *opts, "partition.count=3", "partition.merge=true"), out)
    assert summary["r2_steps"] == expect["r2_steps"] and summary["steps"] == expect["steps"]
    for name in ("weights_r2.json", "lowrank.json"):
        a = json.loads((single / "linearity" / name).read_text())
        b = json.loads((out / "linearity" / name).read_text())
        assert differences(a, b) == [], name
    w = json.loads((out / "linearity" / "weights_r2.json").read_text())
    assert w["steps"] == [0, 2, 3, 5] and w["filters"]["unique_filter_dtype"] == "bfloat16"


def _rlvr(*args, env):
    return subprocess.run([sys.executable, "-m", "rlvr_linearity", "linearity", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_multirun_merges_and_a_missing_partition_is_named_then_rerun_alone(tmp_path, rlvr_cache):
    """The basic launcher's version of the Slurm test: a sweep with partition 1 missing fails with
    one line naming it; partition 1 killed before it finished (no marker) is still named; rerun
    alone, it completes the merge (the others are not redone) into the single run's outputs."""
    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", write_json=True)
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache)}
    common = [f"trajectory.path={tt.path}", "logger=none", "linearity.windows=[3,all]"]
    single, out = tmp_path / "single", tmp_path / "D"
    assert _rlvr(*common, f"output_dir={single}", env=env).returncode == 0
    r = _rlvr("-m", *common, f"output_dir={out}", "partition.count=3", "partition.index=0,2",
              f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("rlvr linearity: error: cannot merge linearity: partition(s) 1 of 3") and "Traceback" not in r.stderr
    assert not (out / "linearity" / "weights_r2.json").exists()
    # partition 1 started and was killed: a share written, no marker
    r = _rlvr(*common, f"output_dir={out}", "partition.count=3", "partition.index=1", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    marker = partition_dir(out, 3, 1) / "linearity" / "partition.json"
    marker.unlink()
    r = _rlvr(*common, f"output_dir={out}", "partition.count=3", "partition.merge=true", env=env)
    assert r.returncode == 2 and "partition(s) 1 of 3" in r.stderr.strip().splitlines()[-1]
    done = [(partition_dir(out, 3, i) / "linearity" / "partition.json").stat().st_mtime_ns for i in (0, 2)]
    r = _rlvr("-m", *common, f"output_dir={out}", "partition.count=3", "partition.index=1",
              f"hydra.sweep.dir={tmp_path / 'sweep1'}", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "merged 3 partitions" in r.stdout
    assert [(partition_dir(out, 3, i) / "linearity" / "partition.json").stat().st_mtime_ns for i in (0, 2)] == done
    for name in ("weights_r2.json", "lowrank.json"):
        a = json.loads((single / "linearity" / name).read_text())
        assert differences(a, json.loads((out / "linearity" / name).read_text())) == [], name


def _files(d):
    return {str(f.relative_to(d)): f.stat().st_mtime_ns for f in sorted(d.rglob("*")) if f.is_file()}


def test_a_partition_killed_mid_way_is_named_then_rerun_alone(tmp_path, rlvr_cache):
    """Partition 1 really SIGKILLed mid-way, deterministically: it has written its weight-R² share
    (over an earlier run's, whose marker it withdrew first) and waits for the Gram cache's lock,
    which the test holds. The merge then fails with one line naming it and writes nothing; rerun
    alone (past the locks the killed job left), it completes and the merge equals the single run;
    partitions 0 and 2 are not touched."""
    from rlvr_linearity.io import write_json_atomic
    from rlvr_linearity.linearity.app import analyse, open_checked
    from rlvr_linearity.linearity.gram import GramCache
    from rlvr_linearity.linearity.partition import config_key, run_partition
    from rlvr_linearity.partitions import partition_names

    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", write_json=True)
    cache, single, out = tmp_path / "cache", tmp_path / "single", tmp_path / "D"
    part = [f"paths.cache_dir={cache}", "partition.count=3"]  # a fresh Gram cache: no entry covers partition 1
    analyse(_cfg(tt), single)
    for i in (0, 2):
        run_partition(_cfg(tt, *part, f"partition.index={i}"), partition_dir(out, 3, i))
    others = {i: _files(partition_dir(out, 3, i)) for i in (0, 2)}
    p1 = partition_dir(out, 3, 1) / "linearity"
    traj, steps, _ = open_checked(_cfg(tt))
    earlier = config_key(_cfg(tt, *part, "partition.index=1", "linearity.windows=[all]"), traj)
    write_json_atomic(p1 / "partition.json", {"key": earlier})  # an earlier run's marker, other options
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache)}
    common = [f"trajectory.path={tt.path}", "logger=none", "linearity.windows=[3,all]", f"output_dir={out}", *part]
    gram_cache = GramCache(cache / "grams", traj.fingerprint())
    gram_lock = gram_cache.claim([s for s in steps if s], partition_names(traj, 3, 1))  # partition 1's Gram entry
    log = tmp_path / "killed.log"
    with gram_lock, open(log, "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "rlvr_linearity", "linearity", *common, "partition.index=1"],
                               stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 120
            while not (p1 / "weights_state.npz").exists():  # its weight share written, it then waits for the lock
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            assert job.poll() is None, f"partition 1 did not wait for the Gram lock: {log.read_text()[-2000:]}"
            assert not (p1 / "partition.json").exists()  # mid-way, and the earlier run's marker withdrawn
        finally:
            job.kill()  # SIGKILL: no handler, no cleanup
            job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    assert not (p1 / "partition.json").exists() and (p1.parent / ".linearity.lock").exists()  # the lock it left
    r = _rlvr(*common, "partition.merge=true", env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("rlvr linearity: error: cannot merge linearity: partition(s) 1 of 3 missing"), lines
    assert not (out / "linearity").exists() and not (out / "figures").exists()  # nothing merged, nothing half-written
    r = _rlvr(*common, "partition.index=1", env=env)
    assert r.returncode == 0 and (p1 / "partition.json").exists(), r.stderr[-2000:]
    r = _rlvr(*common, "partition.merge=true", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {i: _files(partition_dir(out, 3, i)) for i in (0, 2)} == others  # the rerun and merge touched neither
    for name in ("weights_r2.json", "lowrank.json"):
        a = json.loads((single / "linearity" / name).read_text())
        assert differences(a, json.loads((out / "linearity" / name).read_text())) == [], name


def test_partition_errors(tmp_path, rlvr_cache):
    from rlvr_linearity.linearity.partition import merge, run_partition

    tt = make_trajectory(tmp_path / "run", steps=(1, 2, 3), write_json=True)
    with pytest.raises(ConfigError, match="save_per_weight"):
        run_partition(_cfg(tt, "partition.count=2", "linearity.save_per_weight=true"), tmp_path / "p")
    with pytest.raises(RlvrError, match=r"partition\(s\) 0, 1 of 2"):
        merge(_cfg(tt, "partition.count=2", "partition.merge=true"), tmp_path / "empty")
    with pytest.raises(ConfigError, match="partition.index"):
        compose_config("linearity", "partition.count=2", "partition.index=2")
    r = _rlvr(f"trajectory.path={tt.path}", "logger=none", "partition.count=2", env={**os.environ})
    assert r.returncode == 2 and "needs output_dir" in r.stderr
