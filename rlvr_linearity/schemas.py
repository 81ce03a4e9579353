"""Typed configuration: one dataclass per config group, registered in Hydra's ConfigStore.

Each hyperparameter has one home, its group's YAML file under `conf/` (commented, readable like
the papers' tables); the dataclasses here give every key its type and its rules, so a typo
(`extrapolate.histroy=5`) or a wrong type fails at composition. `validate(cfg)` runs once when a
command starts: it rejects keys no schema declares (also those added with `+key=...`) and
impossible values, as one `ConfigError` line. Groups with alternatives (`train`, `engine`,
`extrapolate`, `logger`) have one schema per alternative, named in the alternative's YAML.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from rlvr_linearity.errors import ConfigError

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# the math graders a config may name (their implementations: evaluate/grading.py, evaluate/paper_graders.py)
GRADERS = ("math_verify", "lin", "relex")
# Attention implementations verl's FSDP actor can load (transformers' names).
ATTENTION = ("sdpa", "flash_attention_2", "eager")


def _fail(key: str, why: str) -> None:
    raise ConfigError(f"{key}: {why}")


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        _fail(key, why)


def _one_of(value, key: str, choices) -> None:
    _require(value in choices, key, f"{value!r} is not one of {', '.join(map(str, choices))}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_windows(windows, key: str) -> None:
    """Prefix windows: positive integer steps or "all"."""
    for w in windows or []:
        _require(w == "all" or (_is_int(w) and w >= 1), key, f"{w!r} is not a step >= 1 or 'all'")


# ------------------------------------------------------------------------------ shared
@dataclass
class SamplingConfig:
    n: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int = MISSING
    max_tokens: int = MISSING
    seed: int = MISSING

    def check(self, key: str = "sampling") -> None:
        _require(self.n >= 1, f"{key}.n", f"{self.n} samples: need at least 1")
        _require(self.temperature >= 0, f"{key}.temperature", f"{self.temperature} is negative")
        _require(0 < self.top_p <= 1, f"{key}.top_p", f"{self.top_p} is not in (0, 1]")
        _require(self.top_k == -1 or self.top_k >= 1, f"{key}.top_k", f"{self.top_k}: use -1 (off) or >= 1")
        _require(self.max_tokens >= 1, f"{key}.max_tokens", f"{self.max_tokens}: need at least 1")


@dataclass
class BenchmarkSamplingConfig:
    """One benchmark's own sampling (`evaluate.benchmark_sampling.<name>`); null keeps `sampling.*`."""

    n: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    max_tokens: Optional[int] = None


@dataclass
class PathsConfig:
    cache_dir: str = MISSING


@dataclass
class TrajectoryConfig:
    path: Optional[str] = MISSING
    base: Optional[str] = MISSING
    hub_repo: Optional[str] = MISSING
    hub_revision_prefix: str = MISSING
    steps: Optional[list[int]] = MISSING
    max_step: Optional[int] = MISSING
    check_finite: bool = MISSING
    trust_remote_code: bool = MISSING
    cache_dir: Optional[str] = MISSING

    def check(self, key: str = "trajectory") -> None:
        for s in self.steps or []:
            _require(s >= 0, f"{key}.steps", f"{s} is negative")
        _require(self.max_step is None or self.max_step >= 0, f"{key}.max_step", f"{self.max_step} is negative")


