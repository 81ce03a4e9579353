"""CPU GRPO with TRL's `GRPOTrainer`: a trajectory with a checkpoint every `train.save_every` steps.

Writes `DIR/trajectory/checkpoint-N/` (model.safetensors in float32, config, tokenizer), with
optimizer state kept only in the newest checkpoint (enough to resume), `trajectory.json`
(base model, saved steps, trainer, config) rewritten after every save, and one JSON line of
training metrics per step in `DIR/train_metrics.jsonl`. A killed run resumes from its newest
checkpoint that still has optimizer and RNG state, and then trains bit for bit as the uninterrupted
run would (the Trainer restores weights, optimizer, scheduler and RNG; `EpochSampler` the data
order): same weights at every step, same metrics but wall-clock times (tests/test_train_trl.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from rlvr_linearity.errors import ConfigError, TrajectoryError
from rlvr_linearity.io import write_json_atomic

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint-(\d+)$")
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")
PRUNE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def saved_steps(traj_dir: Path) -> list[int]:
    """Steps of the complete `checkpoint-N` dirs (weights present)."""
    if not traj_dir.is_dir():
        return []
    steps = []
    for d in traj_dir.iterdir():
        m = _CKPT.match(d.name)
        if m and (d / "model.safetensors").exists() and (d / "config.json").exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def _resumable(traj_dir: Path) -> Path | None:
    """The newest checkpoint with optimizer state; newer (partly written) ones are removed."""
    found = sorted((int(m.group(1)), d) for d in (traj_dir.iterdir() if traj_dir.is_dir() else [])
                   if (m := _CKPT.match(d.name)) and d.is_dir())
    for i in range(len(found) - 1, -1, -1):
        step, d = found[i]
        if step in saved_steps(traj_dir) and all((d / f).exists() for f in RESUME_FILES):
            for _, later in found[i + 1:]:
                log.warning("removing %s: written after the last resumable checkpoint", later)
                shutil.rmtree(later)
            return d
    # None resumable: a checkpoint without trainer_state.json (the Trainer writes it last) is a
    # first save cut short by a kill; remove it so the run starts afresh.
    for _, d in found:
        if not (d / "trainer_state.json").exists():
            log.warning("removing %s: a save cut short (no trainer_state.json)", d)
            shutil.rmtree(d)
    return None


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metric lines of steps <= last_step (the resume point), atomically."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip()
            and json.loads(line).get("step", 0) <= last_step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


class EpochSampler:
    """TRL's `RepeatSampler` made a function of the epoch, so a resumed run sees the same data order.

    RepeatSampler seeds its generator once and draws one permutation per pass, so a run resumed
    in epoch e > 0 would draw epoch 0's order again. The Trainer calls `set_epoch(e)` (through
    accelerate) before each pass; this reseeds and replays e permutations, which is exactly the
    generator state an uninterrupted run reaches (one pass per epoch), so its order is unchanged.
    """

    def __init__(self, inner):
        self.inner, self.epoch = inner, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        import torch

        if self.inner.shuffle:
            self.inner.generator.manual_seed(self.inner.seed)
            for _ in range(self.epoch):
                torch.randperm(self.inner.num_samples, generator=self.inner.generator)
        return iter(self.inner)


def base_model_dir(cfg) -> str:
    """`train.model`: "tiny" builds/caches the demo model; else a local dir (absolute) or hub id."""
    model = str(cfg.train.model)
    if model == "tiny":
        from rlvr_linearity.train.tiny_model import tiny_model

        return str(tiny_model(cfg))
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _make_callback(out_dir: Path, traj_dir: Path, base: str, config: dict, tracker, total: int):
    from transformers import TrainerCallback

    metrics_path = out_dir / "train_metrics.jsonl"

    class TrajectoryCallback(TrainerCallback):
        """Per-step metrics to JSONL and tracker; after each save, trajectory.json and pruning."""

        def __init__(self):
            self.t_step = time.time()

        def on_step_begin(self, args, state, control, **kw):
            self.t_step = time.time()

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if "reward" not in logs:  # the final train summary, not a step
                return
            rec = {"step": state.global_step, "step_time": time.time() - self.t_step}
            rec["reward_mean"] = logs.get("reward")
            rec["reward_std"] = logs.get("reward_std")
            rec["accuracy"] = logs.get("rewards/correct/mean", logs.get("reward"))
            rec["kl"] = logs.get("kl")
            rec["completion_length_mean"] = logs.get("completions/mean_length")
            rec["completion_length_max"] = logs.get("completions/max_length")
            rec.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in rec})
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if tracker is not None:
                tracker.log({f"train/{k}": v for k, v in rec.items() if k != "step" and v is not None},
                            step=state.global_step)

        def on_save(self, args, state, control, **kw):
            steps = saved_steps(traj_dir)
            for s in steps[:-1]:  # optimizer state only where a resume would start
                for f in PRUNE_FILES:
                    (traj_dir / f"checkpoint-{s}" / f).unlink(missing_ok=True)
            write_trajectory_json(traj_dir, base, config)

    return TrajectoryCallback()


def write_trajectory_json(traj_dir: Path, base: str, config: dict) -> Path:
    path = traj_dir / "trajectory.json"
    write_json_atomic(path, {"base": base, "steps": saved_steps(traj_dir), "trainer": "trl", "config": config})
    return path


def _grpo_config(t, traj_dir: Path, *, shuffle: bool):
    """TRL's GRPOConfig for `train.*` on CPU: constant lr, one generation per step, a checkpoint
    every save_every steps with optimizer and RNG state (what an exact resume needs)."""
    from trl import GRPOConfig

    group, seed = int(t.group_size), int(t.seed)
    return GRPOConfig(
        output_dir=str(traj_dir), use_cpu=True, use_vllm=False, bf16=False, fp16=False,
        max_steps=int(t.steps), learning_rate=float(t.lr), lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=float(t.weight_decay), max_grad_norm=float(t.grad_clip),
        per_device_train_batch_size=group * int(t.prompts_per_step), gradient_accumulation_steps=1,
        num_generations=group, steps_per_generation=1, num_iterations=1, temperature=float(t.temperature),
        max_completion_length=int(t.max_completion_length), beta=float(t.beta),
        loss_type=str(t.loss_type), scale_rewards=t.scale_rewards,
        logging_steps=1, save_strategy="steps", save_steps=int(t.save_every), save_only_model=False,
        report_to=[], seed=seed, data_seed=seed, dataloader_num_workers=0,
        disable_tqdm=False, log_completions=False, shuffle_dataset=shuffle)


def _trainer(cfg, base: str, traj_dir: Path, rows: list[dict] | None, callbacks: list):
    """The GRPO trainer of `base` on `rows` (in order) or the task's train split (shuffled)."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from rlvr_linearity.console import quiet_trainer
    from rlvr_linearity.tasks.arithmetic import make_split
    from rlvr_linearity.train.rewards import BoxedAnswerReward

    t = cfg.train
    ordered = rows is not None
    rows = make_split(cfg.task, "train") if rows is None else rows
    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    args = _grpo_config(t, traj_dir, shuffle=not ordered)

    class ResumableGRPOTrainer(GRPOTrainer):
        """GRPO whose data order survives a resume (see EpochSampler)."""

        def _get_train_sampler(self, dataset=None):
            return EpochSampler(super()._get_train_sampler(dataset))

    reward = BoxedAnswerReward(timeout=float(t.reward_timeout), workers=int(t.reward_workers), grader=str(t.reward_grader))
    trainer = ResumableGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=callbacks)
    # TRL writes a model card (README.md) into the trajectory at every save, asking W&B for a run
    # URL each time (a warning per step offline); the trajectory needs none.
    trainer.create_model_card = lambda *args, **kwargs: None
    if not cfg.verbose:  # the step metrics go to train_metrics.jsonl and W&B, not the terminal
        quiet_trainer(trainer)
    return trainer


