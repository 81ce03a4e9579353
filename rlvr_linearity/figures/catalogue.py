"""The papers' figures and tables: what each needs and the command that produces it
(`CATALOGUE`), and the index of a `rlvr figures` run rendered as Markdown and as a summary."""

from __future__ import annotations

from dataclasses import dataclass

LIN_EXP = "experiment=paper/lin_deepscaler_r1_distill_1.5b"
RELEX_EXP = "experiment=paper/relex_qwen2.5_math_1.5b"
REGROUNDING_INPUTS = ("regrounding.json (schema `Regrounding`)",  # LIN Table 2 and Fig. 6: needs, command
                      "rlvr pipeline experiment=paper/lin_regrounding (GPU cluster; experiment=regrounding: the demo-scale "
                      "loop on CPU)")


@dataclass(frozen=True)
class PaperFigure:
    """One figure or table of a paper: what it needs and how to get it."""

    id: str
    paper: str
    title: str
    needs: str
    command: str


CATALOGUE = [
    PaperFigure("lin_weight_r2_histogram", "LIN", "Per-weight R² histogram (fraction > 0.7 marked)",
                "linearity/weights_r2.json with `histogram`",
                f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory"),
    PaperFigure("lin_logprob_r2_histogram", "LIN", "Token log-prob R² histogram",
                "linearity/logprob_r2.json", f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory linearity.logprobs=true"),
    PaperFigure("lin_weight_r2_heatmap", "LIN", "Mean weight R², module × layer (+ embedding / final norm / lm_head)",
                "linearity/weights_r2.json with `heatmap`", f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory"),
    PaperFigure("lin_weight_trajectories", "LIN", "Example weight trajectories with their fits",
                "linearity/weights_r2.json with `examples`", f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory"),
    PaperFigure("lin_token_trajectories", "LIN", "Example token log-prob trajectories with their fits",
                "linearity/logprob_r2.json with `examples`",
                f"rlvr linearity {LIN_EXP} trajectory.path=RUN/trajectory linearity.logprobs=true"),
    PaperFigure("lin_robustness", "LIN", "Fig. 2: weight and log-prob R² across training settings",
                "robustness.json, figures.robustness, or weights_r2.json/logprob_r2.json of >= 2 runs",
                "rlvr linearity -m trajectory.path=RUN_A/trajectory,RUN_B/trajectory linearity.logprobs=true (one run per setting, GPU-scale for the paper)"),
    PaperFigure("lin_weight_extrapolation", "LIN", "Fig. 5: weight extrapolation, accuracy vs target t′ per t₁",
                "results.json with `weight_extrapolation` rows",
                f"rlvr pipeline {LIN_EXP} trajectory.path=RUN/trajectory -m hydra/launcher=slurm_gpu "
                "(GPU; the preset's pipeline.weight.per_pair holds Fig. 5's targets per t₁)"),
    PaperFigure("lin_table1", "LIN", "Table 1: logits extrapolation vs standard RL per benchmark",
                "logits_extrapolation.json, or results.json with `logits_extrapolation` rows",
                f"rlvr pipeline {LIN_EXP} trajectory.path=RUN/trajectory pipeline.logits.pairs=[[200,1400]] "
                "pipeline.logits.targets=[2000] benchmarks=[aime24,aime25,math500,livecodebench] -m hydra/launcher=slurm_gpu (GPU)"),
    PaperFigure("lin_table2", "LIN", "Table 2: re-grounding at fixed real-step budgets",
                *REGROUNDING_INPUTS),
    PaperFigure("lin_fig6", "LIN", "Fig. 6: re-grounding efficiency (real steps to accuracy thresholds)",
                *REGROUNDING_INPUTS),
    PaperFigure("lin_fig3_token_snr", "LIN", "Fig. 3: token SNR, reward-style noise injected into SFT vs weight R²",
                "mechanism/token_snr.json (pipeline stage token_snr)",
                "rlvr pipeline experiment=demo_mechanism (CPU-scale; mechanism.* keys, docs/mechanism.md)"),
    PaperFigure("lin_fig4_decomposition", "LIN", "Fig. 4: source of the output change per layer (input / weight / "
                "second-order)", "mechanism/decomposition.json (pipeline stage mechanism)",
                "rlvr pipeline experiment=demo_mechanism, or pipeline.stages=[mechanism] trajectory.path=RUN/trajectory"),
    PaperFigure("activation_linearity", "LIN", "Activation linearity: R² of hidden activations over steps per layer",
                "mechanism/activation_r2.json (pipeline stage mechanism)",
                "rlvr pipeline experiment=demo_mechanism, or pipeline.stages=[mechanism] trajectory.path=RUN/trajectory"),
    PaperFigure("relex_explained_variance", "RELEX", "Finding 1: explained variance of rank r per tensor",
                "linearity/lowrank.json, or extrapolate/extrapolation.json of RELEX",
                f"rlvr linearity {RELEX_EXP} linearity.windows=[75,all]"),
    PaperFigure("relex_rank1_coefficient", "RELEX", "Finding 2: rank-1 coefficient vs step, fit and held-out steps",
                "linearity/lowrank.json with `coefficients`, or extrapolate/extrapolation.json of RELEX",
                f"rlvr linearity {RELEX_EXP} linearity.coefficient_history=75"),
    PaperFigure("relex_accuracy_vs_target", "RELEX", "Accuracy vs target step per T_cut, with the RLVR curve",
                "results.json with `relex` rows",
                f"rlvr pipeline {RELEX_EXP} extrapolate.windows=[25,50,75,100] extrapolate.history=null "
                "extrapolate.targets=[125,200,300,400,500] -m hydra/launcher=slurm_gpu (GPU)"),
    PaperFigure("relex_finding1_reconstruction", "RELEX", "Finding 1: accuracy of rank-r reconstructions vs the trained "
                "checkpoints", "results.json with `reconstruction` rows (pipeline stage reconstruct)",
                f"rlvr pipeline {RELEX_EXP} pipeline.stages=[reconstruct,evaluate,report] "
                "pipeline.reconstruct.steps=[100,200,300,400,500] pipeline.reconstruct.ranks=[1,5] "
                "pipeline.reconstruct.history=500 -m hydra/launcher=slurm_gpu (GPU; CPU-scale: experiment=demo)"),
    PaperFigure("relex_denoising", "RELEX", "Denoising: rank-r projections and RELEX predictions vs the trained "
                "checkpoint at the same step", "results.json with `reconstruction` rows, or `relex` rows whose target "
                "was trained and evaluated",
                f"rlvr pipeline {RELEX_EXP} pipeline.stages=[reconstruct,relex,evaluate,report] "
                "pipeline.reconstruct.steps=[100,200,300,400,500] -m hydra/launcher=slurm_gpu (GPU; CPU-scale: experiment=demo)"),
    PaperFigure("relex_main_table", "RELEX", "Main table: base, RLVR at the final step and RELEX per window, "
                "MATH and the out-of-domain benchmarks", "results.json of one or several models (base, rlvr and relex rows)",
                "rlvr pipeline -m experiment=paper/relex_qwen2.5_math_1.5b,paper/relex_qwen3_4b_base,paper/relex_qwen3_8b_base "
                "hydra/launcher=slurm_gpu, then rlvr figures figures.inputs=[RUN_1.5B,RUN_4B,RUN_8B] (GPU; CPU-scale: "
                "experiment=demo)"),
    PaperFigure("relex_ablations", "RELEX", "Rank and fit ablations",
                "results.json `relex` rows with `rank`/`fit` keys (several values)",
                f"rlvr pipeline -m {RELEX_EXP} extrapolate.rank=1,2,5 extrapolate.fit=linear,polynomial hydra/launcher=slurm_gpu (GPU)"),
    PaperFigure("lr_sweep", "demo", "Where linearity holds: coefficient R² out of sample, RELEX − trained, weight R² "
                "vs learning rate", "results.json of >= 2 pipeline runs trained at different `train.lr` (keys `train`, "
                "`linearity.coefficient_r2_out_of_sample`)",
                "rlvr pipeline -m experiment=demo_lr_sweep train.lr=3e-6,1e-5,3e-5,1e-4 (CPU, docs/where_linearity_holds.md)"),
]
BY_ID = {f.id: f for f in CATALOGUE}


def render_readme(index: dict) -> str:
    """The index as Markdown: made figures with their inputs, missing ones with their command."""
    lines = ["# Paper figures and tables", "", f"Inputs: {', '.join(f'`{i}`' for i in index['inputs'])}", "",
             "## Made", "", "| Paper | Figure | Outputs | From |", "| --- | --- | --- | --- |"]
    for m in index["made"]:
        title = m["title"] + (f" ({m['label']})" if m.get("label") else "")
        lines.append(f"| {m['paper']} | {title} | {', '.join(f'`{o}`' for o in m['outputs'])} | "
                     f"{', '.join(f'`{i}`' for i in m['inputs'])} |")
    lines += ["", "## Missing (inputs not found)", "", "| Paper | Figure | Needs | Command |", "| --- | --- | --- | --- |"]
    lines += [f"| {m['paper']} | {m['title']} | {m['needs']} | `{m['command']}` |" for m in index["missing"]]
    return "\n".join(lines) + "\n"


def print_summary(index: dict) -> None:
    print(f"rlvr figures: {len(index['made'])} figure(s)/table(s) made, {len(index['missing'])} missing")
    for m in index["made"]:
        print(f"  made     {m['id']}{' (' + m['label'] + ')' if m.get('label') else ''}: {m['outputs'][0]}")
    for m in index["missing"]:
        print(f"  missing  {m['id']}: needs {m['needs']}\n           run: {m['command']}")
