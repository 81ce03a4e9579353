"""User-facing errors: bad input ends a run with one clear line, not a traceback."""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path


class RlvrError(Exception):
    """An error the user can fix (bad input, bad config). Printed as one line; exit code 2."""


class TrajectoryError(RlvrError):
    """A trajectory is missing, incomplete, inconsistent or corrupt."""


class ConfigError(RlvrError):
    """A configuration value is invalid or inconsistent with the data."""


class EvaluationError(RlvrError):
    """A benchmark, responses file or model cannot be evaluated."""


class OutputError(RlvrError):
    """An output cannot be written: disk full, permission denied, another run writing it."""


_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "read-only file system"}


def output_error(exc: BaseException, path=None, known_write: bool = True) -> OutputError | None:
    """The one-line error for a failed write of `path` (or of the file the OSError names), or
    None when `exc` is not a full disk or a permission problem. Also recognised: the failures of
    writers that drop the errno, torch's zip writer ("[enforce fail at inline_container.cc] .
    unexpected pos": a short write) and safetensors' ("os error 28"), when the disk holding
    `path` is then (nearly) full. `known_write=False`: the OSError may come from a read."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        reading = not known_write and exc.errno in (errno.EACCES, errno.EPERM)
        return OutputError(f"{_WRITE_ERRNOS[exc.errno]}{':' if reading else ' writing'} {exc.filename or path}")
    text = str(exc)
    if "os error 28" in text:
        return OutputError(f"no space left on device writing {path}")
    if path is not None and ("inline_container" in text or "PytorchStreamWriter" in text):
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        if usage.free < max(1 << 26, usage.total // 1000):  # under 64 MiB or 0.1 % left
            return OutputError(f"no space left on device writing {path}")
    return None


@contextmanager
def writing(path, known_write: bool = True):
    """Turn a full disk or a permission problem met while writing `path` into one line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        err = output_error(e, path, known_write)
        if err is None:
            raise
        raise err from None


def where(file=None, step=None, tensor=None) -> str:
    """Format the location of a fault the way every error line names it."""
    parts = []
    if file is not None:
        parts.append(f"file {file}")
    if step is not None:
        parts.append(f"step {step}")
    if tensor is not None:
        parts.append(f"tensor {tensor}")
    return ", ".join(parts)
