"""The `rlvr` commands: one module each, `run(cfg, tracker)` on a composed config.

They are the only layer above the science packages besides `pipeline`: each reads its config,
calls its package's plain functions, and reports to the tracker.
"""

# name -> (module with `run(cfg, tracker)`, one-line help)
COMMANDS = {
    "train": ("rlvr_linearity.commands.train", "RL training (GRPO) that writes a trajectory of checkpoints"),
    "linearity": ("rlvr_linearity.commands.linearity", "weight, log-prob and low-rank linearity of a trajectory"),
    "extrapolate": ("rlvr_linearity.commands.extrapolate", "predicted checkpoints (relex, weight)"),
    "evaluate": ("rlvr_linearity.commands.evaluate", "benchmark evaluation of a model, model pair or responses file"),
    "pipeline": ("rlvr_linearity.commands.pipeline", "an experiment chaining the commands (experiment=demo, paper runs)"),
    "figures": ("rlvr_linearity.commands.figures", "regenerate the paper figures and tables from results directories"),
}
