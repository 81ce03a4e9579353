"""Token log-prob (and raw logit) linearity over checkpoints (LIN, section A2), done properly:
float32 teacher forcing, prompt+response tokenised once with the exact boundary from offsets,
batched with padding, and the vocabulary projection + log-softmax computed a chunk of positions
at a time so full-vocabulary logits of long responses never sit in memory at once. Probes are
sampled and teacher-forced by the evaluation's HF engine (`Engine.generate` / `Engine.score`),
from the same prompt text as `rlvr evaluate` renders (one BOS).

`logprob_r2.json` schema (written by `rlvr linearity linearity.logprobs=true`):
    {"steps": [0, s1, ...],                      # checkpoints scored (base = 0)
     "n_sequences": int, "n_tokens_total": int,  # response tokens scored per checkpoint
     "filter": {"min_change": f, "max_tokens_sampled": int|null, "seed": int},
     "logprob": STATS, "logit": STATS,           # R² over steps of each token's log-prob / raw logit
     "examples": [{"sequence": i, "position": p, "token": str, "token_id": int,
                   "logprobs": [per step], "logits": [per step], "r2": f, "slope": f, "intercept": f}]}
    STATS = {"n_eligible": int, "n_tokens": int (after sampling), "n_defined": int,
             "mean", "std", "median", "q25", "q75", "min", "max": f,
             "frac_above": {"0.5", "0.7", "0.9": f}, "r2_values": [per sampled token, for histograms]}
A token is eligible when |value(last step) - value(first step)| > min_change (LIN: 0.2 on
log-probs); `max_tokens_sampled` eligible tokens are drawn without replacement (seeded).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlvr_linearity.errors import ConfigError, EvaluationError


def load_probes(path) -> list[dict]:
    """LIN's probe file `[{index, problem, gt, generated_texts: [{response_id, text}]}]` ->
    flat `[{"problem", "response_id", "response"}]`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = [{"problem": item["problem"], "response_id": g.get("response_id", i), "response": g["text"]}
               for item in data for i, g in enumerate(item["generated_texts"])]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluationError(f"file {path}: not a probe file [{{problem, generated_texts:[{{text}}]}}]: {err}") from None
    if not out:
        raise EvaluationError(f"file {path}: holds no responses")
    return out


def prompt_text(tokenizer, problem: str, instruction: str | None = None) -> str:
    """The probe prompt: `evaluate.prompts.chat_prompt` of the problem with `instruction` (LIN:
    "Let's think step by step ...") appended after a space, special tokens written in the text."""
    from rlvr_linearity.evaluate.prompts import chat_prompt

    return chat_prompt(tokenizer, f"{problem} {instruction}" if instruction else problem)


