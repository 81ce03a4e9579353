"""Low-rank structure of a trajectory from per-tensor Gram matrices (RELEX findings 1 and 2).

For a tensor with deltas Δ_s = W_s - W_0 (rows of M, one per observed step, uncentred), the
Gram matrix G = M Mᵀ [T, T] holds everything needed: its eigenvalues are the squared singular
values of M, a prefix window's Gram is its leading block, and the projection of any delta onto
the window's top-r right singular subspace is a weighted sum of the window's deltas. So nothing
of size steps x parameters is ever formed.
"""

from __future__ import annotations

import numpy as np


REL_CUTOFF = 1e-6  # components with σ_i <= REL_CUTOFF·σ₁ carry no signal


def eigh_desc(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix."""
    vals, vecs = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    order = np.argsort(vals)[::-1]
    return np.clip(vals[order], 0.0, None), vecs[:, order]


def kept_rank(sigma: np.ndarray, rank: int) -> int:
    """How many of the top `rank` components (singular values `sigma`, descending) carry signal."""
    return int(np.sum(sigma[: int(rank)] > REL_CUTOFF * sigma[0])) if sigma[0] > 0 else 0


def explained_variance(gram: np.ndarray, ranks) -> dict[int, float]:
    """Uncentred energy fraction of the top-r singular values of M: Σ_{i<=r} σ_i² / Σ σ_i².

    NaN when the tensor never moved (trace 0).
    """
    vals, _ = eigh_desc(gram)
    total = float(np.trace(gram))
    cum = np.cumsum(vals)
    return {int(r): (float(min(cum[min(int(r), len(vals)) - 1] / total, 1.0)) if total > 0 else float("nan"))
            for r in ranks}


def linear_fit(x, y) -> tuple[float, float, float]:
    """OLS line y ~ a + b x -> (slope b, intercept a, R²); R² NaN when y is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    b = float(xc @ yc) / sxx
    a = float(y.mean() - b * x.mean())
    r2 = float(min(max((xc @ yc) ** 2 / (sxx * syy), 0.0), 1.0)) if syy > 0 else float("nan")
    return b, a, r2


def rank1_coefficients(gram: np.ndarray, n_history: int) -> np.ndarray:
    """c_t = Δ_t · v₁ for every step t, with v₁ the top right singular vector of the first
    `n_history` rows of M (c = σ₁u₁ on those rows; later rows are projections, out of sample).

    Sign fixed so that the last coefficient is positive (for plots). Zeros if nothing moved.
    """
    g = np.asarray(gram, dtype=np.float64)
    vals, vecs = eigh_desc(g[:n_history, :n_history])
    if vals[0] <= 0:
        return np.zeros(len(g))
    u, sigma = vecs[:, 0], np.sqrt(vals[0])
    c = g[:, :n_history] @ u / sigma
    return -c if c[-1] < 0 else c


def coefficient_linearity(gram: np.ndarray, steps, history: int | None) -> dict:
    """RELEX finding 2: are the rank-1 coefficients linear in the step?

    `steps`: the observed steps (rows of the Gram, base excluded). The direction comes from the
    steps <= history (all if None); the line is fitted on them (R² in sample) and scored on the
    later steps: 1 - SS_res / SS_tot with SS_tot around the later coefficients' own mean.
    """
    steps = np.asarray(steps, dtype=np.float64)
    n_hist = len(steps) if history is None else int(np.sum(steps <= history))
    c = rank1_coefficients(gram, n_hist)
    out = {"steps": steps.tolist(), "coefficients": c.tolist(), "n_history": n_hist,
           "slope": None, "intercept": None, "r2_in_sample": None, "r2_out_of_sample": None}
    if n_hist < 2 or not np.any(c):
        return out
    b, a, r2 = linear_fit(steps[:n_hist], c[:n_hist])
    out.update(slope=b, intercept=a, r2_in_sample=r2)
    fut_x, fut_c = steps[n_hist:], c[n_hist:]
    if len(fut_c) >= 2:
        ss_res = float(np.sum((fut_c - (a + b * fut_x)) ** 2))
        ss_tot = float(np.sum((fut_c - fut_c.mean()) ** 2))
        out["r2_out_of_sample"] = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    return out


def projection_weights(gram: np.ndarray, n_window: int, target, rank: int) -> np.ndarray:
    """Weights w [n_window] with Σ_t w_t Δ_t = projection of Δ_target onto the top-`rank` right
    singular subspace of the window's rows (M_w): V_r V_rᵀ Δ = M_wᵀ U_r Λ_r⁻¹ U_rᵀ (M_w Δ).
    `target` a list of rows: [len(target), n_window] from one eigendecomposition (an eigh per
    target costs more than the whole write of a small model).
    RELEX's `mode=reconstruct` is the case of a target inside the window (same subspace, same
    cut-off), written there through the window's coefficients."""
    g = np.asarray(gram, dtype=np.float64)
    cols = g[:n_window, target]  # [n_window] or [n_window, targets]
    vals, vecs = eigh_desc(g[:n_window, :n_window])
    r = kept_rank(np.sqrt(vals), rank)
    if r == 0:
        return np.zeros(cols.shape[::-1])
    u = vecs[:, :r]
    w = u @ ((u.T @ cols) / (vals[:r] if cols.ndim == 1 else vals[:r, None]))
    return w if cols.ndim == 1 else w.T


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    out = {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
           "min": float(v.min()), "max": float(v.max())}
    for t in (0.9, 0.95, 0.99):
        out[f"count_ge_{t:g}"] = int(np.sum(v >= t))
    return out


def lowrank_report(grams: dict[str, np.ndarray], steps, windows, ranks, coefficient_history=None) -> dict:
    """The `lowrank.json` content from per-tensor Grams over `steps` (observed steps, base excluded).

    Per window (steps <= T): explained variance of each rank per tensor, summary statistics over
    tensors, and the same for the whole model (the sum of the Grams is the Gram of the
    concatenated deltas). Rank-1 coefficients and their linearity per tensor (direction from the
    steps <= coefficient_history, out-of-sample R² on the later steps).
    """
    steps = [int(s) for s in steps]
    ranks = [int(r) for r in ranks]
    total = sum(grams.values()) if grams else np.zeros((len(steps), len(steps)))
    out = {"steps": steps, "ranks": ranks, "windows": {}}
    for w in windows or ["all"]:
        label = "all" if w is None or str(w).lower() == "all" else str(int(w))
        n = len(steps) if label == "all" else sum(1 for s in steps if s <= int(w))
        per = {name: explained_variance(g[:n, :n], ranks) for name, g in grams.items()}
        out["windows"][label] = {
            "steps": steps[:n],
            "model": {str(r): v for r, v in explained_variance(total[:n, :n], ranks).items()},
            "summary": {str(r): _stats(p[r] for p in per.values()) for r in ranks},
            "per_tensor": {name: {str(r): v for r, v in p.items()} for name, p in per.items()},
        }
    coef = {name: coefficient_linearity(g, steps, coefficient_history) for name, g in grams.items()}
    out["coefficients"] = {
        "history": coefficient_history,
        "model": coefficient_linearity(total, steps, coefficient_history),
        "summary": {k: _stats(c[k] for c in coef.values()) for k in ("r2_in_sample", "r2_out_of_sample")},
        "per_tensor": coef,
    }
    largest = max(out["windows"].values(), key=lambda w: len(w["steps"]))
    out["summary"] = {"rank1_ev": largest["summary"].get("1"), "model_ev": largest["model"],
                      "coefficient_r2_in_sample": out["coefficients"]["summary"]["r2_in_sample"],
                      "coefficient_r2_out_of_sample": out["coefficients"]["summary"]["r2_out_of_sample"]}
    return out
