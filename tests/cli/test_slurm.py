"""Hydra multiruns on a real single-node Slurm, started by the fixture (munged, slurmctld, slurmd).

The cluster is private to the test: its own munge key and socket, free ports, state in a temp
dir, daemons stopped by PID. Skipped only outside CI when slurm-wlm is not installed.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slurm

REPO = REPO_ROOT
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, host: str, sock: Path) -> str:
    return textwrap.dedent(
        f"""\
        ClusterName=rlvrtest
        SlurmctldHost={host}(127.0.0.1)
        SlurmctldPort={_free_port()}
        SlurmdPort={_free_port()}
        SlurmUser={getpass.getuser()}
        AuthType=auth/munge
        CredType=cred/munge
        AuthInfo=socket={sock}
        StateSaveLocation={root}/state
        SlurmdSpoolDir={root}/spool
        SlurmctldPidFile={root}/slurmctld.pid
        SlurmdPidFile={root}/slurmd.pid
        SlurmctldLogFile={root}/slurmctld.log
        SlurmdLogFile={root}/slurmd.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_CPU
        MpiDefault=none
        ReturnToService=2
        SlurmctldTimeout=30
        SlurmdTimeout=30
        KillWait=5
        MinJobAge=300
        NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2048 State=UNKNOWN
        PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
        """
    )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node Slurm; yields the environment its client commands need."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        if not os.environ.get("CI"):
            pytest.skip(f"slurm-wlm/munge not installed ({', '.join(missing)}); .ci/run installs them")
        pytest.fail(f"CI must have slurm-wlm and munge installed; missing {missing}")
    # Short path: the munge socket path must fit in a sockaddr_un.
    root = Path(tmp_path_factory.mktemp("slurm"))
    os.chmod(root, 0o755)
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    sock = root / "munge.sock"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, sock))
    env = {**os.environ, "SLURM_CONF": str(conf)}

    procs: list[subprocess.Popen] = []

    def start(name, argv):
        log = open(root / f"{name}.out", "w")
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def stop():
        # Let jobs finish their completion first: a slurmd stopped while a step completes leaves
        # its slurmstepd and srun waiting forever (seen after short runs of this file alone).
        deadline = time.time() + 30
        while time.time() < deadline:
            q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if q.returncode or not q.stdout.strip():
                break
            time.sleep(0.5)
        else:
            subprocess.run(["scancel", "--user", getpass.getuser()], env=env, capture_output=True)
            time.sleep(2)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    try:
        start("munged", ["munged", "-F", "-f", f"--socket={sock}", f"--key-file={key}",
                         f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                         f"--seed-file={root / 'munged.seed'}"])
        deadline = time.time() + 20
        while not sock.exists():
            if time.time() > deadline:
                raise RuntimeError(f"munged did not start: {(root / 'munged.out').read_text()}")
            time.sleep(0.1)
        start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
        start("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", host])
        deadline = time.time() + 60
        state = ""
        while state != "idle":
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(root.glob("*.out")))
                raise RuntimeError(f"slurm node never became idle (state {state!r})\n{logs}")
            time.sleep(0.3)
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            state = r.stdout.strip()
        yield {"env": env, "root": root}
    finally:
        stop()


# A stand-in command for the jobs: the real CLI (Hydra app, tracking, output dir, error
# handling) with `rlvr figures` replaced by a probe app. Installed through sitecustomize so that
# the Slurm job's interpreter (which unpickles the Hydra task) sees the same replacement.
PROBE = '''
import json, os

def run(cfg, tracker):
    from rlvr_linearity.paths import resolve_output_dir
    out = resolve_output_dir(cfg)
    if cfg.seed == 14:
        raise RuntimeError("probe: unexpected crash at seed 14")
    if cfg.seed == 21:  # a stage, then a long wait in which the test preempts the job
        attempts = out / "attempts"
        n = int(attempts.read_text()) + 1 if attempts.exists() else 1
        attempts.write_text(str(n))
        stage = out / "stage.json"
        if not stage.exists():  # stands for a cached stage: done once, found on resume
            stage.write_text(json.dumps({"computed_in_attempt": n}))
        if n == 1:
            (out / "waiting").touch()
            import time
            time.sleep(120)
        result = {"seed": 21, "attempts": n, "stage": json.loads(stage.read_text()),
                  "restart_count": os.environ.get("SLURM_RESTART_COUNT")}
        (out / "probe.json").write_text(json.dumps(result))
        return result
    result = {"seed": cfg.seed, "double": 2 * cfg.seed, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
              "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"), "group": tracker.group}
    tracker.log({"double": result["double"]}, step=0)
    tracker.summary(result)
    tmp = out / "probe.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out / "probe.json")
    return result
'''

SITECUSTOMIZE = '''
try:
    import rlvr_linearity.cli as _cli
    _cli.COMMANDS["figures"] = ("rlvr_probe_app", "probe")
except Exception:
    pass
'''


@pytest.fixture()
def probe_env(slurm_cluster, tmp_path):
    pkg = tmp_path / "probe_path"
    pkg.mkdir()
    (pkg / "rlvr_probe_app.py").write_text(PROBE)
    (pkg / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(slurm_cluster["env"])
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), *filter(None, [env.get("PYTHONPATH")])])
    env["RLVR_CACHE_DIR"] = str(tmp_path / "cache")
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_API_KEY", None)
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc: W&B must go offline by itself
    (tmp_path / "home").mkdir()
    return env


def _multirun(env, sweep_dir: Path, seeds: str, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlvr_linearity", "figures", "-m", f"seed={seeds}",
            "hydra/launcher=slurm_cpu", f"hydra.sweep.dir={sweep_dir}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
            "hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=30",
            "hydra.launcher.partition=debug", "hydra.launcher.array_parallelism=4", *extra]
    return subprocess.run(argv, env=env, cwd=sweep_dir.parent, capture_output=True, text=True, timeout=300)


def test_multirun_of_four_jobs_completes_on_slurm(probe_env, tmp_path):
    sweep = tmp_path / "sweep"
    r = _multirun(probe_env, sweep, "1,2,3,4")
    assert r.returncode == 0, r.stdout + r.stderr
    results = [json.loads((sweep / str(i) / "probe.json").read_text()) for i in range(4)]
    assert sorted(x["seed"] for x in results) == [1, 2, 3, 4]
    assert all(x["double"] == 2 * x["seed"] for x in results)
    # they really ran as Slurm array tasks of one job
    job_ids = {x["slurm_job_id"] for x in results}
    assert None not in job_ids and len(job_ids) == 4
    assert sorted(int(x["array_task"]) for x in results) == [0, 1, 2, 3]
    # the sweep is the W&B group of every job, and each job wrote its offline W&B run
    groups = {x["group"] for x in results}
    assert len(groups) == 1 and None not in groups and "sweep" in next(iter(groups))
    for i in range(4):
        assert list((sweep / str(i)).glob("wandb/offline-run-*/run-*.wandb")), f"job {i} has no W&B run"
        events = [json.loads(line) for line in (sweep / str(i) / "tracking.jsonl").read_text().splitlines()]
        assert events[-1] == {**events[-1], "event": "end", "failed": False}


def test_failing_job_is_reported_with_its_error(probe_env, tmp_path):
    sweep = tmp_path / "sweep"
    r = _multirun(probe_env, sweep, "5,14")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "unexpected crash at seed 14" in out, out
    assert json.loads((sweep / "0" / "probe.json").read_text())["seed"] == 5


def test_preempted_job_is_requeued_and_resumes(probe_env, slurm_cluster, tmp_path):
    """USR2 is what Slurm sends before a time limit or preemption (`--signal`): submitit
    checkpoints the Hydra job and requeues it; the rerun finds its finished stage and completes."""
    sweep = tmp_path / "sweep"
    sweep.parent.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "rlvr_linearity", "figures", "-m", "seed=21", "hydra/launcher=slurm_cpu",
            f"hydra.sweep.dir={sweep}", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
            "hydra.launcher.timeout_min=10", "hydra.launcher.partition=debug"]
    proc = subprocess.Popen(argv, env=probe_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 90
        while not (sweep / "0" / "waiting").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.5)
        env = slurm_cluster["env"]
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True).stdout.split()
        assert len(jobs) == 1, jobs
        subprocess.run(["scancel", "--signal=USR2", jobs[0]], env=env, check=True)
        # Slurm holds a requeued job for a while (Reason=BeginTime); release it so the test is fast.
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", jobs[0], "-o", "%T %r"], env=env,
                                   capture_output=True, text=True).stdout.split()
            if state[:2] == ["PENDING", "BeginTime"]:
                subprocess.run(["scontrol", "update", f"JobId={jobs[0]}", "StartTime=now"], env=env, check=True)
                break
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    result = json.loads((sweep / "0" / "probe.json").read_text())
    assert result["attempts"] == 2 and result["restart_count"] == "1"
    assert result["stage"] == {"computed_in_attempt": 1}  # not redone after the requeue


def test_launcher_presets_resolve():
    """The three presets compose on top of submitit_slurm with our keys and site defaults."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rlvr_linearity.paths import conf_dir
    from rlvr_linearity.schemas import register_configs

    register_configs()

    def hydra_cfg(*args):
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=list(args), return_hydra_config=True)
        return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in cfg.hydra.launcher.items_ex(resolve=True)}

    cpu = hydra_cfg("hydra/launcher=slurm_cpu", "hydra.launcher.partition=cpu", "hydra.launcher.account=acct",
                    "hydra.launcher.timeout_min=30", "hydra.launcher.mem_gb=4", "hydra.launcher.array_parallelism=2")
    assert cpu["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (cpu["partition"], cpu["account"], cpu["timeout_min"], cpu["mem_gb"], cpu["array_parallelism"]) == \
        ("cpu", "acct", 30, 4, 2)
    assert cpu["max_num_timeout"] > 0 and cpu["signal_delay_s"] > 0  # requeue on time-out
    gpu = hydra_cfg("hydra/launcher=slurm_gpu")
    assert gpu["gpus_per_node"] == 1 and gpu["partition"] is None
    multi = hydra_cfg("hydra/launcher=slurm_multinode", "hydra.launcher.nodes=4")
    assert multi["nodes"] == 4 and multi["tasks_per_node"] == 1 and multi["gpus_per_node"] == 8
    assert multi["additional_parameters"] == {"exclusive": True}
    # site defaults from a `slurm:` section (conf/local/default.yaml)
    site = hydra_cfg("hydra/launcher=slurm_gpu", "+slurm.partition=big", "+slurm.account=lab")
    assert (site["partition"], site["account"]) == ("big", "lab")



def test_linearity_sweep_over_four_windows_on_slurm(slurm_cluster, tmp_path):
    """A real command: `rlvr linearity -m` over 4 observation windows of a tiny trajectory, as a
    Slurm job array; every job's result is collected and matches its window."""
    pytest.importorskip("rlvr_linearity.trajectory")
    from conftest import make_trajectory

    traj = make_trajectory(tmp_path / "traj", "checkpoint", steps=tuple(range(1, 9)), write_json=True)
    env = {**slurm_cluster["env"], "RLVR_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    sweep = tmp_path / "sweep"
    windows = [3, 4, 6, 8]
    argv = [sys.executable, "-m", "rlvr_linearity", "linearity", "-m",
            f"trajectory.max_step={','.join(map(str, windows))}", f"trajectory.path={traj.path}",
            "linearity.lowrank=false", "logger=none", "hydra/launcher=slurm_cpu", f"hydra.sweep.dir={sweep}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=5",
            "hydra.launcher.partition=debug"]
    r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for num, window in enumerate(windows):
        result = json.loads((sweep / str(num) / "linearity" / "weights_r2.json").read_text())
        assert max(result["steps"]) == window
        assert result["n_defined"] > 0 and 0.9 < result["median"] <= 1.0  # linear drift: R² near 1


def _partition_sweep(env, sweep_dir: Path, command: str, *args: str) -> subprocess.CompletedProcess:
    """`rlvr <command> -m ... partition.index=...` as a Slurm job array (the merge runs at its end)."""
    argv = [sys.executable, "-m", "rlvr_linearity", command, "-m", *args, "logger=none", "hydra/launcher=slurm_cpu",
            f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
            "hydra.launcher.timeout_min=5", "hydra.launcher.partition=debug"]
    return subprocess.run(argv, env=env, cwd=sweep_dir.parent, capture_output=True, text=True, timeout=300)


def test_linearity_partitions_on_slurm_merge_into_the_single_run(slurm_cluster, tmp_path, monkeypatch):
    """3 partition jobs of `rlvr linearity` on Slurm: with partition 1 missing the merge fails with
    one line naming it; partition 1 rerun alone, the sweep's end merges weights_r2.json and
    lowrank.json equal to a single run's (means to float rounding)."""
    from conftest import compose_config, differences, make_trajectory

    from rlvr_linearity.linearity.app import analyse

    traj = make_trajectory(tmp_path / "traj", "checkpoint", steps=(1, 2, 3, 5, 8), drift="random", write_json=True)
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    common = [f"trajectory.path={traj.path}", "linearity.windows=[3,all]"]
    analyse(compose_config("linearity", "logger=none", *common), tmp_path / "single")
    env = {**slurm_cluster["env"], "RLVR_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    out = tmp_path / "D"
    parts = [*common, f"output_dir={out}", "partition.count=3"]
    r = _partition_sweep(env, tmp_path / "sweep0", "linearity", *parts, "partition.index=0,2")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "partition(s) 1 of 3 missing" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
    r = _partition_sweep(env, tmp_path / "sweep1", "linearity", *parts, "partition.index=1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("weights_r2.json", "lowrank.json"):
        single = json.loads((tmp_path / "single" / "linearity" / name).read_text())
        assert differences(single, json.loads((out / "linearity" / name).read_text())) == [], name


def test_relex_partitions_on_slurm_merge_into_the_single_run(slurm_cluster, tmp_path, monkeypatch):
    """3 partition jobs of RELEX on Slurm merge into sharded models whose tensors are the single
    run's bit for bit and which AutoModelForCausalLM loads."""
    import torch
    from conftest import compose_config, make_trajectory, safetensors_of
    from transformers import AutoModelForCausalLM

    from rlvr_linearity.extrapolate.app import extrapolate

    traj = make_trajectory(tmp_path / "traj", "checkpoint", steps=(1, 2, 3, 4, 6), drift="random",
                           dtype=torch.bfloat16, write_json=True)
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    common = [f"trajectory.path={traj.path}", "extrapolate.history=4", "extrapolate.targets=[8,12]"]
    extrapolate(compose_config("extrapolate", "logger=none", *common), tmp_path / "single")
    env = {**slurm_cluster["env"], "RLVR_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    r = _partition_sweep(env, tmp_path / "sweep", "extrapolate", *common, f"output_dir={tmp_path / 'D'}", "partition.count=3",
                         "partition.index=0,1,2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for t in (8, 12):
        merged = tmp_path / "D" / "extrapolate" / f"step_{t}"
        assert len(list(merged.glob("model-*-of-00003.safetensors"))) == 3
        a, b = safetensors_of(tmp_path / "single" / "extrapolate" / f"step_{t}"), safetensors_of(merged)
        assert set(a) == set(b) and all(torch.equal(a[n].view(torch.uint8), b[n].view(torch.uint8)) for n in a)
        AutoModelForCausalLM.from_pretrained(merged)


def test_pipeline_sends_its_partitions_as_slurm_jobs(slurm_cluster, tmp_path, monkeypatch):
    """`rlvr pipeline -m hydra/launcher=slurm_cpu partition.count=2`: the pipeline's job sends the
    linearity and relex partitions as Slurm jobs of their own, and merges them into the single
    run's outputs."""
    import torch
    from conftest import compose_config, differences, make_trajectory, safetensors_of

    from rlvr_linearity.extrapolate.app import extrapolate
    from rlvr_linearity.linearity.app import analyse

    traj = make_trajectory(tmp_path / "traj", "checkpoint", steps=(1, 2, 3, 4, 6), drift="random", write_json=True)
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "single-cache"))
    common = [f"trajectory.path={traj.path}", "extrapolate.history=4", "extrapolate.targets=[8]"]
    analyse(compose_config("linearity", "logger=none", *common), tmp_path / "single")
    extrapolate(compose_config("extrapolate", "logger=none", *common), tmp_path / "single")
    env = {**slurm_cluster["env"], "RLVR_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    r = _partition_sweep(env, tmp_path / "sweep", "pipeline", *common, "pipeline.stages=[linearity,relex]",
                         f"output_dir={tmp_path / 'D'}", "partition.count=2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = tmp_path / "D" / "stages"
    jobs = {json.loads((stages / "linearity" / "partitions" / f"part-{i}-of-2" / "linearity" / "partition.json")
                       .read_text())["slurm_job_id"] for i in (0, 1)}
    assert None not in jobs and len(jobs) == 2  # each partition ran as its own Slurm job
    for name in ("weights_r2.json", "lowrank.json"):
        single = json.loads((tmp_path / "single" / "linearity" / name).read_text())
        assert differences(single, json.loads((stages / "linearity" / "linearity" / name).read_text())) == [], name
    a, b = (safetensors_of(d / "extrapolate" / "step_8") for d in (tmp_path / "single", stages / "relex"))
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
