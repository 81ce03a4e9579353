"""A Ray cluster over the nodes of a Slurm job, then one command on its head.

`hydra/launcher=slurm_multinode` runs one task per node, each calling `run_on_ray_cluster`.
Rank 0 (SLURM_NODEID / SLURM_PROCID 0) runs `ray start --head --node-ip-address=<head ip>`,
waits until every node has joined, runs the command with RAY_ADDRESS pointing at the cluster
(verl's `ray.init` then connects instead of starting a local Ray), writes a `done` marker and
stops Ray. The other ranks `ray start --address=<head ip>:<port>`, wait for the marker in the
shared run directory, and stop their Ray. Every node declares its Slurm share (`--num-cpus`:
SLURM_CPUS_PER_TASK; `--num-gpus`: the GPUs per node) rather than what Ray would detect on the
whole machine, as verl's examples/slurm/ray_on_slurm.slurm does. Outside Slurm, or on one
node, the command just runs.

Usage outside the framework (an sbatch script with `srun --ntasks-per-node=1`):
    python -m rlvr_linearity.train.ray_cluster --dir $RUN/ray -- python -m verl.trainer.main_ppo ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

JOIN_TIMEOUT_S = float(os.environ.get("RLVR_RAY_JOIN_TIMEOUT", "600"))


def cluster_shape(t) -> tuple[int, int]:
    """(nodes, gpus per node): explicit keys, else the Slurm allocation, else this machine."""
    nodes = t.nodes or int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
    gpus = t.gpus_per_node
    if not gpus:
        env = os.environ.get("SLURM_GPUS_ON_NODE")
        if env and env.isdigit():
            gpus = int(env)
        else:
            try:
                import torch

                gpus = torch.cuda.device_count() or 1
            except Exception:  # pragma: no cover - torch is a dependency
                gpus = 1
    return int(nodes), int(gpus)


def slurm_rank() -> int:
    return int(os.environ.get("SLURM_NODEID") or os.environ.get("SLURM_PROCID") or 0)


def head_host() -> str:
    """First host of the Slurm allocation (`scontrol show hostnames`), else this machine."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if nodelist and shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    import socket

    return socket.gethostname()


def head_ip() -> str:
    """The head's IPv4 address (what its host name resolves to, as `hostname --ip-address`)."""
    import socket

    return socket.gethostbyname(head_host())


def slurm_cpus() -> int:
    """CPUs of this job on this node: SLURM_CPUS_PER_TASK (one task per node), else the CPUs we may use."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if (os.environ.get(var) or "").isdigit():
            return int(os.environ[var])
    return len(os.sched_getaffinity(0))


def ray_start_args(head: bool, ip: str, port: int, cpus: int, gpus: int) -> list[str]:
    """`ray start` arguments of the head (it binds to `ip`) or of a worker (it joins `ip:port`)."""
    where = ["--head", f"--node-ip-address={ip}", f"--port={port}"] if head else [f"--address={ip}:{port}"]
    return ["start", *where, f"--num-cpus={cpus}", f"--num-gpus={gpus}"]


def _ray(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], check=True)


def _alive_nodes(address: str) -> int:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def run_on_ray_cluster(command: list[str], state_dir: Path, nodes: int = 1, port: int = 6379,
                       env: dict | None = None, gpus_per_node: int = 1) -> int | None:
    """Run `command` on the head of a Ray cluster spanning the job's nodes.

    Returns the command's exit code on the head (or on a single node), None on worker nodes.
    """
    full_env = {**os.environ, **(env or {})}
    if nodes <= 1:
        return subprocess.run(command, env=full_env).returncode
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    done = state_dir / "done"
    ip, cpus = head_ip(), slurm_cpus()
    address = f"{ip}:{port}"
    if slurm_rank() != 0:
        deadline = time.time() + JOIN_TIMEOUT_S
        while True:  # the head may not be up yet
            try:
                _ray(*ray_start_args(False, ip, port, cpus, gpus_per_node))
                break
            except subprocess.CalledProcessError:
                if time.time() > deadline:
                    raise RuntimeError(f"could not join the Ray head at {address}") from None
                time.sleep(5)
        try:
            while not done.exists():
                time.sleep(10)
        finally:
            subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"])
        return None
    done.unlink(missing_ok=True)
    _ray(*ray_start_args(True, ip, port, cpus, gpus_per_node))
    try:
        deadline = time.time() + JOIN_TIMEOUT_S
        while (alive := _alive_nodes(address)) < nodes:
            if time.time() > deadline:
                raise RuntimeError(f"only {alive} of {nodes} nodes joined the Ray cluster at {address}")
            time.sleep(5)
        return subprocess.run(command, env={**full_env, "RAY_ADDRESS": address}).returncode
    finally:
        done.touch()
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="shared directory for the done marker")
    parser.add_argument("--nodes", type=int, default=int(os.environ.get("SLURM_JOB_NUM_NODES", 1)))
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="default: SLURM_GPUS_ON_NODE, else the visible CUDA devices")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    from types import SimpleNamespace

    nodes, gpus = cluster_shape(SimpleNamespace(nodes=args.nodes, gpus_per_node=args.gpus_per_node))
    rc = run_on_ray_cluster(command, Path(args.dir), nodes=nodes, port=args.port, gpus_per_node=gpus)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
