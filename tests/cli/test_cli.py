"""The `rlvr` entry point: usage, one-line errors (exit 2), tracebacks with debug=true or under
submitit, `python -m rlvr_linearity` as the same program, dry-run listing of the demo pipeline."""

import os
import subprocess
import sys

import pytest
from conftest import FIXTURES

from rlvr_linearity import cli
from rlvr_linearity.errors import TrajectoryError


def rlvr(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlvr_linearity", *args], capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", **(env or {})}, cwd=cwd, timeout=300)


def test_usage_lists_every_command():
    res = rlvr("--help")
    assert res.returncode == 0
    for name in ("train", "linearity", "extrapolate", "evaluate", "pipeline", "figures"):
        assert name in res.stdout


def test_unknown_command_is_one_line_exit_2():
    res = rlvr("lineraity")
    assert res.returncode == 2 and "unknown command 'lineraity'" in res.stderr


def test_bad_input_one_line_without_traceback_and_traceback_with_debug(tmp_path):
    missing = tmp_path / "nope"
    res = rlvr("linearity", f"trajectory.path={missing}", f"output_dir={tmp_path / 'out'}", "logger=none")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    err_lines = [l for l in res.stderr.splitlines() if l.startswith("rlvr linearity: error:")]
    assert len(err_lines) == 1 and str(missing) in err_lines[0]
    res = rlvr("linearity", f"trajectory.path={missing}", f"output_dir={tmp_path / 'out'}", "logger=none", "debug=true")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_submitit_jobs_raise_so_the_sweep_reports_the_error(monkeypatch):
    from omegaconf import OmegaConf

    def boom(command, cfg):
        raise TrajectoryError("step 5: tensor x: NaN")

    monkeypatch.setattr(cli, "run_command", boom)
    cfg = OmegaConf.create({"debug": False})
    with pytest.raises(SystemExit) as exit_info:
        cli._guarded("linearity", cfg)
    assert exit_info.value.code == 2
    monkeypatch.setenv("SUBMITIT_FOLDER", "/tmp/somewhere")
    with pytest.raises(TrajectoryError, match="NaN"):
        cli._guarded("linearity", cfg)


def test_demo_pipeline_dry_run_lists_stages_and_runs_nothing(tmp_path):
    res = rlvr("pipeline", "experiment=demo", f"output_dir={tmp_path / 'demo'}", "pipeline.dry_run=true",
               f"paths.cache_dir={tmp_path / 'cache'}", "logger=none")
    assert res.returncode == 0, res.stderr
    lines = [l.split() for l in res.stdout.splitlines() if l.strip().startswith("to run")]
    labels = [l[2] for l in lines]
    assert labels[:3] == ["train", "linearity", "relex"]
    assert "eval_step_0" in labels and any(l.startswith("eval_relex_h") for l in labels)
    assert not (tmp_path / "cache" / "stages").exists() or not any((tmp_path / "cache" / "stages").iterdir())
    assert not (tmp_path / "demo" / "results.json").exists()


def test_everything_a_run_writes_is_under_output_dir(tmp_path):
    fixtures = str(FIXTURES / "figures")
    res = rlvr("figures", "logger=none", f"figures.inputs=[{fixtures}]", "figures.pdf=false",
               f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out" / ".hydra" / "config.yaml").exists() and (tmp_path / "out" / "figures").is_dir()
    assert not (tmp_path / "logs").exists()


def test_fast_exit_does_what_a_normal_exit_does(tmp_path):
    """`entry` skips the interpreter's teardown: threads are still joined, atexit handlers run
    and buffered output reaches a pipe; the exit code is main's."""
    script = f"""
import atexit, sys, threading, time
from rlvr_linearity import cli
atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').write('ran'))
def late():
    time.sleep(0.5)
    open({str(tmp_path / 'thread')!r}, 'w').write('done')
threading.Thread(target=late).start()
print('x' * 100000)
sys.argv = ['rlvr', 'lineraity']
cli.entry()
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown command" in res.stderr
    assert res.stdout.count("x") == 100000
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"


def test_command_help_shows_main_keys_and_examples_not_schema_groups():
    res = rlvr("evaluate", "--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "evaluate.model=" in out and "Examples:" in out and "rlvr evaluate " in out and "verbose=true" in out
    assert "_schema" not in out and len(out.splitlines()) < 40
    pipe = rlvr("pipeline", "--help").stdout
    assert "pipeline.stages=" in pipe and "experiment=demo" in pipe and "_schema" not in pipe


def test_shell_completion_is_refused_in_one_line():
    res = rlvr("evaluate", "--shell-completion", "install=bash")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not supported" in res.stderr
