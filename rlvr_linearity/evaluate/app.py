"""`rlvr evaluate`: thin command entry point; the work lives in plain functions of this package."""

from __future__ import annotations


def run(cfg, tracker):
    raise NotImplementedError("rlvr evaluate is not implemented yet")