# ------------------------------------------------------------------------------ linearity
@dataclass
class ProbesConfig:
    file: Optional[str] = MISSING
    generate: bool = MISSING
    benchmark: str = MISSING
    n_problems: int = MISSING
    n_samples: int = MISSING
    batch_size: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int = MISSING
    instruction: Optional[str] = MISSING
    chunk_positions: int = MISSING
    min_change: float = MISSING
    max_tokens_sampled: Optional[int] = MISSING

    def check(self, key: str) -> None:
        for name in ("n_problems", "n_samples", "batch_size", "chunk_positions"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", f"{getattr(self, name)}: need at least 1")
        _require(self.temperature >= 0, f"{key}.temperature", f"{self.temperature} is negative")
        _require(0 < self.top_p <= 1, f"{key}.top_p", f"{self.top_p} is not in (0, 1]")
        _require(self.top_k == -1 or self.top_k >= 1, f"{key}.top_k", f"{self.top_k}: use -1 (off) or >= 1")
        _require(self.min_change >= 0, f"{key}.min_change", f"{self.min_change} is negative")


@dataclass
class LinearityConfig:
    weights: bool = MISSING
    lowrank: bool = MISSING
    logprobs: bool = MISSING
    save_per_weight: bool = MISSING
    steps: Optional[list[int]] = MISSING
    windows: list[Any] = MISSING
    max_step: Optional[int] = MISSING
    thresholds: list[float] = MISSING
    tensors: str = MISSING
    device: str = MISSING
    engine: str = MISSING
    chunk_elements: int = MISSING
    sample_fraction: Optional[float] = MISSING
    min_samples: int = MISSING
    min_abs_change: float = MISSING
    min_unique: int = MISSING
    unique_filter_dtype: str = MISSING
    sample_seed: int = MISSING
    ranks: list[int] = MISSING
    coefficient_history: Optional[int] = MISSING
    reconstruct_steps: list[int] = MISSING
    reconstruct_rank: int = MISSING
    probes: ProbesConfig = field(default_factory=ProbesConfig)

    def check(self, key: str = "linearity") -> None:
        for s in self.steps or []:
            _require(s >= 0, f"{key}.steps", f"{s} is negative")
        _require(self.steps is None or len({0, *self.steps}) >= 2, f"{key}.steps",
                 f"{list(self.steps or [])}: need a step besides the base (0) to fit a line; null = every saved step")
        _one_of(self.tensors, f"{key}.tensors", ("all", "weights_only"))
        _one_of(self.unique_filter_dtype, f"{key}.unique_filter_dtype", ("stored", "bfloat16"))
        check_windows(self.windows, f"{key}.windows")
        _require(bool(self.windows), f"{key}.windows", "empty: give at least one window")
        _require(self.max_step is None or self.max_step >= 1, f"{key}.max_step", f"{self.max_step}: need a step >= 1")
        for t in self.thresholds:
            _require(0 <= t <= 1, f"{key}.thresholds", f"{t} is not an R² threshold in [0, 1]")
        _require(bool(DEVICE.match(self.device)) and self.device != "auto", f"{key}.device",
                 f"{self.device!r}: use cpu or cuda[:N]")
        _one_of(self.engine, f"{key}.engine", ("auto", "kernel", "torch"))
        _require(self.chunk_elements >= 1, f"{key}.chunk_elements", f"{self.chunk_elements}: need at least 1")
        _require(self.sample_fraction is None or 0 < self.sample_fraction <= 1, f"{key}.sample_fraction",
                 f"{self.sample_fraction} is not a fraction in (0, 1]")
        _require(self.min_samples >= 1, f"{key}.min_samples", f"{self.min_samples}: need at least 1")
        _require(self.min_abs_change >= 0, f"{key}.min_abs_change", f"{self.min_abs_change} is negative")
        _require(self.min_unique >= 0, f"{key}.min_unique", f"{self.min_unique} is negative")
        for r in self.ranks:
            _require(r >= 1, f"{key}.ranks", f"rank {r}: ranks start at 1")
        _require(self.reconstruct_rank >= 1, f"{key}.reconstruct_rank", f"rank {self.reconstruct_rank}: ranks start at 1")
        _require(self.coefficient_history is None or self.coefficient_history >= 1, f"{key}.coefficient_history",
                 f"{self.coefficient_history}: need a step >= 1")
        self.probes.check(f"{key}.probes")


# ------------------------------------------------------------------------------ extrapolate
FITS = ("linear", "polynomial")
RELEX_FITS = FITS + ("sin_fft",)
DTYPES = (None, "float32", "bfloat16", "float16")


@dataclass
class RelexConfig:
    """`extrapolate=relex` (also serves `extrapolate.method=weight`, as the contract allows)."""

    method: str = MISSING
    targets: list[int] = MISSING
    history: Optional[int] = MISSING
    window: Optional[list[int]] = MISSING
    last: Optional[int] = MISSING
    windows: Optional[list[int]] = MISSING
    rank: int = MISSING
    fit: str = MISSING
    degree: int = MISSING
    mode: str = MISSING
    axis: str = MISSING
    target_scale: float = MISSING
    fit_window: Optional[int] = MISSING
    ar_window: Optional[int] = MISSING
    dtype: Optional[str] = MISSING
    cache: bool = MISSING
    gram_steps: str = MISSING
    memory_budget: int = MISSING
    base_step: int = MISSING
    second_step: Optional[int] = MISSING
    extrapolate_norms: bool = MISSING

    def check(self, key: str = "extrapolate") -> None:
        _one_of(self.method, f"{key}.method", ("relex", "weight"))
        for t in self.targets:
            _require(t >= 1, f"{key}.targets", f"{t}: targets are steps >= 1")
        for name in ("history", "last"):
            v = getattr(self, name)
            _require(v is None or v >= 1, f"{key}.{name}", f"{v}: need a step >= 1")
        for w in self.windows or []:
            _require(w >= 1, f"{key}.windows", f"{w}: windows are steps >= 1")
        _require(self.rank >= 1, f"{key}.rank", f"rank {self.rank}: ranks start at 1")
        _one_of(self.fit, f"{key}.fit", RELEX_FITS)
        _require(self.degree >= 0, f"{key}.degree", f"{self.degree} is negative")
        _one_of(self.mode, f"{key}.mode", ("extrapolate", "reconstruct", "fit_reconstruct"))
        _one_of(self.axis, f"{key}.axis", ("step", "position"))
        _require(self.target_scale > 0, f"{key}.target_scale", f"{self.target_scale}: must be > 0")
        for name in ("fit_window", "ar_window"):
            v = getattr(self, name)
            _require(v is None or v >= 1, f"{key}.{name}", f"{v}: need at least 1, or null")
        _one_of(self.dtype, f"{key}.dtype", DTYPES)
        _one_of(self.gram_steps, f"{key}.gram_steps", ("window", "all"))
        _require(self.memory_budget >= 0, f"{key}.memory_budget", f"{self.memory_budget} is negative")


@dataclass
class WeightConfig:
    """`extrapolate=weight`: LIN's two-point weight extrapolation."""

    method: str = MISSING
    targets: list[int] = MISSING
    base_step: int = MISSING
    second_step: int = MISSING
    extrapolate_norms: bool = MISSING
    dtype: Optional[str] = MISSING

    def check(self, key: str = "extrapolate") -> None:
        _one_of(self.method, f"{key}.method", ("weight",))
        _require(self.base_step >= 0, f"{key}.base_step", f"{self.base_step} is negative")
        _require(self.second_step != self.base_step, f"{key}.second_step", "equals base_step: alpha is undefined")
        _one_of(self.dtype, f"{key}.dtype", DTYPES)


# ------------------------------------------------------------------------------ evaluate
@dataclass
class EvaluateConfig:
    model: Optional[str] = MISSING
    step: Optional[int] = MISSING
    responses: Optional[str] = MISSING
    data_files: dict[str, Optional[str]] = MISSING
    split: Optional[str] = MISSING
    max_problems: Optional[int] = MISSING
    prompt: Optional[str] = MISSING
    batch_size: int = MISSING
    resume: bool = MISSING
    models_dir: Optional[str] = MISSING
    date_from: Optional[str] = MISSING
    date_to: Optional[str] = MISSING
    grader: Optional[str] = MISSING
    grading_timeout: float = MISSING
    grading_workers: int = MISSING
    benchmark_sampling: dict[str, BenchmarkSamplingConfig] = MISSING

    def check(self, key: str = "evaluate") -> None:
        _require(self.max_problems is None or self.max_problems >= 1, f"{key}.max_problems",
                 f"{self.max_problems}: need at least 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", f"{self.batch_size}: need at least 1")
        _one_of(self.grader, f"{key}.grader", (None, *GRADERS))
        _require(self.grading_timeout > 0, f"{key}.grading_timeout", f"{self.grading_timeout}: need > 0 s")
        _require(self.grading_workers >= 0, f"{key}.grading_workers", f"{self.grading_workers} is negative")


@dataclass
class HFEngineConfig:
    name: str = MISSING
    device: str = MISSING
    dtype: str = MISSING
    batch_size: int = MISSING
    trust_remote_code: bool = MISSING
    data_parallel_size: int = MISSING

    def check(self, key: str = "engine") -> None:
        _require(bool(DEVICE.match(self.device)), f"{key}.device", f"{self.device!r}: use auto, cpu or cuda[:N]")
        _require(self.batch_size >= 1, f"{key}.batch_size", f"{self.batch_size}: need at least 1")
        _require(self.data_parallel_size >= 1, f"{key}.data_parallel_size", f"{self.data_parallel_size}: need at least 1")


@dataclass
class VLLMEngineConfig:
    name: str = MISSING
    dtype: str = MISSING
    gpu_memory_utilization: float = MISSING
    tensor_parallel_size: int = MISSING
    data_parallel_size: int = MISSING
    max_model_len: Optional[int] = MISSING
    trust_remote_code: bool = MISSING

    def check(self, key: str = "engine") -> None:
        _require(0 < self.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization",
                 f"{self.gpu_memory_utilization} is not in (0, 1]")
        for name in ("tensor_parallel_size", "data_parallel_size"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", f"{getattr(self, name)}: need at least 1")


@dataclass
class LogitsEngineConfig:
    name: str = MISSING
    models: Optional[list[str]] = MISSING
    alpha: Optional[float] = MISSING
    base_step: Optional[int] = MISSING
    second_step: Optional[int] = MISSING
    target_step: Optional[int] = MISSING
    device: str = MISSING
    dtype: str = MISSING
    batch_size: int = MISSING
    compact_at: Optional[float] = MISSING
    data_parallel_size: int = MISSING

    def check(self, key: str = "engine") -> None:
        _require(bool(DEVICE.match(self.device)), f"{key}.device", f"{self.device!r}: use auto, cpu or cuda[:N]")
        _require(self.batch_size >= 1, f"{key}.batch_size", f"{self.batch_size}: need at least 1")
        _require(self.data_parallel_size == 1, f"{key}.data_parallel_size",
                 f"{self.data_parallel_size}: logits extrapolation runs in one process (1)")
        _require(self.compact_at is None or 0 <= self.compact_at <= 1, f"{key}.compact_at",
                 f"{self.compact_at} is not a fraction in [0, 1]")


# ------------------------------------------------------------------------------ train
@dataclass
class TinyModelConfig:
    seed: int = MISSING
    vocab_size: int = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    intermediate_size: int = MISSING
    max_positions: int = MISSING
    sft_lr: float = MISSING
    sft_batch_size: int = MISSING
    sft_max_steps: int = MISSING
    sft_eval_every: int = MISSING
    sft_target_accuracy: float = MISSING
    sft_dev_size: int = MISSING
    sft_max_new_tokens: int = MISSING


def _check_common_train(cfg, key: str) -> None:
    for name in ("steps", "save_every", "group_size", "prompts_per_step", "max_completion_length"):
        _require(getattr(cfg, name) >= 1, f"{key}.{name}", f"{getattr(cfg, name)}: need at least 1")
    _require(cfg.lr > 0, f"{key}.lr", f"{cfg.lr}: need > 0")
    _require(cfg.temperature > 0, f"{key}.temperature", f"{cfg.temperature}: rollouts need sampling (> 0)")
    _require(cfg.beta >= 0, f"{key}.beta", f"{cfg.beta} is negative")


@dataclass
class TrlTrainConfig:
    """`train=trl`: GRPO with TRL on CPU (tiny models)."""

    backend: str = "trl"  # the schema's discriminator, not a setting
    launch: bool = MISSING
    model: str = MISSING
    steps: int = MISSING
    save_every: int = MISSING
    lr: float = MISSING
    group_size: int = MISSING
    prompts_per_step: int = MISSING
    temperature: float = MISSING
    max_completion_length: int = MISSING
    beta: float = MISSING
    loss_type: str = MISSING
    scale_rewards: str = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    reward_grader: str = MISSING
    reward_timeout: float = MISSING
    reward_workers: int = MISSING
    seed: int = MISSING
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def check(self, key: str = "train") -> None:
        _one_of(self.backend, f"{key}.backend", ("trl",))
        _check_common_train(self, key)
        _require(self.group_size >= 2, f"{key}.group_size", f"{self.group_size}: GRPO needs groups of at least 2")
        _require(self.reward_workers >= 0, f"{key}.reward_workers", f"{self.reward_workers} is negative")
        _one_of(self.reward_grader, f"{key}.reward_grader", GRADERS)


@dataclass
class VerlRolloutConfig:
    engine: str = MISSING
    tensor_parallel: int = MISSING
    gpu_memory_utilization: float = MISSING
    max_num_batched_tokens: int = MISSING
    log_prob_micro_batch_size_per_gpu: int = MISSING
    val_n: int = MISSING
    val_temperature: float = MISSING
    val_top_p: float = MISSING
    val_do_sample: bool = MISSING


@dataclass
class VerlTrainConfig:
    """`train=verl`: GRPO with verl on GPU clusters (see conf/train/verl.yaml)."""

    backend: str = "verl"  # the schema's discriminator, not a setting
    launch: bool = MISSING
    model: str = MISSING
    steps: int = MISSING
    save_every: int = MISSING
    lr: float = MISSING
    lr_scheduler: str = MISSING
    lr_warmup_steps: int = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    grad_clip: float = MISSING
    group_size: int = MISSING
    prompts_per_step: int = MISSING
    mini_batch_size: int = MISSING
    ppo_epochs: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int = MISSING
    max_prompt_length: int = MISSING
    max_completion_length: int = MISSING
    filter_overlong_prompts: bool = MISSING
    beta: float = MISSING
    clip_ratio_low: float = MISSING
    clip_ratio_high: float = MISSING
    clip_ratio_c: float = MISSING
    loss_agg_mode: str = MISSING
    entropy_coeff: float = MISSING
    norm_adv_by_std: bool = MISSING
    reward_grader: str = MISSING
    dataset: str = MISSING
    train_file: Optional[str] = MISSING
    val_dataset: Optional[str] = MISSING
    val_file: Optional[str] = MISSING
    val_size: int = MISSING
    prompt_suffix: str = MISSING
    max_train_rows: Optional[int] = MISSING
    nodes: Optional[int] = MISSING
    gpus_per_node: Optional[int] = MISSING
    ray_port: int = MISSING
    strategy: str = MISSING
    attn_implementation: str = MISSING
    param_offload: bool = MISSING
    optimizer_offload: bool = MISSING
    gradient_checkpointing: bool = MISSING
    use_remove_padding: bool = MISSING
    use_dynamic_bsz: bool = MISSING
    max_token_len_per_gpu: int = MISSING
    micro_batch_size_per_gpu: int = MISSING
    rollout: VerlRolloutConfig = field(default_factory=VerlRolloutConfig)
    test_freq: int = MISSING
    val_before_train: bool = MISSING
    resume_mode: str = MISSING
    resume_from_path: Optional[str] = MISSING
    save_contents: list[str] = MISSING
    max_actor_ckpt_to_keep: Optional[int] = MISSING
    project: str = MISSING
    experiment_name: Optional[str] = MISSING
    overrides: list[str] = MISSING

    def check(self, key: str = "train") -> None:
        _one_of(self.backend, f"{key}.backend", ("verl",))
        _check_common_train(self, key)
        _one_of(self.lr_scheduler, f"{key}.lr_scheduler", ("constant", "cosine"))
        _one_of(self.reward_grader, f"{key}.reward_grader", (*GRADERS, "verl_math"))
        _require(self.rollout.engine != "sglang", f"{key}.rollout.engine",
                 "sglang is not installable with verl 0.9.1 (verl[sglang] pins transformers 5.9.0, sglang "
                 "0.5.12 pins 5.6.0); use vllm")
        _one_of(self.rollout.engine, f"{key}.rollout.engine", ("vllm",))
        _one_of(self.attn_implementation, f"{key}.attn_implementation", ATTENTION)
        _one_of(self.resume_mode, f"{key}.resume_mode", ("auto", "disable", "resume_path"))
        _require(self.prompts_per_step % self.mini_batch_size == 0, f"{key}.mini_batch_size",
                 f"{self.mini_batch_size} does not divide prompts_per_step {self.prompts_per_step}")


# ------------------------------------------------------------------------------ the rest
@dataclass
class TaskConfig:
    name: str = MISSING
    seed: int = MISSING
    n_train: int = MISSING
    n_test: int = MISSING
    min_terms: int = MISSING
    max_terms: int = MISSING
    min_operand: int = MISSING
    max_operand: int = MISSING
    max_products: Optional[int] = MISSING
    operators: list[str] = MISSING

    def check(self, key: str = "task") -> None:
        _require(1 <= self.min_terms <= self.max_terms, f"{key}.min_terms", "need 1 <= min_terms <= max_terms")
        _require(self.min_operand <= self.max_operand, f"{key}.min_operand", "need min_operand <= max_operand")
        for op in self.operators:
            _one_of(op, f"{key}.operators", ("+", "-", "*"))


@dataclass
class NoLoggerConfig:
    backend: str = "none"


@dataclass
class WandbLoggerConfig:
    backend: str = "wandb"
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    name: Optional[str] = MISSING
    tags: list[str] = MISSING
    mode: Optional[str] = MISSING
    dir: Optional[str] = MISSING

    def check(self, key: str = "logger") -> None:
        _one_of(self.mode, f"{key}.mode", (None, "online", "offline", "disabled"))


@dataclass
class PairTargetsConfig:
    """One extrapolation pair with its own targets (`pipeline.weight.per_pair` / `pipeline.logits.per_pair`)."""

    base: int = MISSING
    second: int = MISSING
    targets: list[int] = MISSING


@dataclass
class PipelineWeightConfig:
    pairs: list[list[int]] = MISSING
    targets: list[int] = MISSING
    per_pair: list[PairTargetsConfig] = MISSING

    def check(self, key: str) -> None:
        for pair in self.pairs:
            _require(len(pair) == 2 and pair[0] != pair[1], f"{key}.pairs",
                     f"{pair}: need [base_step, second_step] with two different steps")
        seen = {tuple(pair) for pair in self.pairs}
        for e in self.per_pair:
            _require(e.base != e.second, f"{key}.per_pair", f"{{base: {e.base}, second: {e.second}}}: need two different steps")
            _require((e.base, e.second) not in seen, f"{key}.per_pair",
                     f"pair [{e.base}, {e.second}] is given twice (pairs and per_pair, or per_pair twice)")
            seen.add((e.base, e.second))
            _require(bool(e.targets), f"{key}.per_pair", f"pair [{e.base}, {e.second}] has no targets")
            for t in e.targets:
                _require(t >= 0, f"{key}.per_pair", f"target {t} of [{e.base}, {e.second}] is negative")


@dataclass
class PipelineReconstructConfig:
    """RELEX Finding 1: rank-r reconstructions of trained steps (pipeline stage `reconstruct`)."""

    steps: list[int] = MISSING
    ranks: list[int] = MISSING
    history: Optional[int] = MISSING

    def check(self, key: str) -> None:
        for s in self.steps:
            _require(s >= 1, f"{key}.steps", f"step {s}: reconstructions are of trained steps (>= 1)")
        _require(bool(self.ranks) or not self.steps, f"{key}.ranks", "empty: give at least one rank")
        for r in self.ranks:
            _require(r >= 1, f"{key}.ranks", f"rank {r}: ranks start at 1")
        _require(self.history is None or self.history >= 1, f"{key}.history", f"{self.history}: need a step >= 1")


@dataclass
class PipelineConfig:
    stages: list[str] = MISSING
    stage_dir: str = MISSING
    dry_run: bool = MISSING
    evaluate_steps: Any = MISSING
    weight: PipelineWeightConfig = field(default_factory=PipelineWeightConfig)
    logits: PipelineWeightConfig = field(default_factory=PipelineWeightConfig)
    reconstruct: PipelineReconstructConfig = field(default_factory=PipelineReconstructConfig)

    def check(self, key: str = "pipeline") -> None:
        for s in self.stages:
            _one_of(s, f"{key}.stages", ("train", "linearity", "relex", "weight", "logits", "evaluate", "report",
                                         "regrounding", "token_snr", "mechanism", "reconstruct"))
        steps = self.evaluate_steps
        _require(steps == "all" or (isinstance(steps, list) and all(_is_int(s) and s >= 0 for s in steps)),
                 f"{key}.evaluate_steps", f"{steps!r}: use all or a list of steps")
        self.weight.check(f"{key}.weight")
        self.logits.check(f"{key}.logits")
        self.reconstruct.check(f"{key}.reconstruct")


@dataclass
class MechanismSftConfig:
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING


@dataclass
class MechanismConfig:
    """LIN's mechanism analyses (docs/mechanism.md): the token-SNR SFT runs (Fig. 3), the output
    change decomposition (Fig. 4) and activation linearity."""

    snr_db: list[float] = MISSING
    noise: str = MISSING
    sft: MechanismSftConfig = field(default_factory=MechanismSftConfig)
    probes: int = MISSING
    activation_min_change: float = MISSING

    def check(self, key: str = "mechanism") -> None:
        _one_of(self.noise, f"{key}.noise", ("sequence", "token"))
        _require(self.sft.steps >= 2, f"{key}.sft.steps", f"{self.sft.steps}: need at least 2 steps for an R²")
        _require(self.sft.lr > 0, f"{key}.sft.lr", f"{self.sft.lr}: need a positive learning rate")
        _require(self.sft.batch_size >= 1, f"{key}.sft.batch_size", f"{self.sft.batch_size}: need at least 1")
        _require(self.probes >= 1, f"{key}.probes", f"{self.probes}: need at least one probe problem")
        _require(self.activation_min_change >= 0, f"{key}.activation_min_change",
                 f"{self.activation_min_change} is negative")


@dataclass
class FiguresConfig:
    inputs: list[str] = MISSING
    pdf: bool = MISSING
    reference: bool = MISSING
    robustness: list[Any] = MISSING
    table2_budgets: Optional[list[int]] = MISSING
    fig6_thresholds: Optional[list[float]] = MISSING
    fig6_benchmark: Optional[str] = MISSING
    coefficient_tensor: Optional[str] = MISSING


@dataclass
class ForecastConfig:
    enabled: bool = MISSING
    start_step: int = MISSING
    every: int = MISSING
    target: Optional[int] = MISSING
    final_step: Optional[int] = MISSING
    rank: int = MISSING
    fit: str = MISSING
    degree: int = MISSING
    dtype: Optional[str] = MISSING
    evaluate: bool = MISSING
    evaluate_observed: bool = MISSING
    benchmarks: Optional[list[str]] = MISSING
    keep: Optional[int] = MISSING
    r2: bool = MISSING
    r2_state: str = MISSING
    memory_budget: int = MISSING
    poll_s: float = MISSING
    timeout_s: float = MISSING

    def check(self, key: str = "forecast") -> None:
        _require(self.start_step >= 1, f"{key}.start_step", f"{self.start_step}: need a step >= 1")
        _require(self.every >= 1, f"{key}.every", f"{self.every}: need at least 1")
        _require(self.rank >= 1, f"{key}.rank", f"rank {self.rank}: ranks start at 1")
        _one_of(self.fit, f"{key}.fit", FITS)
        _one_of(self.dtype, f"{key}.dtype", DTYPES)
        _one_of(self.r2_state, f"{key}.r2_state", ("memory", "disk"))
        _require(self.keep is None or self.keep >= 1, f"{key}.keep", f"{self.keep}: keep at least 1, or null for all")


@dataclass
class PartitionConfig:
    """Tensor-partitioned linearity / extrapolation jobs and their merge (docs/scaling.md)."""

    count: int = MISSING
    index: int = MISSING
    merge: bool = MISSING

    def check(self, key: str = "partition") -> None:
        _require(self.count >= 1, f"{key}.count", f"{self.count}: need at least 1 partition")
        _require(0 <= self.index < self.count, f"{key}.index", f"{self.index}: need 0 <= index < count ({self.count})")


@dataclass
class RegroundingConfig:
    """LIN's periodic re-grounding (`rlvr pipeline experiment=regrounding`)."""

    M: int = MISSING
    N: int = MISSING
    iterations: int = MISSING
    optimizer: str = MISSING
    data: str = MISSING
    baseline: bool = MISSING
    eval_every: int = MISSING
    extrapolate_norms: bool = MISSING
    dtype: Optional[str] = MISSING
    thresholds: Optional[list[float]] = MISSING
    compare: list[Any] = MISSING

    def check(self, key: str = "regrounding") -> None:
        for name in ("M", "iterations", "eval_every"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", f"{getattr(self, name)}: need at least 1")
        _require(self.N >= 0, f"{key}.N", f"{self.N} is negative")
        _one_of(self.optimizer, f"{key}.optimizer", ("keep", "reset"))
        _one_of(self.data, f"{key}.data", ("continue", "replay"))
        _one_of(self.dtype, f"{key}.dtype", DTYPES)


@dataclass
class RlvrConfig:
    """The root every command composes (conf/rlvr.yaml); `train`, `engine`, `extrapolate` and
    `logger` take the schema of the chosen alternative."""

    command: str = MISSING
    output_dir: Optional[str] = MISSING
    experiment_name: Optional[str] = MISSING
    seed: int = MISSING
    debug: bool = MISSING
    verbose: bool = MISSING
    watch: bool = False  # `rlvr linearity watch=true`: follow a run's checkpoints (docs/forecast.md)
    benchmarks: list[str] = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    linearity: LinearityConfig = field(default_factory=LinearityConfig)
    extrapolate: Any = MISSING
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    engine: Any = MISSING
    train: Any = MISSING
    task: TaskConfig = field(default_factory=TaskConfig)
    logger: Any = MISSING
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    regrounding: RegroundingConfig = field(default_factory=RegroundingConfig)
    mechanism: MechanismConfig = field(default_factory=MechanismConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)


# group -> {schema name in the group: dataclass}; the alternatives' YAML files name their schema
GROUP_SCHEMAS = {
    "extrapolate": {"relex_schema": RelexConfig, "weight_schema": WeightConfig},
    "engine": {"hf_schema": HFEngineConfig, "vllm_schema": VLLMEngineConfig, "logits_schema": LogitsEngineConfig},
    "train": {"trl_schema": TrlTrainConfig, "verl_schema": VerlTrainConfig},
    "logger": {"none_schema": NoLoggerConfig, "wandb_schema": WandbLoggerConfig},
}


def register_configs() -> None:
    """The root schema (`rlvr_schema`) and the alternatives' schemas, in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    # `${rlvr_or:A,B}`: A unless it is null/empty, else B (hydra.run.dir follows output_dir).
    if not OmegaConf.has_resolver("rlvr_or"):
        OmegaConf.register_new_resolver("rlvr_or", lambda value, default: default if value in (None, "") else value)
    cs = ConfigStore.instance()
    cs.store(name="rlvr_schema", node=RlvrConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=group, name=name, node=node)


# ------------------------------------------------------------------------------ validation
def _unknown_keys(node: DictConfig, key: str) -> None:
    """Keys that no schema declares: Hydra's `+key=value` adds them even to typed nodes."""
    kind = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(kind):
        known = {f.name for f in dataclasses.fields(kind)}
        for k in node.keys():
            if k not in known:
                where = f"{key}.{k}" if key else str(k)
                _fail(where, f"unknown key (known in {key or 'the root'}: {', '.join(sorted(known))})")
    for k in node.keys():
        child = node._get_node(k)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _unknown_keys(child, f"{key}.{k}" if key else str(k))


def validate(cfg: DictConfig) -> None:
    """Reject unknown keys and impossible values of a composed config (one ConfigError line).

    Sections with a value still missing (`???`) are checked once that value is given: a command
    that does not need them (`train.model` of verl outside `rlvr train`) must not fail on them."""
    _unknown_keys(cfg, "")
    for name in cfg.keys():
        node = cfg._get_node(name)
        if not isinstance(node, DictConfig) or node._is_none() or name == "hydra":
            continue
        kind = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(kind) or not hasattr(kind, "check") or OmegaConf.missing_keys(node):
            continue
        try:
            section = OmegaConf.to_object(node)
        except Exception as err:  # a value of the wrong type or an interpolation that fails
            raise ConfigError(f"{name}: {str(err).splitlines()[0]}") from None
        section.check(name)
