"""User-facing errors: bad input ends a run with one clear line, not a traceback."""

from __future__ import annotations


class RlvrError(Exception):
    """An error the user can fix (bad input, bad config). Printed as one line; exit code 2."""


class TrajectoryError(RlvrError):
    """A trajectory is missing, incomplete, inconsistent or corrupt."""


class ConfigError(RlvrError):
    """A configuration value is invalid or inconsistent with the data."""


class EvaluationError(RlvrError):
    """A benchmark, responses file or model cannot be evaluated."""


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
