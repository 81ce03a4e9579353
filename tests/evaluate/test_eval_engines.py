"""Engines: hf batched left-padded greedy == one prompt at a time; n samples; vllm params."""

import pytest
from omegaconf import OmegaConf

from rlvr_linearity.evaluate.engines.hf import HFEngine

PROMPTS = ["Compute 1 + 2.", "Compute 13 - 4 and put it in a box, please."]


def test_hf_batched_left_padding_matches_single(tiny_model_dir):
    eng = HFEngine(str(tiny_model_dir()), OmegaConf.create({"device": "cpu", "batch_size": 8}))
    greedy = {"n": 2, "temperature": 0.0, "max_tokens": 6, "seed": 0}
    batched = eng.generate(PROMPTS, greedy)
    single = [eng.generate([p], greedy)[0] for p in PROMPTS]
    assert batched == single and all(len(s) == 2 and s[0] == s[1] for s in batched)
    sampled = eng.generate(PROMPTS, {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "seed": 1})
    assert [len(s) for s in sampled] == [3, 3]
    assert sampled == eng.generate(PROMPTS, {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "seed": 1})


def test_vllm_sampling_params():
    pytest.importorskip("vllm")
    from rlvr_linearity.evaluate.engines.vllm import sampling_params

    sp = sampling_params({"n": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_tokens": 99, "seed": 3})
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed) == (4, 0.7, 0.9, 20, 99, 3)
