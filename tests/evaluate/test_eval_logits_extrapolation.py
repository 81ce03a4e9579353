"""Logits extrapolation engine: alpha 0/1 greedy == model.generate of A/B token for token; the
mixed distribution == a direct float64 computation; row dropping == a cache-free reference."""

import numpy as np
import pytest
import torch
from conftest import compose_config, greedy_generate
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr_linearity.evaluate.engines.logits import LogitsExtrapolationEngine

PROMPTS = ["Compute 1 + 2.", "Compute 13 - 4 and box it.", "7 * 3 ="]
CPU = {"device": "cpu", "dtype": "auto", "batch_size": 4, "compact_at": None}


@pytest.fixture
def pair(tiny_model_dir):
    return str(tiny_model_dir(seed=1)), str(tiny_model_dir(seed=2))


@pytest.mark.parametrize("alpha,which", [(0.0, 0), (1.0, 1)])
def test_alpha_endpoints_reproduce_models(pair, alpha, which):
    eng = LogitsExtrapolationEngine(*pair, alpha, **CPU)
    got = [s[0] for s in eng.generate_ids(PROMPTS, {"n": 1, "temperature": 0.0, "max_tokens": 8})]
    eos = next(iter(eng.eos))
    assert got == greedy_generate(pair[which], PROMPTS, 8, eos)


def _reference_mixed_greedy(pair, alpha, prompt, max_new, eos):
    tok = AutoTokenizer.from_pretrained(pair[0])
    ma, mb = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float64).eval() for p in pair)
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            la, lb = ma(input_ids=ids).logits[0, -1], mb(input_ids=ids).logits[0, -1]
            t = int((la + alpha * (lb - la)).argmax())
            if t in eos:
                break
            out.append(t)
            ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    return out


def test_mixed_greedy_with_finished_rows_matches_cache_free_reference(pair):
    eng = LogitsExtrapolationEngine(*pair, 1.7, **CPU)
    first = eng.generate_ids(PROMPTS, {"temperature": 0.0, "max_tokens": 6})
    eng.eos = {first[0][0][2]}  # make prompt 0 finish early so rows are dropped mid-batch
    got = [s[0] for s in eng.generate_ids(PROMPTS, {"temperature": 0.0, "max_tokens": 6})]
    ref = [_reference_mixed_greedy(pair, 1.7, p, 6, eng.eos) for p in PROMPTS]
    assert got == ref and len(got[0]) < 6


def _direct_distribution(pair, alpha, prompt, temperature, top_p):
    tok = AutoTokenizer.from_pretrained(pair[0])
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    la, lb = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float64)(input_ids=ids).logits[0, -1]
              .detach().numpy() for p in pair)
    z = (la + alpha * (lb - la)) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    mass = 0.0
    for i in order:
        keep[i] = True
        mass += p[i]
        if mass >= top_p:
            break
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def test_next_token_distribution_matches_direct(pair):
    from rlvr_linearity.evaluate.engines.logits import process_logits

    eng = LogitsExtrapolationEngine(*pair, 2.5, **CPU)
    z = eng.first_step_logits(PROMPTS)
    probs = torch.softmax(process_logits(z.double(), 0.8, 0.9), dim=-1).numpy()
    for i, p in enumerate(PROMPTS):
        ref = _direct_distribution(pair, 2.5, p, 0.8, 0.9)
        assert ((probs[i] > 0) == (ref > 0)).all()
        np.testing.assert_allclose(probs[i], ref, atol=1e-5)


def test_sampling_shapes_and_seed(pair):
    eng = LogitsExtrapolationEngine(*pair, 0.5, **CPU)
    s = {"n": 3, "temperature": 1.0, "top_p": 0.95, "max_tokens": 5, "seed": 7}
    a = eng.generate(PROMPTS[:2], s)
    assert [len(x) for x in a] == [3, 3] and a == eng.generate(PROMPTS[:2], s)


def test_evaluate_with_logits_engine(pair, tmp_path, rlvr_cache):
    from rlvr_linearity.evaluate.app import evaluate

    cfg = compose_config("evaluate", "logger=none", "engine=logits_extrapolation", f"engine.models=[{pair[0]},{pair[1]}]",
                         "engine.alpha=0.5", "engine.device=cpu", "evaluate.max_problems=2", "sampling.max_tokens=4")
    m = evaluate(cfg, tmp_path)["arithmetic"]
    assert m["n_problems"] == 2 and m["n_samples"] == 2


def test_lazy_compaction_gives_the_same_tokens(pair):
    """Finished rows carried along (as on a GPU) until compacted: the kept rows' tokens are unchanged."""
    eng = LogitsExtrapolationEngine(*pair, 1.7, **CPU)
    greedy = {"temperature": 0.0, "max_tokens": 6}
    first = eng.generate_ids(PROMPTS, greedy)
    eng.eos = {first[0][0][2]}
    eager = eng.generate_ids(PROMPTS, greedy)
    assert eng.compact_at == 0.0 and len(eager[0][0]) < 6
    for fraction in (0.5, 1.0):  # 1.0: never compacted before every row has finished
        eng.compact_at = fraction
        assert eng.generate_ids(PROMPTS, greedy) == eager


def test_forward_asks_for_the_last_position_only(pair):
    eng = LogitsExtrapolationEngine(*pair, 0.5, **CPU)
    assert eng._forward_kwargs(eng.model_a) == {"logits_to_keep": 1}

    class Bare(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None):
            raise NotImplementedError

    assert eng._forward_kwargs(Bare()) == {}
