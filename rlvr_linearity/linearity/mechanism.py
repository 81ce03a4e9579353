"""LIN's mechanism analyses on fixed probe inputs (docs/mechanism.md): where a layer's output
change comes from (Fig. 4) and how linearly hidden activations move over training.

Fig. 4. A linear module maps its input x with weight W (and bias b) to y = W x + b. Between two
checkpoints (x₀, W₀, b₀) → (x₁, W₁, b₁), with Δx = x₁ − x₀, ΔW = W₁ − W₀, Δb = b₁ − b₀:

    Δy = W₀ Δx  +  (ΔW x₀ + Δb)  +  ΔW Δx
         input     weight           second order

exactly. Δx collects every upstream change (earlier layers' weights, attention mixing), ΔW the
module's own update. Per layer the terms of its linear modules are stacked per token, their L2
norms averaged over the probe tokens and then over consecutive checkpoint pairs.

Activation linearity: the embedding output and the output of every decoder layer (HF
`hidden_states`, the last one after the final norm as HF returns it) at every probe
position and hidden unit is one trajectory over the steps; its R² is the OLS R² against the
step, as for weights (docs/methods.md §A1) and token log-probs (§A2).

Everything runs in float64, so the decomposition identity holds to rounding.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.logprob import r2_stats, rows_r2
from rlvr_linearity.linearity.names import parse_name

TERMS = ("input", "weight", "second_order")


def linear_terms(x0: np.ndarray, x1: np.ndarray, w0: np.ndarray, w1: np.ndarray,
                 b0: np.ndarray | None = None, b1: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three parts of the change of y = x Wᵀ + b for inputs [N, in] and weights [out, in]
    (float64): input W₀Δx, weight ΔW x₀ + Δb, second order ΔW Δx; each [N, out]."""
    x0, x1, w0, w1 = (np.asarray(a, dtype=np.float64) for a in (x0, x1, w0, w1))
    dx, dw = x1 - x0, w1 - w0
    weight = x0 @ dw.T
    if b0 is not None:
        weight = weight + (np.asarray(b1, np.float64) - np.asarray(b0, np.float64))
    return {"input": dx @ w0.T, "weight": weight, "second_order": dx @ dw.T}


@contextmanager
def captured_linears(model):
    """Record every `nn.Linear`'s input and output of the next forward: yields
    {module name: [input [N, in], output [N, out]]} (leading dims flattened)."""
    seen: dict[str, list] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(m, inp, out, name=name):
                seen[name] = [inp[0].detach().reshape(-1, m.in_features), out.detach().reshape(-1, m.out_features)]
            hooks.append(mod.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def layer_label(module_name: str) -> str:
    """"0", "1", ... for decoder layers; the short name (`lm_head`) for the rest."""
    module, layer = parse_name(module_name + ".weight")
    return str(layer) if layer is not None else module


def probe_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask of the probe texts (special tokens written in the text)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        return dict(tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False))
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def forward_record(model, batch: dict) -> tuple[dict, list[np.ndarray], dict]:
    """One float64 forward of the probes: ({linear module: (x, y, W, b)} at valid tokens,
    hidden states per layer [valid tokens, H] (embedding output first), valid-token mask)."""
    keep = batch["attention_mask"].reshape(-1).bool()
    with captured_linears(model) as seen:
        out = model(**batch, output_hidden_states=True, use_cache=False)
    mods = dict(model.named_modules())
    linears = {}
    for name, (x, y) in seen.items():
        b = mods[name].bias
        linears[name] = (x[keep].numpy(), y[keep].numpy(), mods[name].weight.detach().numpy().copy(),
                         None if b is None else b.detach().numpy().copy())
    hidden = [h.reshape(-1, h.shape[-1])[keep].numpy() for h in out.hidden_states]
    return linears, hidden, {"n_tokens": int(keep.sum())}