def train_trl(cfg, out_dir: Path, tracker=None, *, rows: list[dict] | None = None, callbacks=()) -> Path:
    """Run GRPO as configured by `cfg.train` on the task's train split; returns DIR/trajectory.

    `rows` (task rows: prompt, answer) replaces the train split and is used in the given order,
    unshuffled (step s takes rows[(s-1)*P : s*P], P = prompts_per_step): re-grounding segments
    pass the next slice of the seeded order. `callbacks`: extra TrainerCallbacks.
    """
    from omegaconf import OmegaConf

    t = cfg.train
    out_dir = Path(out_dir).resolve()
    traj_dir = out_dir / "trajectory"
    traj_dir.mkdir(parents=True, exist_ok=True)
    steps = int(t.steps)  # steps, save_every and group_size are checked by schemas.TrlTrainConfig

    t0 = time.time()
    base = base_model_dir(cfg)
    build_s = time.time() - t0
    config = OmegaConf.to_container(t, resolve=True)
    done = saved_steps(traj_dir)
    resume = _resumable(traj_dir) if done and done[-1] < steps else None
    done = saved_steps(traj_dir)
    if done and done[-1] >= steps:
        log.info("trajectory already complete at step %d: %s", done[-1], traj_dir)
        write_trajectory_json(traj_dir, base, config)
        return traj_dir
    if done and resume is None:
        raise ConfigError(f"{traj_dir}: checkpoints {done} exist but checkpoint-{done[-1]} cannot be resumed "
                          "(no optimizer state); use a fresh output_dir")
    _truncate_metrics(out_dir / "train_metrics.jsonl", int(resume.name.split("-")[1]) if resume else 0)

    callbacks = [_make_callback(out_dir, traj_dir, base, config, tracker, steps), *callbacks]
    trainer = _trainer(cfg, base, traj_dir, rows, callbacks)
    t1 = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    # The Trainer saves the final step itself (save_strategy="steps" saves at max_steps), through
    # the callbacks' on_save: trajectory.json, pruning and live forecasting's final.json.
    if saved_steps(traj_dir)[-1:] != [steps]:
        raise TrajectoryError(f"{traj_dir}: training stopped at step {trainer.state.global_step} of {steps} "
                              "without saving its final step")
    for s in saved_steps(traj_dir)[:-1]:
        for f in PRUNE_FILES:
            (traj_dir / f"checkpoint-{s}" / f).unlink(missing_ok=True)
    write_trajectory_json(traj_dir, base, config)
    if tracker is not None:
        tracker.summary({"train/base_model": base, "train/base_model_seconds": build_s,
                         "train/grpo_seconds": time.time() - t1, "train/steps": steps})
    log.info("GRPO: %d steps in %.1fs -> %s", steps, time.time() - t1, traj_dir)
    return traj_dir
