"""`rlvr train trainer=verl`: this project's config -> verl overrides -> verl's own config tree.

verl's config is a Hydra tree with absolute interpolations, so it cannot be nested under ours:
we build `key=value` overrides, compose `ppo_trainer` from `verl.trainer.config`, validate it
with verl's `validate_config` (and its dataclass checks), save `DIR/verl_config.yaml`, and run
`python -m verl.trainer.main_ppo --config-path DIR --config-name verl_config` in a subprocess
(isolates Ray and GPU memory). Across Slurm nodes, `ray_cluster` starts Ray first.

Entry point for `rlvr_linearity.train.app`: `launch_verl(cfg, out_dir) -> Path` (the trajectory
directory; with `train.launch=false` it only writes and validates the config).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.io import write_json_atomic, write_lines_atomic, write_text_atomic
from rlvr_linearity.train import ray_cluster
from rlvr_linearity.train.ray_cluster import cluster_shape

log = logging.getLogger(__name__)

VERL_CONFIG_MODULE = "verl.trainer.config"
CONFIG_NAME = "verl_config"
# What the analysis needs in every checkpoint: hf_model is the exact-precision HF export.
REQUIRED_SAVE_CONTENTS = ("model", "optimizer", "extra", "hf_model")
# Imported by name (not by file path) so its process-pool workers can unpickle the grader.
REWARD_MODULE = "pkg://rlvr_linearity.train.verl_reward"
# `train.reward_grader=verl_math`: verl's own Hendrycks MATH reward, as LIN trained (docs/methods.md
# §C1): `default_compute_score` routes data_source "lighteval/MATH" to `math_reward.compute_score`.
VERL_MATH_REWARD = ("pkg://verl.utils.reward_score", "default_compute_score", "lighteval/MATH")


def reward_overrides(grader: str) -> dict:
    """verl overrides that select the training reward: one of our graders, or verl's MATH reward."""
    key = "reward.custom_reward_function"
    if grader == "verl_math":
        path, name, source = VERL_MATH_REWARD
        # reward_kwargs win over verl's call-time kwargs: every row (validation too) is graded as MATH
        return {f"{key}.path": path, f"{key}.name": name, f"+{key}.reward_kwargs.data_source": source}
    from rlvr_linearity.evaluate.grading import check_grader

    try:
        check_grader(grader)
    except ConfigError:
        raise ConfigError(f"unknown train.reward_grader {grader!r} (math_verify, lin, relex or verl_math)") from None
    return {f"{key}.path": REWARD_MODULE, f"{key}.name": "compute_score", f"+{key}.reward_kwargs.grader": grader}


def format_value(value) -> str:
    """A Python value as a Hydra override value (strings quoted when the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./\-+:@~]+", text) and text not in ("null", "true", "false"):
        return text
    # Hydra's quoted strings: backslashes are literal except before a quote or at the end.
    text = re.sub(r"\\+(?=')|\\+$", lambda m: m.group(0) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def verl_overrides(cfg, out_dir: Path, train_file: Path, val_file: Path) -> list[str]:
    """This project's `train.*` (+ seed, logger) as verl `key=value` overrides."""
    t = cfg.train
    if OmegaConf.is_missing(t, "model") or t.model in (None, "tiny"):
        raise ConfigError("trainer=verl needs train.model: a model directory or hub id (the base, step 0)")
    ov = {**_data_overrides(cfg, train_file, val_file), **_actor_overrides(cfg), **_rollout_overrides(t),
          **reward_overrides(str(t.reward_grader)), **_trainer_overrides(cfg, out_dir)}
    if cfg.forecast.enabled:  # live forecasting after each save (verl v1 trainer hook)
        ov["trainer.checkpoint_callback_class"] = "rlvr_linearity.forecast.hooks.VerlForecastCallback"
    return [f"{k}={format_value(v)}" for k, v in ov.items()] + [str(o) for o in (t.overrides or [])]


def _data_overrides(cfg, train_file: Path, val_file: Path) -> dict:
    t = cfg.train
    return {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": bool(t.norm_adv_by_std),
        "algorithm.use_kl_in_reward": False,
        "data.train_files": str(train_file),
        "data.val_files": str(val_file),
        "data.train_batch_size": int(t.prompts_per_step),
        "data.max_prompt_length": int(t.max_prompt_length),
        "data.max_response_length": int(t.max_completion_length),
        "data.filter_overlong_prompts": bool(t.filter_overlong_prompts),
        "data.truncation": "error",
        "data.seed": int(cfg.seed),
        "data.trust_remote_code": bool(cfg.trajectory.trust_remote_code),
    }


