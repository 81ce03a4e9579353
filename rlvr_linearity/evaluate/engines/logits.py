"""Logits extrapolation decoding (RELEX's model-pair baseline): at every step the next-token
logits are z = l_A + alpha * (l_B - l_A) on the raw last-position logits of two models sharing a
tokenizer, then temperature, top-k, top-p and sampling (argmax when temperature is 0).

Prompts x samples are decoded together with left padding; each model keeps one KV cache
(DynamicCache). Per step: two forwards over the new token only (logits of the last position
only, `logits_to_keep=1`), the mix in place, one host sync (the sampled tokens). Finished rows
are dropped by index-selecting the cache tensors; on a GPU, where an extra row in a decode step
is nearly free and the copy is not, only once a quarter of the batch has finished (the finished
rows meanwhile decode on, their tokens ignored; rows never see each other, so the kept rows'
tokens are the same). The attention mask and positions are preallocated and sliced.
"""

from __future__ import annotations

import inspect

import torch

from rlvr_linearity.errors import ConfigError, EvaluationError
from rlvr_linearity.evaluate.engines.base import Engine, progress, prompt_ids, sampling_get
from rlvr_linearity.evaluate.engines.hf import load_model, resolve_device, score_sorted


def mix_logits(la: torch.Tensor, lb: torch.Tensor, alpha: float) -> torch.Tensor:
    return la + alpha * (lb - la)


