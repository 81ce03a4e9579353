"""vLLM adapter (GPU): our sampling keys -> `vllm.SamplingParams`; optional data parallelism
(`engine.data_parallel_size`) by splitting prompts across `LLM` instances on separate GPUs."""

from __future__ import annotations

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.engines.base import Engine, sampling_get


def sampling_params(sampling):
    """`vllm.SamplingParams` for our keys (n, temperature, top_p, top_k, max_tokens, seed, stop)."""
    from vllm import SamplingParams

    temperature = float(sampling_get(sampling, "temperature", 0.0))
    return SamplingParams(
        n=int(sampling_get(sampling, "n", 1)),
        temperature=temperature,
        top_p=float(sampling_get(sampling, "top_p", 1.0)) if temperature > 0 else 1.0,
        top_k=int(sampling_get(sampling, "top_k", -1)) if temperature > 0 else -1,
        max_tokens=int(sampling_get(sampling, "max_tokens", 256)),
        seed=sampling_get(sampling, "seed", None),
        stop=list(sampling_get(sampling, "stop", []) or []) or None,
    )


class VLLMEngine(Engine):
    @classmethod
    def from_config(cls, cfg, model: str | None) -> "VLLMEngine":
        return cls(model, cfg.engine)

    def __init__(self, model: str, engine_cfg):
        try:
            from vllm import LLM
        except ImportError:
            raise EvaluationError("engine=vllm needs the vllm package (a GPU machine); use engine=hf") from None
        if not model:
            raise EvaluationError("no model given: set evaluate.model=PATH")
        self.dp = int(engine_cfg.get("data_parallel_size", 1) or 1)
        kwargs = {"model": model, "dtype": engine_cfg.get("dtype", "auto"),
                  "gpu_memory_utilization": float(engine_cfg.get("gpu_memory_utilization", 0.85)),
                  "tensor_parallel_size": int(engine_cfg.get("tensor_parallel_size", 1)),
                  "trust_remote_code": bool(engine_cfg.get("trust_remote_code", False))}
        if engine_cfg.get("max_model_len"):
            kwargs["max_model_len"] = int(engine_cfg.max_model_len)
        if self.dp > 1:
            kwargs["data_parallel_size"] = self.dp
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        outs = self.llm.generate(prompts, sampling_params(sampling), use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outs]
