"""transformers `generate`, batched with left padding; CPU (float32) or GPU (stored dtype)."""

from __future__ import annotations

from pathlib import Path

import torch

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.engines.base import Engine, sampling_get


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(path: str, device: str, dtype: str | None = "auto", trust_remote_code: bool = False):
    """Model + left-padding tokenizer; float32 on CPU unless a dtype is given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(path).exists() and not (Path(path) / "config.json").is_file():
        raise EvaluationError(f"model directory {path} has no config.json")
    if dtype in (None, "auto"):
        torch_dtype = torch.float32 if device == "cpu" else "auto"
    else:
        torch_dtype = getattr(torch, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise EvaluationError(f"cannot load model {path}: {str(err).splitlines()[0]}") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


class HFEngine(Engine):
    @classmethod
    def from_config(cls, cfg, model: str | None) -> "HFEngine":
        return cls(model, cfg.engine)

    def __init__(self, model: str, engine_cfg):
        if not model:
            raise EvaluationError("no model given: set evaluate.model=PATH (or evaluate.step with trajectory.path)")
        self.device = resolve_device(engine_cfg.get("device", "auto"))
        self.batch_size = int(engine_cfg.get("batch_size", 16) or 16)
        self.model, self.tokenizer = load_model(model, self.device, engine_cfg.get("dtype", "auto"),
                                                bool(engine_cfg.get("trust_remote_code", False)))

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        n = int(sampling_get(sampling, "n", 1))
        temperature = float(sampling_get(sampling, "temperature", 0.0))
        greedy = temperature <= 0
        kwargs = {"max_new_tokens": int(sampling_get(sampling, "max_tokens", 256)), "do_sample": not greedy,
                  "pad_token_id": self.tokenizer.pad_token_id, "num_return_sequences": 1 if greedy else n}
        if not greedy:
            kwargs["temperature"] = temperature
            kwargs["top_p"] = float(sampling_get(sampling, "top_p", 1.0))
            top_k = int(sampling_get(sampling, "top_k", -1))
            kwargs["top_k"] = top_k if top_k > 0 else None
        stop = sampling_get(sampling, "stop", None)
        if stop:
            kwargs["stop_strings"] = list(stop)
            kwargs["tokenizer"] = self.tokenizer
        seed = int(sampling_get(sampling, "seed", 0))
        out: list[list[str]] = []
        step = self.batch_size if greedy else max(1, self.batch_size // n)
        for start in range(0, len(prompts), step):
            batch = prompts[start:start + step]
            torch.manual_seed(seed + start)
            enc = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            seqs = self.model.generate(**enc, **kwargs)
            texts = self.tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            if greedy:  # one decode per prompt; every sample is the same
                out += [[t] * n for t in texts]
            else:
                out += [texts[i * n:(i + 1) * n] for i in range(len(batch))]
        return out
