"""Dual-model logits-extrapolation decoding vs single-model `generate`: tokens/s, same batch.

    python scripts/bench_logits_extrapolation.py --model-a A --model-b B [--batch 16 --tokens 64]

Without models, two random tiny Qwen2 models are built in a temp dir (CPU smoke numbers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from rlvr_linearity.extrapolate.logits import LogitsExtrapolationEngine


def _tiny_pair(root: str) -> tuple[str, str]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import make_tiny_model_dir

    return (str(make_tiny_model_dir(Path(root) / "a", seed=1, hidden=128, layers=4)),
            str(make_tiny_model_dir(Path(root) / "b", seed=2, hidden=128, layers=4)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-a")
    ap.add_argument("--model-b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    a, b = (args.model_a, args.model_b) if args.model_a else _tiny_pair(tmp)
    eng = LogitsExtrapolationEngine(a, b, 0.5, {"device": args.device, "batch_size": args.batch})
    eng.eos = {-1}  # never stop: both sides decode exactly --tokens tokens
    prompts = [f"Compute {i} + {2 * i} and explain." for i in range(args.batch)]
    sampling = {"temperature": 0.0, "max_tokens": args.tokens}
    eng.generate_ids(prompts[:2], {"temperature": 0.0, "max_tokens": 2})  # warm-up
    sync = torch.cuda.synchronize if eng.device == "cuda" else (lambda: None)
    t = time.perf_counter()
    eng.generate_ids(prompts, sampling)
    sync()
    dual = time.perf_counter() - t
    enc = eng.tokenizer(prompts, return_tensors="pt", padding=True).to(eng.device)
    t = time.perf_counter()
    with torch.no_grad():
        eng.model_a.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                             pad_token_id=eng.tokenizer.pad_token_id)
    sync()
    single = time.perf_counter() - t
    n = args.batch * args.tokens
    print(json.dumps({"device": eng.device, "batch": args.batch, "new_tokens": args.tokens,
                      "dual_tokens_per_s": round(n / dual, 1), "single_generate_tokens_per_s": round(n / single, 1),
                      "dual_over_single_time": round(dual / single, 2)}, indent=2))


if __name__ == "__main__":
    main()
