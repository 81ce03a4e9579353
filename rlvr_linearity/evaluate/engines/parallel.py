"""Data parallelism over processes (`engine.data_parallel_size` = D > 1), for any engine.

One spawned process per rank builds its own engine; on a GPU machine rank r sees only its
GPUs (`CUDA_VISIBLE_DEVICES`: `tensor_parallel_size` devices each). Ranks share nothing: a dense
model needs no collective between replicas, so this is lm-eval's layout rather than vLLM's
`VLLM_DP_*` coupling (built for MoE expert parallelism: ranks step in lockstep and an idle rank
needs a placeholder prompt).

Work is split by whole `generate` calls (the evaluation's seeded chunks): call j runs on rank
j mod D exactly as it would in one process, and results come back in call order, so the merged
samples equal a single process's (the HF engine seeds each call by itself). Set
`evaluate.batch_size` so that a benchmark has at least D chunks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import weakref
from collections import deque
from collections.abc import Iterable, Iterator

from omegaconf import OmegaConf

from rlvr_linearity.errors import ConfigError, EvaluationError
from rlvr_linearity.evaluate.engines.base import Engine
from rlvr_linearity.evaluate.engines.registry import build_engine

SHUTDOWN_TIMEOUT_S = 60


def rank_devices(size: int, per_rank: int) -> list[dict[str, str]]:
    """Environment of each rank: its slice of the visible GPUs; nothing on a CPU-only machine."""
    import torch

    if not torch.cuda.is_available():
        return [{} for _ in range(size)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(devices) < size * per_rank:
        raise ConfigError(f"engine.data_parallel_size={size} x {per_rank} GPU(s) per rank needs {size * per_rank} "
                          f"GPUs; {len(devices)} visible")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(devices[r * per_rank:(r + 1) * per_rank])} for r in range(size)]


def _worker(engine_cfg: dict, model: str, env: dict, conn) -> None:
    """One rank: build the engine, then answer (prompts, sampling) calls until None."""
    os.environ.update(env)
    try:
        engine = build_engine(OmegaConf.create({"engine": {**engine_cfg, "data_parallel_size": 1}}), model)
        conn.send(("ready", None))
        while (call := conn.recv()) is not None:
            conn.send(("ok", engine.generate(*call)))
    except Exception as err:  # noqa: BLE001 - handed to the parent, which raises it as one line
        conn.send(("error", (str(err) or type(err).__name__).splitlines()[0]))
    finally:
        conn.close()


def _shutdown(conns, procs) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(SHUTDOWN_TIMEOUT_S)
        if p.is_alive():
            p.terminate()


class DataParallelEngine(Engine):
    def __init__(self, cfg, model: str, size: int):
        from transformers import AutoTokenizer

        engine_cfg = OmegaConf.to_container(cfg.engine, resolve=True)
        self.size = size
        # the parent renders prompts (chat template) with the same tokenizer the ranks load
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=bool(engine_cfg["trust_remote_code"]))
        except OSError as err:
            raise EvaluationError(f"cannot load the tokenizer of {model}: {str(err).splitlines()[0]}") from None
        # GPUs per rank: vLLM shards a model over tensor_parallel_size of them, the others use one
        envs = rank_devices(size, engine_cfg["tensor_parallel_size"] if engine_cfg["name"] == "vllm" else 1)
        ctx = mp.get_context("spawn")  # CUDA and vLLM do not survive fork
        self._conns, self.procs = [], []
        for rank, env in enumerate(envs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(engine_cfg, model, env, child), name=f"rlvr-dp-rank{rank}")
            p.start()
            child.close()
            self._conns.append(parent)
            self.procs.append(p)
        self._finalizer = weakref.finalize(self, _shutdown, self._conns, self.procs)
        for rank in range(size):
            self._receive(rank)

    @classmethod
    def from_config(cls, cfg, model: str | None) -> "DataParallelEngine":
        if not model:
            raise EvaluationError("no model given: set evaluate.model=PATH (or evaluate.step with trajectory.path)")
        return cls(cfg, model, int(cfg.engine.data_parallel_size))

    def _receive(self, rank: int):
        try:
            kind, value = self._conns[rank].recv()
        except EOFError:
            kind, value = "error", "the process died"
        if kind == "error":
            self._finalizer()
            raise EvaluationError(f"data-parallel rank {rank}: {value}")
        return value

    def generate_many(self, calls: Iterable[tuple[list[str], dict]]) -> Iterator[list[list[str]]]:
        """Call j on rank j mod D, two calls queued per rank, results in call order."""
        inflight: deque[int] = deque()
        for j, call in enumerate(calls):
            self._conns[j % self.size].send(call)
            inflight.append(j % self.size)
            if len(inflight) == 2 * self.size:
                yield self._receive(inflight.popleft())
        while inflight:
            yield self._receive(inflight.popleft())

    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        return next(self.generate_many([(prompts, sampling)]))

    def score(self, seqs: list[list[int]], firsts: list[int], chunk: int = 256) -> list[tuple]:
        raise EvaluationError("teacher forcing runs in one process: set engine.data_parallel_size=1")