def _actor_overrides(cfg) -> dict:
    """The policy: model loading, optimiser, PPO/GRPO loss, FSDP and what each checkpoint holds."""
    t = cfg.train
    contents = list(t.save_contents or REQUIRED_SAVE_CONTENTS)
    missing = [c for c in REQUIRED_SAVE_CONTENTS if c not in contents]
    if missing:
        raise ConfigError(f"train.save_contents must include {missing}: the trajectory needs them")
    beta = float(t.beta)
    dyn = bool(t.use_dynamic_bsz)
    return {
        "actor_rollout_ref.model.path": str(t.model),
        "actor_rollout_ref.model.use_remove_padding": bool(t.use_remove_padding),
        "actor_rollout_ref.model.enable_gradient_checkpointing": bool(t.gradient_checkpointing),
        "actor_rollout_ref.model.trust_remote_code": bool(cfg.trajectory.trust_remote_code),
        # verl reads it in HFModelConfig (default flash_attention_2); the reference model shares it
        "+actor_rollout_ref.model.override_config.attn_implementation": str(t.attn_implementation),
        "actor_rollout_ref.actor.strategy": str(t.strategy),
        "actor_rollout_ref.actor.optim.lr": float(t.lr),
        "actor_rollout_ref.actor.optim.lr_scheduler_type": str(t.lr_scheduler),
        "actor_rollout_ref.actor.optim.lr_warmup_steps": int(t.lr_warmup_steps) if t.lr_warmup_steps else -1,
        "actor_rollout_ref.actor.optim.weight_decay": float(t.weight_decay),
        "actor_rollout_ref.actor.optim.betas": [float(b) for b in t.betas],
        "actor_rollout_ref.actor.grad_clip": float(t.grad_clip),
        "actor_rollout_ref.actor.ppo_mini_batch_size": int(t.mini_batch_size),
        "actor_rollout_ref.actor.ppo_epochs": int(t.ppo_epochs),
        "actor_rollout_ref.actor.use_dynamic_bsz": dyn,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": int(t.max_token_len_per_gpu),
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": None if dyn else int(t.micro_batch_size_per_gpu),
        "actor_rollout_ref.actor.clip_ratio_low": float(t.clip_ratio_low),
        "actor_rollout_ref.actor.clip_ratio_high": float(t.clip_ratio_high),
        "actor_rollout_ref.actor.clip_ratio_c": float(t.clip_ratio_c),
        "actor_rollout_ref.actor.loss_agg_mode": str(t.loss_agg_mode),
        "actor_rollout_ref.actor.entropy_coeff": float(t.entropy_coeff),
        "actor_rollout_ref.actor.use_kl_loss": beta > 0,
        "actor_rollout_ref.actor.kl_loss_coef": beta,
        "actor_rollout_ref.actor.fsdp_config.param_offload": bool(t.param_offload),
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": bool(t.optimizer_offload),
        "actor_rollout_ref.actor.checkpoint.save_contents": contents,
    }


def _rollout_overrides(t) -> dict:
    ro = t.rollout
    return {
        "actor_rollout_ref.rollout.name": str(ro.engine),
        "actor_rollout_ref.rollout.n": int(t.group_size),
        "actor_rollout_ref.rollout.temperature": float(t.temperature),
        "actor_rollout_ref.rollout.top_p": float(t.top_p),
        "actor_rollout_ref.rollout.top_k": int(t.top_k),
        "actor_rollout_ref.rollout.tensor_model_parallel_size": int(ro.tensor_parallel),
        "actor_rollout_ref.rollout.gpu_memory_utilization": float(ro.gpu_memory_utilization),
        "actor_rollout_ref.rollout.max_num_batched_tokens": int(ro.max_num_batched_tokens),
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": int(ro.log_prob_micro_batch_size_per_gpu),
        "actor_rollout_ref.rollout.val_kwargs.n": int(ro.val_n),
        "actor_rollout_ref.rollout.val_kwargs.temperature": float(ro.val_temperature),
        "actor_rollout_ref.rollout.val_kwargs.top_p": float(ro.val_top_p),
        "actor_rollout_ref.rollout.val_kwargs.do_sample": bool(ro.val_do_sample),
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": int(ro.log_prob_micro_batch_size_per_gpu),
        "actor_rollout_ref.ref.fsdp_config.param_offload": True,
    }