def pair_decomposition(rec0: dict, rec1: dict) -> tuple[dict[str, dict[str, float]], float]:
    """Per layer: the probe-token mean of the L2 norm of each term and of the total change
    (the layer's linear modules' outputs stacked per token); and the largest |sum of terms −
    observed Δy| relative to max |Δy| (the identity check, ~1e-15 in float64)."""
    sq: dict[str, dict[str, np.ndarray]] = {}
    worst = 0.0
    for name, (x0, y0, w0, b0) in rec0.items():
        x1, y1, w1, b1 = rec1[name]
        terms = linear_terms(x0, x1, w0, w1, b0, b1)
        total = y1.astype(np.float64) - y0
        resid = np.abs(sum(terms.values()) - total).max(initial=0.0)
        worst = max(worst, float(resid / max(np.abs(total).max(initial=0.0), 1e-300)))
        acc = sq.setdefault(layer_label(name), {k: 0.0 for k in (*TERMS, "total")})
        for k, v in (*terms.items(), ("total", total)):
            acc[k] = acc[k] + np.einsum("ij,ij->i", v, v)
    return {layer: {k: float(np.sqrt(v).mean()) for k, v in acc.items()} for layer, acc in sq.items()}, worst


def _layer_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isdigit() else (1, label)


def decomposition_summary(steps: list[int], pairs: list[dict]) -> dict:
    """`decomposition.json`: per pair and averaged over pairs, each layer's mean term norms and
    their shares of the three terms' sum."""
    layers = sorted(pairs[0]["layers"], key=_layer_order) if pairs else []
    mean = {layer: {k: float(np.mean([p["layers"][layer][k] for p in pairs])) for k in (*TERMS, "total")}
            for layer in layers}
    for v in mean.values():
        parts = sum(v[k] for k in TERMS)
        v["share"] = {k: (v[k] / parts if parts > 0 else None) for k in TERMS}
    return {"steps": [int(s) for s in steps], "layers": layers, "terms": list(TERMS), "mean": mean,
            "pairs": pairs, "max_identity_error": max((p["identity_error"] for p in pairs), default=0.0)}


def activation_linearity(hidden: np.ndarray, steps, *, min_change: float = 0.0, thresholds=(0.5, 0.7, 0.9),
                         bins: int = 50, examples: int = 4) -> dict:
    """R² over steps of every activation: `hidden` [T, layers, N, H] (one row per step).
    Per layer: R² statistics of the activations whose |last − first| > min_change, a histogram,
    and the trajectories of the few that moved most (for plots)."""
    hidden = np.asarray(hidden, dtype=np.float64)
    t, n_layers = hidden.shape[:2]
    out = {"steps": [int(s) for s in steps], "min_change": min_change, "layers": []}
    for layer in range(n_layers):
        values = hidden[:, layer].reshape(t, -1).T  # [N*H, T]
        moved = np.abs(values[:, -1] - values[:, 0])
        rows = np.flatnonzero(moved > min_change)
        r2, slope, icpt = rows_r2(values[rows], steps)
        stats = r2_stats(r2, thresholds)
        stats.pop("r2_values")
        finite = np.isfinite(r2)
        stats["histogram"] = np.histogram(r2[finite], bins=bins, range=(0.0, 1.0))[0].tolist()
        top = np.flatnonzero(finite)[np.argsort(-moved[rows][finite])][:examples]
        width = hidden.shape[-1]
        stats["examples"] = [{"token": int(rows[k]) // width, "unit": int(rows[k]) % width,
                              "values": values[rows[k]].tolist(), "r2": float(r2[k]), "slope": float(slope[k]),
                              "intercept": float(icpt[k])} for k in top]
        name = "embedding" if layer == 0 else f"layer {layer - 1}" + (" (+final norm)" if layer == n_layers - 1 else "")
        out["layers"].append({"layer": layer, "name": name,
                              "n_activations": int(values.shape[0]), **stats})
    return out


def analyse_models(models: list[tuple[int, str]], texts: list[str], *, min_change: float = 0.0,
                   thresholds=(0.5, 0.7, 0.9)) -> tuple[dict, dict]:
    """(decomposition.json, activation_r2.json) of checkpoints [(step, HF dir)] on probe texts.
    Each model is loaded once in float64; two consecutive records are kept at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(models) < 2:
        raise ConfigError(f"mechanism: needs at least two checkpoints, got steps {[s for s, _ in models]}")
    batch = probe_batch(AutoTokenizer.from_pretrained(models[0][1]), texts)
    pairs, hidden, prev = [], [], None
    for step, path in models:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
        rec, states, _ = forward_record(model, batch)
        hidden.append(np.stack(states))
        if prev is not None:
            layers, err = pair_decomposition(prev[1], rec)
            pairs.append({"from": prev[0], "to": int(step), "layers": layers, "identity_error": err})
        prev = (int(step), rec)
        del model
    steps = [s for s, _ in models]
    return (decomposition_summary(steps, pairs),
            activation_linearity(np.stack(hidden), steps, min_change=min_change, thresholds=thresholds))
