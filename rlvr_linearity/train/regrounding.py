"""LIN's periodic re-grounding ("RL-Extra", docs/methods.md §B4): the pieces of one iteration.

An iteration trains M real RL steps from the current model P (virtual step s), then
weight-extrapolates between P and the trained model with α = (M + N)/M, landing on virtual step
s + M + N; that model is the next iteration's P. After K iterations K·M real steps stand for
K·(M + N) virtual ones. The loop itself, its caching and its evaluation live in
`rlvr_linearity.pipeline.regrounding`; this module holds what one segment needs:

- Data order (`prompt_order`, `segment_rows`). Plain TRL GRPO draws prompts through TRL's
  `RepeatSampler`: one `torch.Generator` seeded with the seed, one `randperm` per epoch, full
  batches of `prompts_per_step` only. `prompt_order` reproduces that sequence, so the prompts of
  real step r are the same in plain GRPO and in re-grounding. Segment k (`data: continue`) gets
  the rows of real steps k·M+1 .. (k+1)·M of that order, passed to `train_trl(rows=...)`
  unshuffled: no prompt is replayed (within an epoch), and the two arms see the same prompts at
  the same real step. `data: replay` restarts every segment at the beginning of the order, as
  LIN's released loop does (a fresh verl run with the same seeded shuffle, docs/methods.md §F10).
- Optimizer state (`KeepStateCallback`). `reset`: every segment is a fresh run (new AdamW state,
  the seed's RNG), as in LIN. `keep`: the AdamW moments and step counts, the scheduler and the
  RNG state at the end of the previous segment are loaded before the segment's first step, so
  the segment continues that run with only the weights moved by the extrapolation (with N = 0
  this equals plain GRPO exactly). Resuming inside a segment uses TRL's own checkpoint instead.
- Extrapolation (`extrapolate_segment`): LIN's two-point weight extrapolation
  (`extrapolate.weight.run_weight`) with base = the segment's start model (its step 0) and
  second = its last step M, target M + N.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from rlvr_linearity.errors import ConfigError

log = logging.getLogger(__name__)

OPTIMIZER_MODES = ("keep", "reset")
DATA_MODES = ("continue", "replay")


def alpha(M: int, N: int) -> float:
    """The extrapolation factor of one iteration: (M + N) / M (base = segment start, second = +M)."""
    M, N = int(M), int(N)
    if M < 1 or N < 0:
        raise ConfigError(f"regrounding: need M >= 1 and N >= 0, got M={M}, N={N}")
    return (M + N) / M


def prompt_order(n_rows: int, prompts_per_step: int, seed: int, n_steps: int) -> list[int]:
    """Row indices in the order plain TRL GRPO uses them: enough for `n_steps` steps.

    TRL's `RepeatSampler(shuffle=True, seed=seed)` draws `torch.randperm(n_rows)` from one
    generator per epoch and keeps only full batches; step s uses the s-th batch of
    `prompts_per_step` rows of the concatenated epochs.
    """
    import torch

    P = int(prompts_per_step)
    usable = (int(n_rows) // P) * P
    if usable == 0:
        raise ConfigError(f"regrounding: {n_rows} training rows cannot fill one batch of {P} prompts")
    g = torch.Generator()
    g.manual_seed(int(seed))
    order: list[int] = []
    while len(order) < int(n_steps) * P:
        order += torch.randperm(int(n_rows), generator=g).tolist()[:usable]
    return order[: int(n_steps) * P]


def segment_steps(k: int, M: int, data: str = "continue") -> tuple[int, int]:
    """Real steps [first, last] (1-based, of the plain-GRPO order) whose prompts segment k trains on."""
    if data not in DATA_MODES:
        raise ConfigError(f"regrounding.data={data!r}: use one of {list(DATA_MODES)}")
    start = int(k) * int(M) if data == "continue" else 0
    return start + 1, start + int(M)


def segment_rows(rows: list[dict], k: int, M: int, prompts_per_step: int, seed: int,
                 data: str = "continue") -> list[dict]:
    """The task rows segment k trains on, in order (see the module docstring)."""
    first, last = segment_steps(k, M, data)
    P = int(prompts_per_step)
    order = prompt_order(len(rows), P, seed, last)
    return [rows[i] for i in order[(first - 1) * P: last * P]]


def make_keep_callback(previous_checkpoint: Path):
    """A TrainerCallback that loads the optimizer, scheduler and RNG state of the previous
    segment's last checkpoint just before the first step of a fresh segment.

    It acts at the first `on_step_begin` (after the batch is fetched, before generation), the
    point where the Trainer itself restores RNG state when resuming; a segment resumed from its
    own checkpoint (global_step > 0) has its state from there and is left alone.
    """
    import torch
    from transformers import TrainerCallback

    prev = Path(previous_checkpoint)
    missing = [f for f in ("optimizer.pt", "rng_state.pth") if not (prev / f).exists()]
    if missing:
        raise ConfigError(f"regrounding.optimizer=keep: {prev} lacks {', '.join(missing)} "
                          "(the previous segment's last checkpoint must keep its optimizer state)")

    class KeepStateCallback(TrainerCallback):
        def __init__(self):
            self.done = False

        def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
            if self.done:
                return
            self.done = True
            if state.global_step != 0:
                return
            optimizer.load_state_dict(torch.load(prev / "optimizer.pt", weights_only=True))
            if lr_scheduler is not None and (prev / "scheduler.pt").exists():
                lr_scheduler.load_state_dict(torch.load(prev / "scheduler.pt", weights_only=True))
            from transformers.trainer_pt_utils import safe_globals

            with safe_globals():  # numpy RNG state: allow-listed globals, still weights_only
                _set_rng_state(torch.load(prev / "rng_state.pth", weights_only=True))
            log.info("regrounding: optimizer, scheduler and RNG state carried over from %s", prev)

    return KeepStateCallback()


def _set_rng_state(state: dict) -> None:
    """What `Trainer._load_rng_state` restores on one CPU/GPU process."""
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and "cuda" in state:
        cuda = state["cuda"]
        (torch.cuda.set_rng_state_all if isinstance(cuda, (list, tuple)) else torch.cuda.set_rng_state)(cuda)


def last_checkpoint(traj_dir: Path, M: int) -> Path:
    """The segment's model after M real steps (TRL `checkpoint-M` or verl `global_step_M`)."""
    from rlvr_linearity.trajectory import open_trajectory

    traj = open_trajectory(path=str(traj_dir), steps=[int(M)])
    return Path(traj.model(int(M)).path)


