"""Trajectory I/O: discovery of step checkpoints in every layout, validated streaming reads in
stored precision, hub trajectories, and the atomic streaming ModelWriter (docs/architecture.md)."""

from .core import Trajectory
from .load import open_trajectory
from .files import ModelFiles
from .writer import ModelWriter

__all__ = ["ModelFiles", "ModelWriter", "Trajectory", "open_trajectory"]
