"""vLLM adapter (GPU): our sampling keys -> `vllm.SamplingParams`, prompts as token ids.

Prompts go to vLLM as token ids (`{"prompt_token_ids": ...}`) tokenised without special tokens:
vLLM would otherwise tokenise the rendered chat template again with its BOS (a second BOS for
DeepSeek-R1-Distill). vLLM refuses `n > 1` with temperature 0, so greedy decoding asks for one
sample and reports it n times, as the HF engine does. Data parallelism (`engine.data_parallel_size`)
is one process per GPU (`engines.parallel`), not `LLM(data_parallel_size=...)`, which vLLM refuses
in a single process.
"""

from __future__ import annotations

import functools

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.engines.base import PROGRESS_DELAY_S, Engine, prompt_ids, sampling_get


def sampling_kwargs(sampling) -> tuple[dict, int]:
    """`vllm.SamplingParams` keyword arguments for our keys (n, temperature, top_p, top_k,
    max_tokens, seed, stop), and how many times each returned sample is repeated (n for greedy)."""
    n = int(sampling_get(sampling, "n", 1))
    temperature = float(sampling_get(sampling, "temperature", 0.0))
    greedy = temperature <= 0
    kwargs = {
        "n": 1 if greedy else n,
        "temperature": 0.0 if greedy else temperature,
        "top_p": 1.0 if greedy else float(sampling_get(sampling, "top_p", 1.0)),
        "top_k": -1 if greedy else int(sampling_get(sampling, "top_k", -1)),
        "max_tokens": int(sampling_get(sampling, "max_tokens", 256)),
        "seed": sampling_get(sampling, "seed", None),
        "stop": list(sampling_get(sampling, "stop", []) or []) or None,
    }
    return kwargs, n if greedy else 1


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
        kwargs = {"model": model, "dtype": engine_cfg.dtype, "gpu_memory_utilization": engine_cfg.gpu_memory_utilization,
                  "tensor_parallel_size": engine_cfg.tensor_parallel_size,
                  "trust_remote_code": engine_cfg.trust_remote_code}
        if engine_cfg.max_model_len:
            kwargs["max_model_len"] = engine_cfg.max_model_len
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        from tqdm import tqdm
        from vllm import SamplingParams

        kwargs, repeat = sampling_kwargs(sampling)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids(self.tokenizer, prompts)],
                                 SamplingParams(**kwargs),
                                 use_tqdm=functools.partial(tqdm, delay=PROGRESS_DELAY_S, disable=None))
        return [[c.text for c in o.outputs for _ in range(repeat)] for o in outs]

    def score(self, seqs: list[list[int]], firsts: list[int], chunk: int = 256) -> list[tuple]:
        raise EvaluationError("engine=vllm does not teacher-force (raw logits); the linearity probes use engine=hf")
