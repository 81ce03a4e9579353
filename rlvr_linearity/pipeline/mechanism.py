"""The pipeline stages of LIN's mechanism analyses (docs/mechanism.md):

- `token_snr` (Fig. 3): SFT of the base model without noise and at every `mechanism.snr_db`,
  each run's weight R² -> `mechanism/token_snr.json` (with each run's trajectory beside it);
- `mechanism` (Fig. 4 and activation linearity): every saved checkpoint of the trajectory on
  fixed probe inputs -> `mechanism/decomposition.json` and `mechanism/activation_r2.json`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rlvr_linearity.config import section
from rlvr_linearity.io import jsonable, write_json_atomic

R2_FILTERS = ("thresholds", "engine", "sample_fraction", "min_samples", "min_abs_change", "min_unique",
              "unique_filter_dtype", "tensors", "sample_seed")  # the keys of linearity.app.r2_filters


def token_snr_config(cfg) -> dict:
    """What the token_snr stage depends on: its keys, the base model, the task, the R² filters."""
    return {"mechanism": {k: section(cfg, f"mechanism.{k}") for k in ("snr_db", "noise", "sft")},
            "model": section(cfg, "train.model"), "tiny": section(cfg, "train.tiny"), "task": section(cfg, "task"),
            "seed": cfg.seed, "linearity": {k: section(cfg, f"linearity.{k}") for k in R2_FILTERS}}


def mechanism_config(cfg) -> dict:
    """What the mechanism stage depends on besides the trajectory."""
    return {"mechanism": {k: section(cfg, f"mechanism.{k}") for k in ("probes", "activation_min_change")},
            "task": section(cfg, "task"), "thresholds": section(cfg, "linearity.thresholds")}


def _level_label(snr_db: float | None) -> str:
    return "sft" if snr_db is None else f"snr_{snr_db:g}dB"


def token_snr(cfg, out: Path) -> dict:
    """SFT runs of the base model at each noise level and their weight R² (the linearity filters);
    writes `out/token_snr.json`; returns the median R² per level."""
    import datasets  # noqa: F401  (imported before `quiet`, so its progress bars go quiet too)

    from rlvr_linearity.console import quiet
    from rlvr_linearity.linearity.app import r2_filters
    from rlvr_linearity.linearity.weights import weight_linearity
    from rlvr_linearity.tasks.arithmetic import make_split
    from rlvr_linearity.train.noisy_sft import noise_sigma, train_noisy_sft
    from rlvr_linearity.train.tiny_model import completion_text
    from rlvr_linearity.train.trl_grpo import base_model_dir
    from rlvr_linearity.trajectory import open_trajectory

    quiet(bool(cfg.verbose))
    m, lin = cfg.mechanism, cfg.linearity
    base, rows = base_model_dir(cfg), make_split(cfg.task, "train")
    levels = []
    for snr in [None, *[float(s) for s in m.snr_db]]:
        run_dir = out / _level_label(snr)
        shutil.rmtree(run_dir, ignore_errors=True)  # a level cut short restarts
        traj_dir = train_noisy_sft(base, rows, run_dir, steps=int(m.sft.steps), lr=float(m.sft.lr),
                                   batch_size=int(m.sft.batch_size), seed=int(cfg.seed), snr_db=snr,
                                   granularity=str(m.noise), completion=completion_text)
        r2 = weight_linearity(open_trajectory(path=str(traj_dir)), examples=0, progress=False, **r2_filters(lin))
        levels.append({"label": _level_label(snr), "snr_db": snr, "sigma": noise_sigma(snr),
                       "trajectory": str(traj_dir),
                       **{k: r2.get(k) for k in ("n_weights", "n_defined", "mean", "median", "frac_above")},
                       "tensor_median_mean": _mean([t["median"] for t in r2["per_tensor"]])})
    write_json_atomic(out / "token_snr.json", jsonable({"noise": str(m.noise), "sft": section(cfg, "mechanism.sft"),
                                                        "base": base, "levels": levels}))
    return {lv["label"]: lv["median"] for lv in levels}


def _mean(values) -> float | None:
    v = [float(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


def probe_texts(cfg, tokenizer_dir: str, n: int) -> list[str]:
    """The first `n` test problems in the chat template with their gold answer as the response."""
    from transformers import AutoTokenizer

    from rlvr_linearity.linearity.logprob import prompt_text
    from rlvr_linearity.tasks.arithmetic import make_split
    from rlvr_linearity.train.tiny_model import completion_text

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = make_split(cfg.task, "test")[:n]
    return [prompt_text(tok, r["prompt"]) + completion_text(r["answer"]) + tok.eos_token for r in rows]


def mechanism_analysis(cfg, traj, out: Path) -> dict:
    """Fig. 4 decomposition and activation R² over every step of `traj`; writes both JSON files."""
    from rlvr_linearity.linearity.mechanism import analyse_models

    models = [(s, str(traj.model(s).path)) for s in traj.steps]
    texts = probe_texts(cfg, models[0][1], int(cfg.mechanism.probes))
    decomposition, activations = analyse_models(models, texts, min_change=float(cfg.mechanism.activation_min_change),
                                                thresholds=tuple(float(t) for t in cfg.linearity.thresholds))
    write_json_atomic(out / "decomposition.json", jsonable(decomposition))
    write_json_atomic(out / "activation_r2.json", jsonable(activations))
    return {"layers": {k: v["share"] for k, v in decomposition["mean"].items()},
            "identity_error": decomposition["max_identity_error"],
            "activation_median_r2": {a["name"]: a.get("median") for a in activations["layers"]}}