def _trainer_overrides(cfg, out_dir: Path) -> dict:
    """Steps, checkpoints (every save_every, into DIR/trajectory), resume, loggers, cluster shape."""
    t = cfg.train
    save_every = int(t.save_every)
    if save_every < 1:
        raise ConfigError(f"train.save_every must be >= 1 (got {save_every}): verl saves nothing otherwise")
    nodes, gpus = cluster_shape(t)
    traj = (Path(out_dir) / "trajectory").resolve()
    loggers = ["console", "file"]
    if cfg.logger.backend == "wandb":
        loggers.append("wandb")
    return {
        "trainer.total_training_steps": int(t.steps),
        "trainer.save_freq": save_every,
        "trainer.test_freq": int(t.test_freq),
        "trainer.val_before_train": bool(t.val_before_train),
        "trainer.default_local_dir": str(traj),
        "trainer.resume_mode": str(t.resume_mode),
        "trainer.resume_from_path": t.resume_from_path,
        "trainer.max_actor_ckpt_to_keep": t.max_actor_ckpt_to_keep,
        "trainer.logger": loggers,
        "trainer.project_name": str(t.project),
        "trainer.experiment_name": str(t.experiment_name or Path(out_dir).resolve().name),
        "trainer.nnodes": nodes,
        "trainer.n_gpus_per_node": gpus,
        "trainer.critic_warmup": 0,
    }


@contextmanager
def _outside_our_hydra():
    """Compose verl's tree while our own Hydra app holds GlobalHydra; restore it afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:  # initialize_config_module swaps the singleton object itself: look it up again
        gh = GlobalHydra.instance()
        gh.clear()
        gh.hydra = saved


def compose_verl_config(overrides: list[str]):
    """verl's full `ppo_trainer` config with our overrides (verl's own defaults for the rest)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    with _outside_our_hydra():
        try:
            with initialize_config_module(VERL_CONFIG_MODULE, version_base=None):
                vcfg = compose("ppo_trainer", overrides=overrides)
        except HydraException as err:
            raise ConfigError(f"verl rejects the overrides: {str(err).splitlines()[0]}") from None
    OmegaConf.set_struct(vcfg, False)
    return vcfg


def validate_verl_config(vcfg) -> None:
    """verl's own checks (what main_ppo runs before training) plus its dataclass validation."""
    from hydra.errors import InstantiationException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    try:
        validate_config(vcfg, use_reference_policy=need_reference_policy(vcfg), use_critic=need_critic(vcfg))
        # validate_config converts the actor; the algorithm and rollout dataclasses check themselves too.
        omega_conf_to_dataclass(vcfg.algorithm)
        omega_conf_to_dataclass(vcfg.actor_rollout_ref.rollout)
    except (AssertionError, ValueError, TypeError, InstantiationException) as err:
        raise ConfigError(f"verl config invalid: {err}") from None
    save = list(vcfg.actor_rollout_ref.actor.checkpoint.save_contents)
    if "hf_model" not in save:
        raise ConfigError("verl config invalid: actor checkpoint.save_contents lacks hf_model")
    if int(vcfg.trainer.save_freq) < 1 or not Path(vcfg.trainer.default_local_dir).is_absolute():
        raise ConfigError("verl config invalid: trainer.save_freq < 1 or a relative trainer.default_local_dir")


def write_verl_config(cfg, out_dir: Path) -> Path:
    """Build the data, compose + validate the verl config, save it atomically; its path."""
    from rlvr_linearity.train.verl_data import build_verl_data

    out_dir = Path(out_dir).resolve()
    train_file, val_file = build_verl_data(cfg, out_dir / "data")
    overrides = verl_overrides(cfg, out_dir, train_file, val_file)
    vcfg = compose_verl_config(overrides)
    validate_verl_config(vcfg)
    path = out_dir / f"{CONFIG_NAME}.yaml"
    write_text_atomic(path, OmegaConf.to_yaml(vcfg))
    (out_dir / "verl_overrides.txt").write_text("\n".join(overrides) + "\n")
    return path


