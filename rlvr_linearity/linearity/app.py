"""`rlvr linearity`: thin command entry point; the work lives in plain functions of this package."""

from __future__ import annotations


def run(cfg, tracker):
    raise NotImplementedError("rlvr linearity is not implemented yet")