def process_logits(z: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = -1) -> torch.Tensor:
    """Temperature, then top-k, then top-p (smallest set whose mass reaches p); -inf outside."""
    z = z / temperature
    if top_k and 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def _select_rows(cache, idx: torch.Tensor) -> None:
    """Keep batch rows `idx` of every layer's key/value tensors (in place)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)


class LogitsExtrapolationEngine(Engine):
    def __init__(self, model_a: str, model_b: str, alpha: float, *, device: str, dtype: str, batch_size: int,
                 compact_at: float | None):
        self.alpha = float(alpha)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.model_a, self.tokenizer = load_model(model_a, self.device, dtype)
        self.model_b, tok_b = load_model(model_b, self.device, dtype)
        if len(self.tokenizer) != len(tok_b) or self.model_a.config.vocab_size != self.model_b.config.vocab_size:
            raise EvaluationError(f"logits extrapolation needs one vocabulary: {model_a} and {model_b} differ")
        eos = self.model_a.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self._keep_kw: dict[int, dict] = {}
        # fraction of a batch's rows that may have finished before the caches are compacted: none
        # on CPU (a row costs its share of every matmul there), a quarter on a GPU
        self.compact_at = float(compact_at) if compact_at is not None else (
            0.25 if str(self.device).startswith("cuda") else 0.0)

    @classmethod
    def from_config(cls, cfg, model: str | None = None) -> "LogitsExtrapolationEngine":
        """`engine.models=[A, B]` + `engine.alpha`, or base/second/target steps of `trajectory.path`
        (`model` is unused: the pair comes from the config)."""
        e = cfg.engine
        settings = {"device": e.device, "dtype": e.dtype, "batch_size": e.batch_size, "compact_at": e.compact_at}
        if e.models:
            if len(e.models) != 2 or e.alpha is None:
                raise ConfigError("engine.models needs exactly two models [A, B] and engine.alpha")
            return cls(str(e.models[0]), str(e.models[1]), float(e.alpha), **settings)
        a, b, t = e.base_step, e.second_step, e.target_step
        if None in (a, b, t) or a == b:
            raise ConfigError("engine=logits_extrapolation: set engine.models=[A,B] engine.alpha=X, or "
                              "engine.base_step, engine.second_step (different) and engine.target_step with trajectory.path")
        from rlvr_linearity.trajectory import open_trajectory

        traj = open_trajectory(cfg.trajectory, steps=[int(a), int(b)])  # a hub trajectory: fetch only these
        alpha = (float(t) - float(a)) / (float(b) - float(a))
        return cls(str(traj.model(int(a)).path), str(traj.model(int(b)).path), alpha, **settings)

    def _forward_kwargs(self, model) -> dict:
        """Ask for the last position's logits only, where the model's forward accepts it."""
        params = inspect.signature(model.forward).parameters
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                return {name: 1}
        return {}

    @torch.inference_mode()
    def _next_logits(self, model, cache, ids, mask, pos):
        keep = self._keep_kw.get(id(model))
        if keep is None:
            keep = self._keep_kw[id(model)] = self._forward_kwargs(model)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    **keep)
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def first_step_logits(self, prompts: list[str]) -> torch.Tensor:
        """Mixed raw logits z for the first generated token of each prompt (for checks)."""
        from transformers import DynamicCache

        enc = self._encode(prompt_ids(self.tokenizer, prompts))
        pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        la = self._next_logits(self.model_a, DynamicCache(), enc["input_ids"], enc["attention_mask"], pos)
        lb = self._next_logits(self.model_b, DynamicCache(), enc["input_ids"], enc["attention_mask"], pos)
        return mix_logits(la, lb, self.alpha)

    def _encode(self, ids: list[list[int]]):
        return self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)

    def score(self, seqs: list[list[int]], firsts: list[int], chunk: int = 256) -> list[tuple]:
        """Teacher forcing under the mixed logits z = l_A + alpha (l_B - l_A)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return score_sorted([self.model_a, self.model_b], seqs, firsts, pad, self.batch_size, chunk, self.device,
                            mix=lambda la, lb: mix_logits(la, lb, self.alpha))

    def _mix_(self, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        """mix_logits(la, lb, alpha) with the same arithmetic, in place in lb (the last forward's
        logits, not needed again): no temporaries of the vocabulary's size."""
        return lb.sub_(la).mul_(self.alpha).add_(la)

    @torch.inference_mode()
    def generate_ids(self, prompts: list[str], sampling) -> list[list[list[int]]]:
        """Token ids (EOS excluded) of n samples per prompt."""
        from transformers import DynamicCache

        n = int(sampling_get(sampling, "n", 1))
        temperature = float(sampling_get(sampling, "temperature", 0.0))
        top_p = float(sampling_get(sampling, "top_p", 1.0))
        top_k = int(sampling_get(sampling, "top_k", -1))
        max_new = int(sampling_get(sampling, "max_tokens", 256))
        gen = torch.Generator(device=self.device).manual_seed(int(sampling_get(sampling, "seed", 0)))
        rows = [p for p in prompt_ids(self.tokenizer, prompts) for _ in range(n)]
        results: list[list[int]] = [[] for _ in rows]
        for start in progress(range(0, len(rows), self.batch_size), "logits extrapolation", unit="batch"):
            batch = rows[start:start + self.batch_size]
            enc = self._encode(batch)
            ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
            width = ids.shape[1]
            mask = torch.ones(len(batch), width + max_new, dtype=prompt_mask.dtype, device=self.device)
            mask[:, :width] = prompt_mask
            pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
            # position of the token fed at step t (t >= 1) is step_pos[:, t - 1]
            step_pos = pos[:, -1:] + torch.arange(1, max_new + 1, device=self.device)
            caches = (DynamicCache(), DynamicCache())
            owner = list(range(len(batch)))  # cache row -> position in `batch`
            active = [True] * len(batch)  # cache row still generating
            n_done = 0
            cur_ids, cur_mask, cur_pos = ids, prompt_mask, pos
            for step in range(max_new):
                la = self._next_logits(self.model_a, caches[0], cur_ids, cur_mask, cur_pos)
                lb = self._next_logits(self.model_b, caches[1], cur_ids, cur_mask, cur_pos)
                z = self._mix_(la, lb)
                if temperature <= 0:
                    tok = z.argmax(-1)
                else:
                    probs = torch.softmax(process_logits(z, temperature, top_p, top_k), dim=-1)
                    tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                for r, t in enumerate(tok.tolist()):  # the step's one host sync
                    if active[r]:
                        if t in self.eos:
                            active[r] = False
                            n_done += 1
                        else:
                            results[start + owner[r]].append(t)
                if n_done == len(owner) or step == max_new - 1:
                    break
                if n_done and n_done >= self.compact_at * len(owner):
                    keep = [r for r, a in enumerate(active) if a]
                    idx = torch.tensor(keep, device=self.device)
                    for c in caches:
                        _select_rows(c, idx)
                    owner = [owner[r] for r in keep]
                    active, n_done = [True] * len(keep), 0
                    tok, mask, step_pos = tok[idx], mask[idx], step_pos[idx]
                cur_ids = tok[:, None]
                cur_mask = mask[:, :width + step + 1]
                cur_pos = step_pos[:, step:step + 1]
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    def generate(self, prompts: list[str], sampling) -> list[list[str]]:
        ids = self.generate_ids(prompts, sampling)
        return [[self.tokenizer.decode(s, skip_special_tokens=True) for s in per] for per in ids]
