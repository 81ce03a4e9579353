"""LIN's mechanism analyses: the output-change decomposition is an exact identity on a real
model's linear modules, and activation R² agrees with an independent numpy fit."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_model_dir

from rlvr_linearity.linearity.mechanism import (activation_linearity, decomposition_summary, forward_record,
                                                linear_terms, pair_decomposition)


def _record(path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    return forward_record(model, {"input_ids": ids, "attention_mask": (ids != 0).long()})


def test_decomposition_is_exact_on_a_model_with_biases(tmp_path):
    """Two different random Qwen2 models (q/k/v biases, untied lm_head): for every linear module,
    input + weight + second-order terms equal the change of the module's observed output."""
    ids = torch.tensor([[5, 9, 17, 3, 0, 0], [7, 7, 21, 40, 11, 2]])
    rec0, hid0, info = _record(make_tiny_model_dir(tmp_path / "a", seed=1), ids)
    rec1, hid1, _ = _record(make_tiny_model_dir(tmp_path / "b", seed=2), ids)
    assert info["n_tokens"] == 10 and len(hid0) == 3 and hid0[0].shape == (10, 32)
    assert {n for n in rec0 if "q_proj" in n} and rec0["model.layers.0.self_attn.q_proj"][3] is not None
    for name, (x0, y0, w0, b0) in rec0.items():
        x1, y1, w1, b1 = rec1[name]
        terms = linear_terms(x0, x1, w0, w1, b0, b1)
        np.testing.assert_allclose(sum(terms.values()), y1 - y0, rtol=0, atol=1e-12 * max(1.0, np.abs(y1).max()))
        assert np.abs(terms["weight"]).max() > 0 and np.abs(terms["input"]).max() > 0
    layers, err = pair_decomposition(rec0, rec1)
    assert set(layers) == {"0", "1", "lm_head"} and err < 1e-10
    # the lm_head's input-term norm, computed independently in torch
    x0, _, w0, _ = rec0["lm_head"]
    x1 = rec1["lm_head"][0]
    ref = torch.linalg.vector_norm((torch.from_numpy(x1) - torch.from_numpy(x0)) @ torch.from_numpy(w0).T, dim=1)
    assert layers["lm_head"]["input"] == pytest.approx(float(ref.mean()), rel=1e-12)


def test_decomposition_summary_shares_and_means():
    pairs = [{"from": 0, "to": 1, "identity_error": 1e-15,
              "layers": {"1": {"input": 3.0, "weight": 1.0, "second_order": 0.0, "total": 3.5},
                         "0": {"input": 1.0, "weight": 1.0, "second_order": 2.0, "total": 2.0}}},
             {"from": 1, "to": 2, "identity_error": 2e-15,
              "layers": {"1": {"input": 5.0, "weight": 3.0, "second_order": 0.0, "total": 6.0},
                         "0": {"input": 1.0, "weight": 1.0, "second_order": 2.0, "total": 2.0}}}]
    s = decomposition_summary([0, 1, 2], pairs)
    assert s["layers"] == ["0", "1"] and s["max_identity_error"] == 2e-15
    assert s["mean"]["1"]["input"] == 4.0 and s["mean"]["1"]["share"] == {"input": 4 / 6, "weight": 2 / 6,
                                                                         "second_order": 0.0}
    assert s["mean"]["0"]["share"]["second_order"] == 0.5


def test_activation_r2_matches_an_independent_fit():
    rng = np.random.default_rng(0)
    steps = np.array([0, 1, 3, 4, 7, 10], float)
    t, layers, n, h = len(steps), 2, 5, 4
    slope = rng.normal(size=(layers, n, h))
    noise = rng.normal(size=(t, layers, n, h)) * np.array([0.1, 3.0])[None, :, None, None]
    hidden = slope[None] * steps[:, None, None, None] + noise
    hidden[:, 0, 0, 0] = 2.5  # a constant activation: R² undefined, left out
    res = activation_linearity(hidden, steps, thresholds=(0.7,))
    for layer in range(layers):
        y = hidden[:, layer].reshape(t, -1).T
        ref = []
        for row in y:
            if np.ptp(row) == 0:
                continue
            fit = np.polyval(np.polyfit(steps, row, 1), steps)
            ref.append(1 - np.sum((row - fit) ** 2) / np.sum((row - row.mean()) ** 2))
        ref = np.array(ref)
        got = res["layers"][layer]
        assert got["n_activations"] == n * h and got["n_defined"] == ref.size
        assert got["median"] == pytest.approx(np.median(ref), abs=1e-10)
        assert got["mean"] == pytest.approx(ref.mean(), abs=1e-10)
        assert got["frac_above"]["0.7"] == pytest.approx(np.mean(ref > 0.7))
        assert sum(got["histogram"]) == ref.size
    assert res["layers"][0]["median"] > res["layers"][1]["median"]  # less noise, more linear
    ex = res["layers"][0]["examples"][0]
    assert ex["values"] == hidden[:, 0, ex["token"], ex["unit"]].tolist()
