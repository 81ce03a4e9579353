"""Token log-prob linearity: boundary from one tokenisation, chunked teacher forcing vs a full
forward pass, per-token R² vs np.corrcoef, LIN's eligibility filter."""

import json

import numpy as np
import pytest
import torch

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.linearity import logprob


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("tiny")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["what is 12 + 30 ? the answer is 42 .", "compute 7 * 6 = 42"] * 20,
                           trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<eos>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    model.save_pretrained(d)
    return d, tok, model.eval()


def test_encode_boundary(tiny):
    _, tok, _ = tiny
    prompt, resp = "what is 12 + 30 ?", " the answer is 42 ."
    ids, first = logprob.encode(tok, prompt, resp)
    assert ids == tok(prompt + resp, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[:first]) == prompt and tok.decode(ids[first:]) == resp
    # a boundary inside a merge: the straddling token belongs to the response
    ids, first = logprob.encode(tok, "what is 1", "2 + 30")
    assert tok.decode(ids[first:]).endswith("2 + 30")
    assert tok.decode(ids[:first]) + tok.decode(ids[first:]) == "what is 12 + 30"


def test_engine_score_matches_full_forward(tiny):
    from rlvr_linearity.evaluate.engines.hf import HFEngine

    d, tok, model = tiny
    engine = HFEngine(str(d), device="cpu", dtype="float32", batch_size=2, trust_remote_code=False)
    seqs = [logprob.encode(tok, "what is 12 + 30 ?", " the answer is 42 ."), logprob.encode(tok, "compute", " 7 * 6 = 42"),
            logprob.encode(tok, "7", " * 6")]
    got = engine.score([s for s, _ in seqs], [f for _, f in seqs], chunk=3)
    for (ids, first), (lp, lg) in zip(seqs, got):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        ref_lp = torch.log_softmax(logits, -1)[torch.arange(first - 1, len(ids) - 1), ids[first:]].numpy()
        ref_lg = logits[torch.arange(first - 1, len(ids) - 1), ids[first:]].numpy()
        assert lp.shape == (len(ids) - first,)
        assert np.allclose(lp, ref_lp, atol=1e-4) and np.allclose(lg, ref_lg, atol=1e-4)


def test_token_linearity_vs_reference():
    rng = np.random.default_rng(0)
    steps = [0, 1, 3, 4, 9]
    lp = rng.normal(size=(500, 5)).cumsum(1) * 0.1 + np.asarray(steps) * rng.normal(size=(500, 1)) * 0.1
    lp[:10] = -1.0  # constant
    lg = lp * 2 + rng.normal(size=lp.shape) * 0.01
    res = logprob.token_linearity(lp, lg, steps, min_change=0.2, max_tokens=100, seed=42)
    elig = np.flatnonzero(np.abs(lp[:, -1] - lp[:, 0]) > 0.2)
    rows = np.sort(np.random.default_rng(42).choice(elig, 100, replace=False))
    ref = np.array([np.corrcoef(steps, lp[r])[0, 1] ** 2 for r in rows])
    ref_lg = np.array([np.corrcoef(steps, lg[r])[0, 1] ** 2 for r in rows])
    st = res["logprob"]
    assert st["n_eligible"] == elig.size and st["n_tokens"] == 100
    assert abs(st["mean"] - ref.mean()) < 1e-9 and abs(st["median"] - np.median(ref)) < 1e-9
    assert abs(st["q25"] - np.quantile(ref, 0.25)) < 1e-9 and abs(st["std"] - ref.std(ddof=1)) < 1e-9
    assert abs(res["logit"]["mean"] - ref_lg.mean()) < 1e-9
    assert st["frac_above"]["0.7"] == pytest.approx(np.mean(ref > 0.7))
    assert len(res["examples"]) == 4
    e = res["examples"][0]
    assert abs(e["r2"] - np.corrcoef(steps, lp[e["row"]])[0, 1] ** 2) < 1e-9


def test_load_probes(tmp_path):
    p = tmp_path / "probes.json"
    p.write_text(json.dumps([{"index": 0, "problem": "q", "gt": "1", "generated_texts": [{"response_id": 0, "text": "a"},
                                                                                     {"response_id": 1, "text": "b"}]}]))
    assert logprob.load_probes(p) == [{"problem": "q", "response_id": 0, "response": "a"},
                                      {"problem": "q", "response_id": 1, "response": "b"}]
    p.write_text("{not json")
    with pytest.raises(EvaluationError, match="probes.json"):
        logprob.load_probes(p)
