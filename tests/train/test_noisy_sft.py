"""Reward-style noise in SFT's token-level signal (LIN Fig. 3): the weights have the noise power
the SNR asks for, and they change the loss and its gradient (none without noise)."""

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model_dir

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.train.noisy_sft import noise_sigma, token_weights, weighted_nll


def test_sigma_from_snr():
    assert noise_sigma(None) == 0.0
    assert noise_sigma(0.0) == 1.0
    assert noise_sigma(-10.0) == pytest.approx(math.sqrt(10.0))
    assert 10 * math.log10(1.0 / noise_sigma(7.0) ** 2) == pytest.approx(7.0)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_weights_have_the_asked_noise_power(granularity):
    mask = torch.zeros(4000, 6, dtype=torch.bool)
    mask[:, 2:] = True
    w = token_weights(mask, 2.0, granularity, torch.Generator().manual_seed(0)).double()
    assert torch.all(w[:, :2] == 0)
    noise = (w[:, 2:] - 1.0).numpy()
    assert abs(noise.mean()) < 0.1 and noise.var() == pytest.approx(4.0, rel=0.05)
    per_row_spread = np.ptp(noise, axis=1)
    assert (per_row_spread < 1e-6).all() if granularity == "sequence" else (per_row_spread > 0).all()
    assert torch.equal(token_weights(mask, 0.0, granularity, torch.Generator()), mask.float())
    with pytest.raises(ConfigError, match="mechanism.noise"):
        token_weights(mask, 1.0, "step", torch.Generator())


def test_noise_changes_the_loss_signal(tmp_path):
    """Unit weights give exactly the model's own SFT loss; noisy weights change the loss and
    the gradient."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_model_dir(tmp_path / "m", seed=3), dtype=torch.float64)
    ids = torch.tensor([[5, 9, 17, 3, 8, 12], [7, 7, 21, 40, 11, 2]])
    labels = ids.clone()
    labels[:, :3] = -100
    mask = labels[:, 1:] != -100

    def loss_and_grad(weights):
        model.zero_grad()
        loss = weighted_nll(model(input_ids=ids).logits, labels, weights.double())
        loss.backward()
        return loss.item(), model.lm_head.weight.grad.clone()

    plain, g_plain = loss_and_grad(mask.double())
    assert plain == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), rel=1e-6)  # HF's is float32
    weights = token_weights(mask, noise_sigma(-10.0), "sequence", torch.Generator().manual_seed(1))
    noisy, g_noisy = loss_and_grad(weights)
    assert abs(noisy - plain) > 1e-3 * plain
    cos = torch.nn.functional.cosine_similarity(g_plain.flatten(), g_noisy.flatten(), dim=0)
    assert cos < 0.999
