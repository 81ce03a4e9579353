"""`report.md` of `rlvr pipeline experiment=regrounding`: LIN Table 2 and Fig. 6 drawn by
`figures.regenerate`, then the configurations, a verdict from the numbers, accuracy vs real RL
steps, speed-ups, fixed budgets, segments and timings as Markdown."""

from __future__ import annotations

from pathlib import Path

from rlvr_linearity.figures.regenerate import regenerate
from rlvr_linearity.figures.tables import budget_table, default_thresholds, pct, speedups
from rlvr_linearity.io import write_text_atomic
from rlvr_linearity.pipeline.report import fmt, md_table


def accuracy_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Rows: real RL steps; columns: plain GRPO, then each configuration (its virtual step)."""
    bench = data["benchmark"]
    arms = [("plain GRPO", data.get("std_rl") or [])] + [(m["label"], m["points"]) for m in data["methods"]]
    steps = sorted({p["real_steps"] for _, pts in arms for p in pts})
    header = ["real RL steps"] + [a for a, _ in arms]
    rows = []
    for s in steps:
        row = [str(s)]
        for i, (_, pts) in enumerate(arms):
            p = next((p for p in pts if p["real_steps"] == s), None)
            if p is None or not p.get("accuracy"):
                row.append("")
                continue
            cell = fmt(p["accuracy"].get(bench))
            if i and p.get("virtual_step") not in (None, s):
                cell += f" (virtual {p['virtual_step']}{', extrapolated' if p.get('kind') == 'extrapolated' else ''})"
            row.append(cell)
        rows.append(row)
    return header, rows


def verdict(data: dict, speedup_rows: list[dict]) -> list[str]:
    bench, budget = data["benchmark"], data["budget"]
    std = {p["real_steps"]: (p.get("accuracy") or {}).get(bench) for p in data.get("std_rl") or []}
    lines = []
    if std.get(0) is not None and std.get(budget) is not None:
        lines.append(f"Plain GRPO: {bench} accuracy {std[0]:.3f} at step 0 → {std[budget]:.3f} after {budget} real steps "
                     f"(best {max(v for v in std.values() if v is not None):.3f}).")
    for m in data["methods"]:
        pts = {p["real_steps"]: (p.get("accuracy") or {}).get(bench) for p in m["points"]}
        end = m["M"] * m["iterations"]
        if pts.get(end) is None:
            continue
        cmp = ""
        if std.get(end) is not None:
            d = pts[end] - std[end]
            cmp = f", {d * 100:+.1f} points vs plain GRPO at the same real steps ({std[end]:.3f})"
        best = max(v for v in pts.values() if v is not None)
        lines.append(f"Re-grounding {m['label']} (α = {m['alpha']:g}, optimizer {m['optimizer']}, data {m['data']}): "
                     f"{pts[end]:.3f} after {end} real steps = virtual step {(m['M'] + m['N']) * m['iterations']}{cmp}; "
                     f"best {best:.3f}.")
        segs = [s for s in m.get("segments") or [] if s.get("trained_accuracy") and s.get("extrapolated_accuracy")]
        if segs:
            gains = [s["extrapolated_accuracy"][bench] - s["trained_accuracy"][bench] for s in segs]
            lines.append(f"  Each extrapolation changed accuracy by {', '.join(f'{g * 100:+.0f}' for g in gains)} points "
                         f"relative to the segment's trained end model (mean {sum(gains) / len(gains) * 100:+.1f}).")
    for r in speedup_rows:
        parts = []
        for lbl, v in r["methods"].items():
            if v["steps"] is None:
                parts.append(f"{lbl} not reached")
            else:
                parts.append(f"{lbl} {v['steps']} steps" + (f" ({v['speedup']:.2f}×)" if v["speedup"] else ""))
        s = r["std_rl"]
        lines.append(f"Reaching {bench} ≥ {r['threshold']:.3f}: plain GRPO "
                     f"{'never (within the budget)' if s is None else f'{s} steps'}; " + "; ".join(parts) + ".")
    return lines


def write_report(cfg, out_dir: Path, data: dict) -> Path:
    """LIN Table 2 / Fig. 6 through `rlvr figures` (figures.regenerate), then `DIR/report.md`;
    adds `figures`, `speedups` and `table2` to `data`."""
    out_dir = Path(out_dir)
    made, sp, budget_rows = _paper_figures(cfg, out_dir, data)
    lines = _introduction(cfg, data)
    lines += ["## Configurations", ""]
    lines += md_table(["config", "M", "N", "α", "iterations", "real steps", "virtual steps", "optimizer", "data"],
                    [[m["label"], str(m["M"]), str(m["N"]), f"{m['alpha']:g}", str(m["iterations"]),
                      str(m["M"] * m["iterations"]), str((m["M"] + m["N"]) * m["iterations"]), m["optimizer"], m["data"]]
                     for m in data["methods"]]) + [""]
    lines += ["## Verdict", ""] + [f"- {v}" for v in verdict(data, sp)] + [""]
    lines += ["## Accuracy vs real RL steps", ""]
    header, rows = accuracy_table(data)
    lines += md_table(header, rows) + [""]
    if "lin_fig6" in made:
        png = next(o for o in made["lin_fig6"]["outputs"] if o.endswith(".png"))
        lines += [f"![LIN Fig. 6: accuracy vs real RL steps and speed-ups](figures/{Path(png).name})", ""]
    lines += _speedup_lines(data, sp) + _budget_lines(data["benchmark"], budget_rows) + _segment_lines(data)
    t = data.get("timings") or {}
    lines += ["## Timings (this process; cached stages count 0 s)", ""]
    lines += md_table(["what", "seconds"], [[k, fmt(v, 1)] for k, v in t.items() if not isinstance(v, dict)]) + [""]
    lines += ["Files: `regrounding.json` (schema `Regrounding` in rlvr_linearity/figures/schemas.py), "
              "`figures/lin_fig6_regrounding.png`, `figures/lin_fig6_speedups.md`, `figures/lin_table2.md`; "
              f"stages under `stages/` (links into `{cfg.pipeline.stage_dir}`).", ""]
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _paper_figures(cfg, out_dir: Path, data: dict) -> tuple[dict, list[dict], list[dict]]:
    """Draw LIN Table 2 / Fig. 6 (`figures.*` keys, else `regrounding.thresholds` and every segment
    boundary as budgets); return the figures made, the speed-up rows and the Table 2 rows."""
    fcfg = cfg.figures
    bench = data["benchmark"]
    thresholds = fcfg.fig6_thresholds or cfg.regrounding.thresholds
    thresholds = list(thresholds) if thresholds else None
    budgets = fcfg.table2_budgets  # default: every segment boundary (where extrapolated models stand)
    budgets = list(budgets) if budgets else sorted({m["M"] * (k + 1) for m in data["methods"]
                                                    for k in range(m["iterations"])}) or None
    index = regenerate([out_dir], out_dir, pdf=bool(fcfg.pdf), reference=bool(fcfg.reference),
                       table2_budgets=budgets, fig6_thresholds=thresholds,
                       fig6_benchmark=fcfg.fig6_benchmark)
    made = {m["id"]: m for m in index["made"]}
    data["figures"] = {k: made[k]["outputs"] for k in ("lin_table2", "lin_fig6") if k in made}
    thr = thresholds or default_thresholds(data, bench)
    sp = speedups(data, thr, bench) if data.get("std_rl") else []
    budget_rows = budget_table(data, budgets) if data.get("std_rl") else []
    data["speedups"], data["table2"] = sp, budget_rows
    return made, sp, budget_rows


def _introduction(cfg, data: dict) -> list[str]:
    lines = [f"# Periodic re-grounding (LIN RL-Extra): {cfg.experiment_name or 'regrounding'}", ""]
    lines += [f"Benchmark `{data['benchmark']}` (held-out split; sampling n={cfg.sampling.n}, "
              f"temperature={cfg.sampling.temperature}), "
              f"backend `{data['settings']['backend']}`, {data['settings']['prompts_per_step']} prompts × "
              f"{data['settings']['group_size']} samples per step, lr {cfg.train.lr}, seed {cfg.seed}. "
              "Each iteration trains M real GRPO steps, then weight-extrapolates from the segment's start model "
              "through its end model with α = (M+N)/M and continues from there; plain GRPO trains the same real "
              "steps on the same prompt order. Prompts continue across segments (no prompt replayed) unless "
              "`data: replay`.", ""]
    return lines


def _speedup_lines(data: dict, sp: list[dict]) -> list[str]:
    if not sp:
        return []
    labels = [m["label"] for m in data["methods"]]
    lines = ["## Speed-up to accuracy thresholds (LIN Fig. 6)", "",
             "Real RL steps for the first evaluation at or above each threshold; speed-up = plain GRPO's steps / "
             "re-grounding's.", ""]
    lines += md_table(["threshold", "plain GRPO", *labels],
                    [[f"≥ {r['threshold']:.3f}", "–" if r["std_rl"] is None else str(r["std_rl"]),
                      *[("–" if v["steps"] is None else str(v["steps"])) + (f" ({v['speedup']:.2f}×)" if v["speedup"] else "")
                        for v in r["methods"].values()]] for r in sp]) + [""]
    return lines


def _budget_lines(bench: str, budget_rows: list[dict]) -> list[str]:
    if not budget_rows:
        return []
    lines = ["## Fixed real-step budgets (LIN Table 2)", ""]
    lines += md_table(["config", "real steps", "plain GRPO", "re-grounding", "virtual step", "%Imp"],
                    [[r["method"], str(r["budget"]), fmt(r["accuracy"][bench][0]) if bench in r["accuracy"] else "–",
                      fmt(r["accuracy"][bench][1]) if bench in r["accuracy"] else "–", str(r.get("virtual_step")),
                      pct(r["imp_mean_of_relative"])] for r in budget_rows]) + [""]
    return lines


def _segment_lines(data: dict) -> list[str]:
    bench = data["benchmark"]
    lines = ["## Segments", "", "Accuracy of each segment's trained end model and of its extrapolation "
             "(the next segment's start).", ""]
    seg_rows = []
    for m in data["methods"]:
        for s in m.get("segments") or []:
            seg_rows.append([m["label"], str(s["k"]), f"{s['real_steps'][0]}–{s['real_steps'][1]}",
                             f"{s['virtual_steps'][0]}→{s['virtual_steps'][0] + m['M']}→{s['virtual_steps'][1]}",
                             fmt((s.get("trained_accuracy") or {}).get(bench)),
                             fmt((s.get("extrapolated_accuracy") or {}).get(bench)),
                             fmt(s.get("train_seconds"), 1)])
    lines += md_table(["config", "segment", "real steps", "virtual steps (start→trained→extrapolated)",
                     "trained", "extrapolated", "train s"], seg_rows) + [""]
    return lines
