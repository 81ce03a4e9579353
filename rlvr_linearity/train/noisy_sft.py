"""SFT with reward-style noise in the token-level signal (LIN Fig. 3, docs/mechanism.md).

Plain SFT gives every completion token the same signal: weight 1 on its negative log-likelihood.
RL's policy gradient gives each token the same log-likelihood gradient scaled by a noisy,
sign-changing advantage. Here each token's weight is 1 + σ·ε with ε ~ N(0, 1) drawn per
sequence (one draw per completion, as a sequence reward is) or per token; the signal power is 1
and the noise power σ², so the signal-to-noise ratio is SNR = −20·log₁₀ σ dB. SNR = ∞ (σ = 0)
is plain SFT. Training is TRL's `SFTTrainer` with only the loss weighted, saving every step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlvr_linearity.errors import ConfigError

GRANULARITIES = ("sequence", "token")


def noise_sigma(snr_db: float | None) -> float:
    """σ of the noise for a signal of power 1: σ² = 10^(−SNR/10); None (no noise) -> 0."""
    return 0.0 if snr_db is None else 10.0 ** (-float(snr_db) / 20.0)


def token_weights(mask: torch.Tensor, sigma: float, granularity: str, generator: torch.Generator) -> torch.Tensor:
    """Per-token loss weights [B, L]: 1 + σ·ε on `mask` (completion tokens), 0 elsewhere."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"mechanism.noise: {granularity!r} is not one of {', '.join(GRANULARITIES)}")
    shape = (mask.shape[0], 1) if granularity == "sequence" else tuple(mask.shape)
    eps = torch.randn(shape, generator=generator, dtype=torch.float64)
    return ((1.0 + sigma * eps).expand(mask.shape) * mask).to(torch.float32)


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·NLL over the predicted tokens / their count. `labels` [B, L] (−100: ignored) are
    shifted as the model's own loss shifts them; `weights` [B, L−1] align with the shifted labels."""
    target = labels[:, 1:]
    mask = target != -100
    logp = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (weights * nll * mask).sum() / mask.sum().clamp(min=1)


def _trainer_class():
    from trl import SFTTrainer

    class NoisySFTTrainer(SFTTrainer):
        """SFTTrainer whose loss weights each completion token by `token_weights`."""

        def __init__(self, *args, sigma: float, granularity: str, noise_seed: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.sigma, self.granularity = sigma, granularity
            self.noise = torch.Generator().manual_seed(noise_seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")},
                            use_cache=False)
            weights = token_weights(labels[:, 1:] != -100, self.sigma, self.granularity, self.noise)
            loss = weighted_nll(outputs.logits, labels, weights.to(outputs.logits.device))
            return (loss, outputs) if return_outputs else loss

    return NoisySFTTrainer


def train_noisy_sft(base: str, rows: list[dict], out_dir: Path, *, steps: int, lr: float, batch_size: int,
                    seed: int, snr_db: float | None, granularity: str, completion) -> Path:
    """SFT of `base` on task rows (prompt, answer) for `steps` steps, a checkpoint every step;
    returns the trajectory directory (checkpoint-N/ and trajectory.json, as GRPO writes them).
    `completion(answer) -> str` is the target text."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from rlvr_linearity.console import quiet_trainer
    from rlvr_linearity.train.tiny_model import chat_prompt
    from rlvr_linearity.train.trl_grpo import saved_steps, write_trajectory_json

    if steps < 2 or batch_size < 1:
        raise ConfigError(f"mechanism.sft: steps ({steps}) must be >= 2 and batch_size ({batch_size}) >= 1")
    traj_dir = Path(out_dir) / "trajectory"
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = datasets.Dataset.from_list([{"prompt": chat_prompt(tokenizer, r["prompt"]),
                                        "completion": completion(r["answer"]) + tokenizer.eos_token} for r in rows])
    args = SFTConfig(output_dir=str(traj_dir), use_cpu=True, bf16=False, fp16=False, max_steps=steps,
                     learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, logging_steps=1,
                     save_strategy="steps", save_steps=1, save_only_model=True, report_to=[], seed=seed,
                     data_seed=seed, dataloader_num_workers=0, completion_only_loss=True, packing=False,
                     dataset_num_proc=None, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    trainer = _trainer_class()(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                               sigma=noise_sigma(snr_db), granularity=granularity, noise_seed=seed)
    trainer.create_model_card = lambda *a, **k: None
    quiet_trainer(trainer)
    trainer.train()
    config = {"method": "sft", "snr_db": None if snr_db is None or math.isinf(snr_db) else float(snr_db),
              "granularity": granularity, "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed}
    if saved_steps(traj_dir)[-1:] != [steps]:
        raise ConfigError(f"{traj_dir}: SFT stopped before saving step {steps}")
    write_trajectory_json(traj_dir, base, config)
    return traj_dir
