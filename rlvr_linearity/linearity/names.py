"""Tensor names -> (module type, layer) for aggregation and the heatmap, for any architecture.

Works on Qwen2/Qwen3/Llama/Mistral (`model.layers.N.self_attn.q_proj.weight`), GPT-style
(`transformer.h.N.attn.c_attn.weight`), MoE experts (`mlp.experts.E.gate_proj.weight` pooled
over E) and non-layer tensors (embeddings, final norm, lm_head). No layer count is assumed.
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"\.experts\.\d+\.")

# LIN's heatmap row order; other module types follow in order of appearance.
MODULE_ORDER = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                "mlp.down_proj"]


def parse_name(name: str) -> tuple[str, int | None]:
    """`("self_attn.q_proj", 3)` for `model.layers.3.self_attn.q_proj.weight`; biases keep a
    `.bias` suffix (`self_attn.q_proj.bias`); non-layer tensors get layer None and a short name
    (`embed_tokens`, `norm`, `lm_head`)."""
    m = _LAYER.search(name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
    else:
        layer, rest = None, name
        for prefix in ("model.", "transformer.", "language_model.model.", "language_model."):
            if rest.startswith(prefix):
                rest = rest[len(prefix):]
                break
    rest = _EXPERT.sub(".experts.", "." + rest)[1:]
    if rest.endswith(".weight"):
        rest = rest[: -len(".weight")]
    return rest, layer


def module_sort_key(module: str) -> tuple[int, str]:
    return (MODULE_ORDER.index(module), "") if module in MODULE_ORDER else (len(MODULE_ORDER), module)
