"""Dual-model logits-extrapolation decoding vs single-model `generate`: tokens/s, same batch.

    python scripts/bench_logits_extrapolation.py --model-a A --model-b B [--batch 16 --tokens 64]

Without models, two random small Qwen2 models are built in a temp dir (CPU smoke numbers):
`--vocab` (default 151936, Qwen2's, so the per-step logits work is a real model's), `--hidden`,
`--layers`; `--prompt-words` pads the prompts (a chat-templated math prompt is ~100+ tokens).
Dual and single runs alternate `--repeats` times; the best of each is reported, with the CPU
seconds of the process (the fairer ratio on a shared CPU) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from rlvr_linearity.evaluate.engines.logits import LogitsExtrapolationEngine


def _tiny_pair(root: str, vocab: int, hidden: int, layers: int) -> tuple[str, str]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import make_tiny_model_dir

    return tuple(str(make_tiny_model_dir(Path(root) / name, seed=seed, hidden=hidden, layers=layers, vocab=vocab))
                 for name, seed in (("a", 1), ("b", 2)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-a")
    ap.add_argument("--model-b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=0, help="filler words added to every prompt")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    a, b = (args.model_a, args.model_b) if args.model_a else _tiny_pair(tmp, args.vocab, args.hidden, args.layers)
    eng = LogitsExtrapolationEngine(a, b, 0.5, device=args.device, dtype="auto", batch_size=args.batch, compact_at=None)
    eng.eos = {-1}  # never stop: both sides decode exactly --tokens tokens
    filler = " ".join(["step"] * args.prompt_words)
    prompts = [f"{filler} Compute {i} + {2 * i} and explain." for i in range(args.batch)]
    sampling = {"temperature": 0.0, "max_tokens": args.tokens}
    eng.generate_ids(prompts[:2], {"temperature": 0.0, "max_tokens": 2})  # warm-up
    sync = torch.cuda.synchronize if eng.device == "cuda" else (lambda: None)
    enc = eng.tokenizer(prompts, return_tensors="pt", padding=True).to(eng.device)

    def dual():
        eng.generate_ids(prompts, sampling)

    def single():
        with torch.no_grad():
            eng.model_a.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=eng.tokenizer.pad_token_id)

    best = {"dual": (float("inf"), float("inf")), "single": (float("inf"), float("inf"))}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, fn in (("dual", dual), ("single", single)):
            sync()
            w, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            w, c = time.perf_counter() - w, time.process_time() - c
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    n = args.batch * args.tokens
    (dual_w, dual_c), (single_w, single_c) = best["dual"], best["single"]
    print(json.dumps({"device": eng.device, "batch": args.batch, "new_tokens": args.tokens,
                      "prompt_tokens": int(enc["input_ids"].shape[1]), "vocab": eng.model_a.config.vocab_size,
                      "dual_tokens_per_s": round(n / dual_w, 1), "single_generate_tokens_per_s": round(n / single_w, 1),
                      "dual_over_single_tokens_per_s": round(single_w / dual_w, 3),
                      "dual_over_single_by_cpu_time": round(single_c / dual_c, 3),
                      "torch_threads": torch.get_num_threads(), "load_avg_1m": round(load, 2)}, indent=2))


if __name__ == "__main__":
    main()
