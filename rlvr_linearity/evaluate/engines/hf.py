"""transformers `generate`, batched with left padding; CPU (float32) or GPU (stored dtype);
teacher forcing (`score`) in float32 with the vocabulary projection a chunk of positions at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate.engines.base import Engine, progress, prompt_ids, sampling_get


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


@torch.no_grad()
def score_batch(models, seqs: list[list[int]], firsts: list[int], pad_id: int, chunk: int = 256, device="cpu",
                mix=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher-forced float32 log-prob and raw logit of every token from `firsts[i]` on, per sequence.

    Right-padded batch through each model body; the output projection and log-softmax run over
    `chunk` positions at a time, so at most chunk x vocab logits exist at once. Several models
    (logits extrapolation) have their chunk logits combined by `mix(*logits)`.
    """
    lens = [len(s) for s in seqs]
    width = max(lens)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = [m.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state for m in models]
    heads = [m.get_output_embeddings() for m in models]
    out = []
    for i, (n, first) in enumerate(zip(lens, firsts)):
        lp, lg = [], []
        for a in range(first - 1, n - 1, chunk):  # position p predicts token p + 1
            b = min(a + chunk, n - 1)
            parts = [head(h[i, a:b]).float() for head, h in zip(heads, hidden)]
            logits = parts[0] if mix is None else mix(*parts)
            tgt = ids[i, a + 1: b + 1]
            raw = logits.gather(1, tgt[:, None])[:, 0]
            lp.append((raw - torch.logsumexp(logits, 1)).cpu())
            lg.append(raw.cpu())
        out.append((torch.cat(lp).double().numpy() if lp else np.zeros(0), torch.cat(lg).double().numpy() if lg else np.zeros(0)))
    return out


def score_sorted(models, seqs: list[list[int]], firsts: list[int], pad_id: int, batch_size: int, chunk: int, device,
                 mix=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`score_batch` over batches of similar lengths (little padding), returned in input order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list = [None] * len(seqs)
    for a in range(0, len(order), batch_size):
        idx = order[a: a + batch_size]
        for i, r in zip(idx, score_batch(models, [seqs[i] for i in idx], [firsts[i] for i in idx], pad_id, chunk,
                                         device, mix)):
            out[i] = r
    return out


class HFEngine(Engine):
    @classmethod
    def from_config(cls, cfg, model: str | None) -> "HFEngine":
        e = cfg.engine
        return cls(model, device=e.device, dtype=e.dtype, batch_size=e.batch_size, trust_remote_code=e.trust_remote_code)

    def __init__(self, model: str, *, device: str, dtype: str, batch_size: int, trust_remote_code: bool):
        if not model:
            raise EvaluationError("no model given: set evaluate.model=PATH (or evaluate.step with trajectory.path)")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.model, self.tokenizer = load_model(model, self.device, dtype, bool(trust_remote_code))

    def score(self, seqs: list[list[int]], firsts: list[int], chunk: int = 256) -> list[tuple]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return score_sorted([self.model], seqs, firsts, pad, self.batch_size, chunk, self.device)

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        """Greedy (temperature 0): one decode per prompt, reported n times. Sampling is seeded
        once per call (`sampling.seed`), so a call's output depends on its prompts only."""
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
        torch.manual_seed(int(sampling_get(sampling, "seed", 0)))
        ids = prompt_ids(self.tokenizer, prompts)
        out: list[list[str]] = []
        step = self.batch_size if greedy else max(1, self.batch_size // n)
        for start in progress(range(0, len(prompts), step), "generate", unit="batch"):
            batch = ids[start:start + step]
            enc = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
            seqs = self.model.generate(**enc, **kwargs)
            texts = self.tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            if greedy:  # one decode per prompt; every sample is the same
                out += [[t] * n for t in texts]
            else:
                out += [texts[i * n:(i + 1) * n] for i in range(len(batch))]
        return out
