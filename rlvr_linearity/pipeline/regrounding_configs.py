"""The (M, N) configurations of `rlvr pipeline experiment=regrounding`: `regrounding.{M,N,iterations}`
and the `regrounding.compare` entries, validated and completed (α, real and virtual step budgets)
before anything runs."""

from __future__ import annotations

from omegaconf import OmegaConf

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.train.regrounding import DATA_MODES, OPTIMIZER_MODES, alpha


def configurations(cfg) -> list[dict]:
    """The (M, N) configurations: `regrounding.{M,N,iterations}` first, then `regrounding.compare`
    entries ({M, N, iterations?, optimizer?, data?, label?}; iterations default to the same real
    step budget, M·iterations of the first)."""
    rg = cfg.regrounding
    first = {"M": int(rg.M), "N": int(rg.N), "iterations": int(rg.iterations)}
    budget = first["M"] * first["iterations"]
    out = []
    for i, c in enumerate([first, *[OmegaConf.to_container(c, resolve=True) if OmegaConf.is_config(c) else c
                                      for c in rg.compare]]):
        if not isinstance(c, dict) or "M" not in c or "N" not in c:
            raise ConfigError(f"regrounding.compare[{i - 1}]: expected {{M: int, N: int, iterations?: int}}, got {c!r}")
        unknown = set(c) - {"M", "N", "iterations", "optimizer", "data", "label"}
        if unknown:
            raise ConfigError(f"regrounding.compare[{i - 1}]: unknown keys {sorted(unknown)}")
        M, N = int(c["M"]), int(c["N"])
        alpha(M, N)  # validates
        iters = int(c.get("iterations") or -(-budget // M))
        opt, data = str(c.get("optimizer") or rg.optimizer), str(c.get("data") or rg.data)
        if iters < 1:
            raise ConfigError(f"regrounding: iterations must be >= 1 (got {iters} for M={M}, N={N})")
        if opt not in OPTIMIZER_MODES:
            raise ConfigError(f"regrounding.optimizer={opt!r}: use one of {list(OPTIMIZER_MODES)}")
        if data not in DATA_MODES:
            raise ConfigError(f"regrounding.data={data!r}: use one of {list(DATA_MODES)}")
        label = str(c.get("label") or f"({M},{N})")
        out.append({"M": M, "N": N, "iterations": iters, "optimizer": opt, "data": data, "label": label,
                    "alpha": alpha(M, N), "real_steps": M * iters, "virtual_steps": (M + N) * iters})
    labels = [c["label"] for c in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"regrounding: configurations need distinct labels, got {labels} (set `label`)")
    return out
