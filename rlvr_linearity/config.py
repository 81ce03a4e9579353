"""Config helpers every layer may use (no project imports above `errors`)."""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import OmegaConf, open_dict


def derive(cfg, **dotted: Any):
    """A copy of `cfg` with dotted keys replaced (`derive(cfg, **{"trajectory.path": p})`)."""
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for key, value in dotted.items():
            OmegaConf.update(new, key, value, merge=False, force_add=True)
    return new


def section(cfg, key: str) -> Any:
    """A resolved plain-Python copy of one config section (what a stage key is made of)."""
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
