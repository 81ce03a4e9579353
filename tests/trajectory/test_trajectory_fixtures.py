"""The shared fixtures write what they claim: loadable models, stored values, drift."""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import make_tiny_model_dir, make_trajectory


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_model_loads(tmp_path, tied, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = make_tiny_model_dir(tmp_path / "m", tied=tied, dtype=dtype, seed=1)
    model = AutoModelForCausalLM.from_pretrained(d, dtype="auto")
    tok = AutoTokenizer.from_pretrained(d)
    assert model.dtype == dtype
    assert model.config.tie_word_embeddings == tied
    with safe_open(d / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in f.keys()) != tied
        emb = f.get_tensor("model.embed_tokens.weight")
    assert torch.equal(model.model.embed_tokens.weight.detach(), emb)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert max(ids) < model.config.vocab_size
    out = model(torch.tensor([ids]))
    assert torch.isfinite(out.logits).all()


def test_trajectory_values_match_files(tmp_path):
    t = make_trajectory(tmp_path, "verl", [1, 3, 4], tied=True, dtype=torch.float32, base_dtype=torch.bfloat16,
                        noise=1e-4, write_json=True)
    assert (t.path / "latest_checkpointed_iteration.txt").read_text() == "4"
    cfg = json.loads((t.step_dirs[3] / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    with safe_open(t.step_dirs[3] / "model.safetensors", "pt") as f:
        w = f.get_tensor("model.norm.weight")
        assert w.dtype == torch.float32
        assert torch.equal(w.double(), t.values[3]["model.norm.weight"])
    with safe_open(t.base / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    name = "model.layers.0.mlp.up_proj.weight"
    d = t.values[4][name] - t.values[1][name]
    assert torch.allclose(d, 3 * 1e-2 * t.directions[name], atol=1e-3)
    assert json.loads((t.path / "trajectory.json").read_text())["base"] == str(t.base)