def check_attention_installed(impl: str) -> None:
    """flash_attention_2 is only usable where flash-attn is installed (checked where training runs)."""
    import importlib.util

    if impl == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("train.attn_implementation=flash_attention_2 needs flash-attn, which is not installed "
                          "(pip install flash-attn --no-build-isolation, or verl's image); or use sdpa")


def main_ppo_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(config_path.parent),
            "--config-name", config_path.stem]


def launch_verl(cfg, out_dir: Path, tracker=None) -> Path:
    """Write and validate `DIR/verl_config.yaml`; with `train.launch`, train and describe the trajectory.

    Returns `DIR/trajectory` (verl's `global_step_N/actor/huggingface` tree). On several Slurm
    nodes every node calls this; `ray_cluster` makes the first the head and the rest workers.
    `tracker` (optional) receives the per-step training metrics and a summary.
    """
    out_dir = Path(out_dir).resolve()
    traj = out_dir / "trajectory"
    config_path = write_verl_config(cfg, out_dir)
    log.info("verl config written and validated: %s", config_path)
    if tracker is not None:
        tracker.summary({"verl_config": str(config_path), "launched": bool(cfg.train.launch)})
    if not cfg.train.launch:
        return traj
    check_attention_installed(str(cfg.train.attn_implementation))

    env = {"VERL_FILE_LOGGER_PATH": str(out_dir / "verl_metrics.jsonl"), **_wandb_env(cfg, out_dir, tracker)}
    nodes, gpus = cluster_shape(cfg.train)
    rc = ray_cluster.run_on_ray_cluster(main_ppo_command(config_path), out_dir / "ray_cluster", nodes=nodes,
                            port=int(cfg.train.ray_port), env=env, gpus_per_node=gpus)
    if rc is None:  # a Ray worker node: the head collects the results
        return traj
    if rc != 0:
        raise RuntimeError(f"verl training failed with exit code {rc} (log above; config {config_path})")
    info = describe_trajectory(cfg, out_dir)
    if tracker is not None:
        metrics = out_dir / "train_metrics.jsonl"
        for line in metrics.read_text().splitlines() if metrics.exists() else []:
            rec = json.loads(line)
            tracker.log({k: v for k, v in rec.items() if k not in ("step", "verl") and v is not None},
                        step=rec["step"])
        tracker.summary({"saved_steps": info["steps"], "trajectory": str(traj)})
    return traj


def _wandb_env(cfg, out_dir: Path, tracker) -> dict:
    """verl's own W&B logger follows this project's policy: offline without a key, run files
    under DIR, the sweep's group."""
    logger_cfg = cfg.logger
    if logger_cfg.backend != "wandb":
        return {}
    from rlvr_linearity.tracking import wandb_mode

    env = {"WANDB_MODE": wandb_mode(logger_cfg), "WANDB_DIR": str(logger_cfg.dir or out_dir)}
    group = getattr(tracker, "group", None) or logger_cfg.group
    if group:
        env["WANDB_RUN_GROUP"] = str(group)
    if logger_cfg.entity:
        env["WANDB_ENTITY"] = str(logger_cfg.entity)
    return env


def describe_trajectory(cfg, out_dir: Path) -> dict:
    """`trajectory/trajectory.json` (base model, saved steps) and `train_metrics.jsonl` from verl's files."""
    from rlvr_linearity.trajectory.discover import discover

    out_dir = Path(out_dir)
    traj = out_dir / "trajectory"
    # trajectory discovery's rule: saved (<= verl's tracker) with a complete hf_model export, one
    # model.safetensors or an index of shards; nothing saved at all is its "no checkpoints" error
    steps = [f.step for f in discover(traj) if f.layout == "verl"]
    info = {"base": str(cfg.train.model), "steps": steps, "layout": "verl", "trainer": "verl"}
    write_json_atomic(traj / "trajectory.json", info)
    metrics = out_dir / "verl_metrics.jsonl"
    if metrics.exists():
        lines = []
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            data = rec.get("data", {})
            lines.append(json.dumps({
                "step": rec.get("step"),
                "reward": data.get("critic/rewards/mean"),
                "accuracy": data.get("critic/score/mean"),  # the 0/1 verifier score
                "kl": data.get("actor/kl_loss"),
                "response_length": data.get("response_length/mean"),
                "verl": data,
            }))
        write_lines_atomic(out_dir / "train_metrics.jsonl", lines)
    return info