def encode(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of prompt+response tokenised ONCE, and the index of the first response token:
    the first token whose character span ends after the prompt (a token straddling the
    boundary counts as a response token). Needs a fast tokenizer (offsets)."""
    enc = tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    cut = len(prompt)
    first = next((i for i, (_, end) in enumerate(offsets) if end > cut), len(offsets))
    if first == 0:
        raise EvaluationError("probe: the prompt produced no token before the response")
    return list(enc["input_ids"]), first


def rows_r2(values: np.ndarray, steps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row OLS against steps: (R², slope, intercept); R² NaN for constant rows. [N, T] float64."""
    x = np.asarray(steps, dtype=np.float64)
    xc = x - x.mean()
    y = np.asarray(values, dtype=np.float64)
    yc = y - y.mean(1, keepdims=True)
    sxy, sxx, syy = yc @ xc, xc @ xc, np.einsum("ij,ij->i", yc, yc)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(syy > 0, np.clip(sxy * sxy / (sxx * syy), 0, 1), np.nan)
    slope = sxy / sxx
    return r2, slope, y.mean(1) - slope * x.mean()


def select_tokens(values: np.ndarray, min_change: float, max_tokens: int | None, seed: int) -> tuple[np.ndarray, int]:
    """LIN's eligibility: |last - first| > min_change, then up to max_tokens drawn without
    replacement (seeded). Returns (sorted row indices, number eligible)."""
    eligible = np.flatnonzero(np.abs(values[:, -1] - values[:, 0]) > min_change)
    n_elig = int(eligible.size)
    if max_tokens is not None and eligible.size > max_tokens:
        eligible = np.sort(np.random.default_rng(seed).choice(eligible, size=int(max_tokens), replace=False))
    return eligible, n_elig


def r2_stats(r2: np.ndarray, thresholds=(0.5, 0.7, 0.9)) -> dict:
    d = r2[np.isfinite(r2)]
    out = {"n_tokens": int(r2.size), "n_defined": int(d.size)}
    if d.size:
        q25, med, q75 = np.quantile(d, [0.25, 0.5, 0.75])
        out.update(mean=float(d.mean()), std=float(d.std(ddof=1)) if d.size > 1 else 0.0, median=float(med),
                   q25=float(q25), q75=float(q75), min=float(d.min()), max=float(d.max()),
                   frac_above={f"{t:g}": float(np.mean(d > t)) for t in thresholds})
    out["r2_values"] = [round(float(v), 6) for v in d]
    return out


def token_linearity(logprobs: np.ndarray, logits: np.ndarray, steps, *, min_change: float = 0.0,
                    max_tokens: int | None = None, seed: int = 42, tokens=None, examples: int = 4) -> dict:
    """Statistics of per-token R² (log-probs [N, T] and raw logits [N, T] over `steps`).

    `tokens`: optional [(sequence, position, token_id, token_str)] per row for the examples.
    Eligibility is decided on the log-probs; the logit statistics use the same tokens.
    """
    if logprobs.shape[1] < 2:
        raise ConfigError("log-prob linearity needs at least two checkpoints")
    rows, n_elig = select_tokens(logprobs, min_change, max_tokens, seed)
    r2, slope, icpt = rows_r2(logprobs[rows], steps)
    r2_logit, _, _ = rows_r2(logits[rows], steps)
    out = {"steps": [int(s) for s in steps], "n_tokens_total": int(logprobs.shape[0]),
           "filter": {"min_change": min_change, "max_tokens_sampled": max_tokens, "seed": seed},
           "logprob": {"n_eligible": n_elig, **r2_stats(r2)}, "logit": {"n_eligible": n_elig, **r2_stats(r2_logit)}}
    ex = []
    finite = np.flatnonzero(np.isfinite(r2))
    if finite.size and examples:
        # the tokens that moved most, for readable trajectories
        order = finite[np.argsort(-np.abs(logprobs[rows[finite], -1] - logprobs[rows[finite], 0]))][:examples]
        for k in order:
            row = int(rows[k])
            e = {"row": row, "logprobs": logprobs[row].tolist(), "logits": logits[row].tolist(),
                 "r2": float(r2[k]), "slope": float(slope[k]), "intercept": float(icpt[k])}
            if tokens is not None:
                seq, pos, tid, tok = tokens[row]
                e.update(sequence=int(seq), position=int(pos), token_id=int(tid), token=tok)
            else:
                e["token"] = str(row)
            ex.append(e)
    out["examples"] = ex
    return out


def _hf_engine(path, batch_size: int, device, trust_remote_code: bool):
    """The HF engine in float32 (never a bf16 load of fp32 weights), as probes and teacher forcing need."""
    from rlvr_linearity.evaluate.engines.hf import HFEngine

    return HFEngine(str(path), device=str(device), dtype="float32", batch_size=batch_size,
                    trust_remote_code=trust_remote_code)


def generate_probes(model_path, problems: list[str], *, n_samples: int = 1, max_new_tokens: int = 256,
                    temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1, seed: int = 42,
                    batch_size: int = 8, instruction: str | None = None, device="cpu",
                    trust_remote_code: bool = False) -> list[dict]:
    """Probe responses sampled from the base model by the evaluation's HF engine (`batch_size`
    sequences per batch), in LIN's probe format `[{index, problem, gt, generated_texts: [{response_id, text}]}]`."""
    engine = _hf_engine(model_path, batch_size, device, trust_remote_code)
    prompts = [prompt_text(engine.tokenizer, p, instruction) for p in problems]
    texts = engine.generate(prompts, {"n": n_samples, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                                      "max_tokens": max_new_tokens, "seed": seed})
    return [{"index": i, "problem": p, "gt": None,
             "generated_texts": [{"response_id": k, "text": t} for k, t in enumerate(samples)]}
            for i, (p, samples) in enumerate(zip(problems, texts))]


def teacher_forced_matrix(traj, steps, probes: list[dict], *, instruction: str | None = None, batch_size: int = 8,
                          chunk: int = 256, device="cpu", progress: bool = True, trust_remote_code: bool = False):
    """Log-probs and raw logits [N_tokens, T] (float32) of every response token at every step,
    plus [(sequence, position, token_id, token_str)] per row. One checkpoint in memory at a time."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(traj.model(0).path), trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"file {traj.model(0).path}: log-prob linearity needs a fast tokenizer (offsets)")
    encoded = [encode(tok, prompt_text(tok, p["problem"], instruction), p["response"]) for p in probes]
    keep = [i for i, (ids, first) in enumerate(encoded) if first < len(ids)]  # empty responses carry no token
    tokens, offsets, n = [], {}, 0
    for i in keep:
        ids, first = encoded[i]
        offsets[i] = n
        n += len(ids) - first
        tokens += [(i, p, ids[p], tok.decode([ids[p]])) for p in range(first, len(ids))]
    lp = np.zeros((n, len(steps)), dtype=np.float32)
    lg = np.zeros((n, len(steps)), dtype=np.float32)
    for j, step in enumerate(tqdm(steps, desc="teacher forcing", unit="ckpt", disable=not progress)):
        engine = _hf_engine(traj.model(step).path, batch_size, device, trust_remote_code)
        scores = engine.score([encoded[i][0] for i in keep], [encoded[i][1] for i in keep], chunk)
        for i, (l1, l2) in zip(keep, scores):
            lp[offsets[i]: offsets[i] + len(l1), j] = l1
            lg[offsets[i]: offsets[i] + len(l2), j] = l2
        del engine
    return lp, lg, tokens
