"""`rlvr <command> [hydra overrides]`: one Hydra app per command, all sharing `conf/rlvr.yaml`.

The apps are thin: each resolves its config, opens tracking, and calls the command's `run`
function, which holds no Hydra logic. User errors become one line on stderr and exit code 2
(full traceback with `debug=true`).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import os
import sys
import threading
from pathlib import Path

from rlvr_linearity.commands import COMMANDS


log = logging.getLogger("rlvr")


def _usage() -> str:
    lines = ["usage: rlvr <command> [hydra overrides] [-m] [--cfg job] ...", "", "commands:"]
    lines += [f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "Common keys: output_dir=DIR experiment=NAME trajectory.path=DIR logger=none debug=true"]
    return "\n".join(lines)


def run_command(command: str, cfg) -> object:
    """Run one command on a resolved config: tracking around the command's `run(cfg, tracker)`."""
    from rlvr_linearity.console import quiet
    from rlvr_linearity.tracking import start_tracking
    from rlvr_linearity.paths import resolve_output_dir

    quiet(cfg.verbose)
    module = importlib.import_module(COMMANDS[command][0])
    out = resolve_output_dir(cfg)
    with start_tracking(cfg, command, out) as tracker:
        return module.run(cfg, tracker)


def _guarded(command: str, cfg):
    from omegaconf.errors import OmegaConfBaseException

    from rlvr_linearity.errors import RlvrError, output_error
    from rlvr_linearity.schemas import validate

    try:
        try:
            validate(cfg)
            return run_command(command, cfg)
        except OSError as err:  # a full disk or a permission problem wherever it was met: one line too
            line = output_error(err, known_write=False)
            if line is None:
                raise
            raise line from None
    except (RlvrError, OmegaConfBaseException) as err:
        # Under submitit (hydra/launcher=slurm_*) the exception must propagate: submitit pickles
        # it as the job's result, so the sweep reports which job failed and why.
        if cfg.debug or os.environ.get("SUBMITIT_FOLDER"):
            raise
        _fail(command, err if isinstance(err, RlvrError) else _config_line(err))


def _config_line(err: Exception) -> str:
    """One line from a Hydra/OmegaConf error: its first line, its cause's, and the key."""
    lines = [str(err).strip().splitlines()[0]]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    key = getattr(err, "full_key", None) or getattr(cause, "full_key", None)
    if key and key not in " ".join(lines):
        lines.append(f"key {key}")
    return "; ".join(dict.fromkeys(line.rstrip(".;") for line in lines))


def _fail(command: str, message) -> None:
    print(f"rlvr {command}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"rlvr: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)

    if {"--shell-completion", "-sc"} & set(argv):
        # Hydra's completion script names the program it was generated for (rlvr-<command>),
        # not `rlvr <command>`: it would install and then fail, so it is not offered.
        _fail(command, "shell completion is not supported; `rlvr <command> --help` lists the main keys")

    import hydra
    from hydra.errors import HydraException
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from rlvr_linearity.paths import conf_dir
    from rlvr_linearity.schemas import register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=command)
    def _app(cfg: DictConfig):
        return _guarded(command, cfg)

    _check_run_dir(command, argv)
    sys.argv = [f"rlvr-{command}", *argv]
    # Hydra prints a config it cannot compose (unknown key, wrong type, missing preset) in several
    # lines and exits 1; with HYDRA_FULL_ERROR it raises instead, and rlvr reports one line, exit 2.
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _app()
    except (HydraException, OmegaConfBaseException) as err:
        if full_error == "1" or "debug=true" in argv:
            raise
        _fail(command, _config_line(err))
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _check_run_dir(command: str, argv: list[str]) -> None:
    """Hydra creates the run directory (`output_dir=`, else logs/) before the command runs, and
    reports a failure there as a traceback: check that it can be created first (exit 2, one line)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")]
    out = Path(given[-1]).expanduser() if given and given[-1] and "${" not in given[-1] else Path("logs")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        _fail(command, f"permission denied writing {out}")


def entry() -> None:
    """The `rlvr` console script and `python -m rlvr_linearity`: `main`, with start-up and exit
    trimmed for short commands (tests call `main`, which neither does).

    - The collector's first threshold is raised: imports of torch, numba and matplotlib create
      about a million long-lived objects and no cyclic garbage, and the repeated full
      collections they triggered cost 0.3 s.
    - The interpreter's teardown is skipped: after torch it costs 0.4-0.7 s (module teardown
      and libtorch's static destructors). What teardown would still do is done first: other
      threads joined (and concurrent.futures pools shut) as at normal exit, the atexit handlers
      run (logging's flush, wandb, multiprocessing), the standard streams flushed. The commands
      close and rename their own files before returning.
    """
    gc.set_threshold(100_000, 50, 100)
    try:
        main()
    except SystemExit as err:
        code = err.code
    else:
        code = 0
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # what the interpreter's own exit does first (non-daemon threads)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to save
            pass
    os._exit(code or 0)
