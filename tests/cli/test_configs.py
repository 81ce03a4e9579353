"""Every experiment preset composes with every command, and every sweep the docs advertise runs
distinct jobs (for `rlvr pipeline`: distinct stages, listed by a dry run)."""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rlvr_linearity.commands import COMMANDS
from rlvr_linearity.errors import ConfigError
from rlvr_linearity.pipeline.app import run_pipeline

ROOT = REPO_ROOT
PRESETS = sorted(str(p.relative_to(ROOT / "conf/experiment").with_suffix("")) for p in (ROOT / "conf/experiment").rglob("*.yaml"))
COMMAND = re.compile(r"rlvr (" + "|".join(COMMANDS) + r")\b")
PLACEHOLDER = re.compile(r"\$\(|<|\.\.\.|\|")  # shell substitutions, <time>, ellipses: not runnable as written


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_every_command(preset, command):
    cfg = compose_config(command, f"experiment={preset}", "logger=none")
    assert cfg.command == command


def _comment_free(line: str, path: Path) -> str:
    return re.sub(r"^\s*#\s?", "", line) if path.suffix in (".yaml", ".sbatch") else line


def documented_sweeps() -> list[tuple[str, str, list[str]]]:
    """(where, command, overrides) of every `rlvr <command> -m ...` in the README, docs/, conf/
    comments and scripts/ (backslash continuations joined), except those with placeholders."""
    files = subprocess.run(["git", "ls-files", "README.md", "docs", "conf", "scripts"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".md", ".yaml", ".sbatch"):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            line = _comment_free(lines[i], path)
            m = COMMAND.search(line)
            if m:
                text = line[m.start():]
                while text.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text.rstrip()[:-1] + " " + _comment_free(lines[i], path).strip()
                text = text.split("`")[0].split(" #")[0]
                words = shlex.split(text)
                if "-m" in words and not PLACEHOLDER.search(text):
                    overrides = [w for w in words[2:] if w != "-m" and not w.startswith(("hydra/", "hydra."))]
                    found.append((f"{name}:{i + 1}", m.group(1), overrides))
            i += 1
    return found


def jobs_of(overrides: list[str]) -> list[list[str]]:
    """The job list of a Hydra multirun (basic sweeper: the cartesian product of the sweeps)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


SWEEPS = documented_sweeps()


def test_sweeps_are_found():
    """The extraction sees the sweeps the issue names (a broken parser must not pass vacuously)."""
    where = {w.split(":")[0] for w, _, _ in SWEEPS}
    assert {"README.md", "conf/experiment/paper/relex_qwen2.5_math_1.5b.yaml", "docs/slurm.md"} <= where
    assert len(SWEEPS) >= 10


@pytest.mark.parametrize("where, command, overrides", SWEEPS, ids=[w for w, _, _ in SWEEPS])
def test_documented_sweep_runs_distinct_jobs(where, command, overrides, tmp_path):
    jobs = jobs_of(overrides)
    configs = []
    for job in jobs:
        cfg = compose_config(command, *job, "logger=none", f"output_dir={tmp_path}")
        configs.append(OmegaConf.to_yaml(cfg))
    assert len(set(configs)) == len(jobs), f"{where}: jobs with the same config"
    if command != "pipeline" or len(jobs) < 2:
        return
    plans = []
    for k, job in enumerate(jobs):
        cfg = compose_config(command, *job, "logger=none", "pipeline.dry_run=true", f"output_dir={tmp_path / str(k)}",
                             f"pipeline.stage_dir={tmp_path / 'stages'}")
        if cfg.trajectory.path and not Path(cfg.trajectory.path).exists():
            pytest.skip(f"{where}: the sweep reads a trajectory that exists only on a cluster")
        plans.append(tuple(row["key"] for row in run_pipeline(cfg, tmp_path / str(k))["dry_run"]))
    assert len(set(plans)) == len(jobs), f"{where}: the pipeline runs the same stages for different jobs"


def test_relex_history_sweep_reaches_the_pipeline(tmp_path):
    """The issue's example: `extrapolate.history=25,50` gives two RELEX stages, one per window."""
    keys = {}
    for h in (25, 50):
        cfg = compose_config("pipeline", "experiment=paper/relex_qwen2.5_math_1.5b", f"extrapolate.history={h}",
                             "logger=none", "pipeline.dry_run=true", f"pipeline.stage_dir={tmp_path / 'stages'}")
        plan = run_pipeline(cfg, tmp_path / str(h))["dry_run"]
        keys[h] = [row["key"] for row in plan if row["stage"] == "relex"]
    assert len(keys[25]) == 1 and keys[25] != keys[50]


@pytest.mark.parametrize("override, message", [
    ("+extrapolate.histroy=5", "extrapolate.histroy: unknown key"),
    ("linearity.ranks=[0]", "linearity.ranks"),
    ("linearity.sample_fraction=-0.1", "linearity.sample_fraction"),
    ("linearity.windows=[4.5]", "linearity.windows"),
    ("linearity.thresholds=[2,-1]", "linearity.thresholds"),
    ("linearity.windows=[foo]", "linearity.windows"),
    ("linearity.device=tpu", "linearity.device"),
    ("sampling.n=0", "sampling.n"),
])
def test_impossible_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config("linearity", override, "logger=none")