def train_segment(cfg, out_dir: Path, start_model: str, k: int, M: int, *, optimizer: str = "reset",
                  data: str = "continue", previous: Path | None = None, tracker=None) -> Path:
    """Train segment k: M real steps from `start_model` on its slice of the prompt order; returns
    the segment's trajectory dir (step 0 = start_model, steps 1..M). `previous`: the last
    checkpoint of segment k-1 (for `optimizer=keep`)."""
    from rlvr_linearity.config import derive

    if optimizer not in OPTIMIZER_MODES:
        raise ConfigError(f"regrounding.optimizer={optimizer!r}: use one of {list(OPTIMIZER_MODES)}")
    out_dir = Path(out_dir)
    backend = str(cfg.train.backend)
    scfg = derive(cfg, **{"train.model": str(start_model), "train.steps": int(M), "output_dir": str(out_dir)})
    if backend == "trl":
        from rlvr_linearity.tasks.arithmetic import make_split
        from rlvr_linearity.train.trl_grpo import train_trl

        t = cfg.train
        seed = int(t.seed)
        rows = segment_rows(make_split(cfg.task, "train"), k, M, int(t.prompts_per_step), seed, data)
        callbacks = [make_keep_callback(previous)] if optimizer == "keep" and previous is not None else []
        return train_trl(scfg, out_dir, tracker, rows=rows, callbacks=callbacks)
    if backend == "verl":
        return _train_segment_verl(scfg, out_dir, k, M, optimizer=optimizer, data=data, tracker=tracker)
    raise ConfigError(f"train.backend: unknown backend {backend!r} (use trl or verl)")


def _train_segment_verl(scfg, out_dir: Path, k: int, M: int, *, optimizer: str, data: str, tracker=None) -> Path:
    """A verl segment: a fresh verl run of M steps from the start model on the segment's rows in
    order (`data.shuffle=False`). The rows follow verl's own seeded shuffle order only in spirit:
    we fix the order ourselves (`prompt_order` over the training parquet), so segments never
    replay prompts. verl's optimizer state is FSDP-sharded and tied to the pre-extrapolation
    weights, so only `optimizer=reset` (LIN's loop) is offered."""
    import pyarrow.parquet as pq

    from rlvr_linearity.config import derive
    from rlvr_linearity.train.verl_data import build_verl_data, write_parquet
    from rlvr_linearity.train.verl_launcher import launch_verl

    if optimizer != "reset":
        raise ConfigError("regrounding.optimizer=keep needs trainer=trl: verl's sharded optimizer state cannot be "
                          "carried across a weight extrapolation; use regrounding.optimizer=reset (LIN's loop)")
    train_file, val_file = build_verl_data(scfg, out_dir / "data" / "source")
    rows = pq.read_table(train_file).to_pylist()
    seed = int(scfg.seed)
    seg = segment_rows(rows, k, M, int(scfg.train.prompts_per_step), seed, data)
    seg_file = write_parquet(seg, out_dir / "data" / "segment.parquet")
    over = list(scfg.train.overrides or [])
    over += [f"data.train_files={seg_file}", f"data.val_files={val_file}", "data.shuffle=false"]
    vcfg = derive(scfg, **{"train.overrides": over})
    return launch_verl(vcfg, out_dir, tracker)


def extrapolate_segment(traj_dir: Path, M: int, N: int, out_root: Path, *, extrapolate_norms: bool = False,
                        dtype=None) -> dict:
    """LIN's weight extrapolation of one segment: W = W_0 + α (W_M − W_0), α = (M+N)/M, written to
    `out_root/step_<M+N>/` (a complete HF model dir); returns run_weight's summary + `path`."""
    from rlvr_linearity.extrapolate.weight import run_weight
    from rlvr_linearity.trajectory import open_trajectory

    out_root = Path(out_root)
    if out_root.exists():  # an earlier attempt that did not complete the stage
        shutil.rmtree(out_root)
    traj = open_trajectory(path=str(traj_dir), steps=[0, int(M)])
    info = run_weight(traj, 0, int(M), [int(M) + int(N)], out_root, extrapolate_norms=extrapolate_norms,
                      dtype=dtype)
    info["alpha"] = alpha(M, N)
    info["path"] = str(out_root / f"step_{int(M) + int(N)}")
    return info
