"""RELEX (arXiv 2605.21468): rank-r SVD of each tensor's deltas over an observed window, each
temporal coefficient fitted on STEP VALUES and evaluated at the target steps.

Maths (per tensor; M [T, d] has rows Δ_t = W_t − W_0 for the window's steps, uncentred):
eigh of the window's Gram G = M Mᵀ gives U, λ; σ_i = sqrt(max(λ_i, 0)), components with
σ_i <= 1e-6·σ₁ dropped, C = U_r diag(σ) (the coefficients, = M V_r). A fit of each column of C
on the window's steps predicts ĉ at a target, and Δ̂ = ĉᵀ V_rᵀ with V_r = Mᵀ U_r diag(1/σ), so
Δ̂ = Σ_t w_t Δ_t with w = U_r diag(1/σ) ĉ: every prediction is a weighted sum of the observed
deltas, and V is never formed. The fit is linear in the coefficients (ĉ = C ᵀh for a "hat"
vector h of the fit), so w = U_r diag(1/σ) diag(σ) U_rᵀ h = U_r U_rᵀ h.

Driver (`run_relex`): the union of all windows' steps is streamed once, read ahead in a
background thread into a ring of reused buffers, as stored; the Gram products and the
predictions run on every core in fused kernels (`gram.gram_update`, `gram.predict_update`).
When a tensor's blocks fit in `memory_budget` bytes they stay in the ring from that read, so
its Gram, weights and every output come from one read; bigger tensors are read a second time
for the outputs (or once, when the Gram cache already holds them).
Outputs go through ModelWriter, block by block (all targets of all windows open at once; no
output tensor is ever whole in memory).
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.trajectory.core import PREFETCH_RING, by_tensor, prefetch, rows_per_block, tensor_stream

log = logging.getLogger(__name__)

REL_CUTOFF = 1e-6  # components with σ_i <= REL_CUTOFF·σ₁ carry no signal


# ---------------------------------------------------------------------------- pure maths
def eigh_desc(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues clipped at 0 (descending) and eigenvectors of a symmetric PSD matrix."""
    vals, vecs = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    order = np.argsort(vals)[::-1]
    return np.clip(vals[order], 0.0, None), vecs[:, order]


def fit_hat(x, targets, fit: str = "linear", degree: int = 2) -> np.ndarray:
    """H [len(targets), T] with ŷ(target) = H @ y for the fit of y against step values x.

    linear: OLS line with a free intercept; polynomial: least squares of the given degree
    (on centred/scaled x for conditioning). Needs more points than parameters."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if fit == "linear":
        deg = 1
    elif fit == "polynomial":
        deg = int(degree)
        if deg < 0:
            raise ConfigError(f"extrapolate.degree={degree}: must be >= 0")
    else:
        raise ConfigError(f"extrapolate.fit={fit!r}: expected linear or polynomial")
    if len(x) < deg + 1:
        raise ConfigError(f"extrapolate.fit={fit} (degree {deg}) needs at least {deg + 1} observed steps, "
                          f"the window has {len(x)} ({x.astype(int).tolist()})")
    mu, scale = x.mean(), max(float(np.ptp(x)), 1.0)
    vx = np.vander((x - mu) / scale, deg + 1)
    vt = np.vander((t - mu) / scale, deg + 1)
    return vt @ np.linalg.pinv(vx)


@dataclass
class TensorFit:
    """One tensor's decomposition over one window: what extrapolation.json reports."""

    sigma: np.ndarray            # all singular values (descending)
    rank: int                    # components kept
    explained_variance: float | None  # Σ_{i<=rank} σ² / Σ σ² (None: tensor never moved)
    weights: np.ndarray          # [n_targets, T]: Δ̂_target = Σ_t w_t Δ_t
    coefficients: np.ndarray = field(repr=False)  # C [T, rank]
    predicted: np.ndarray = field(repr=False)     # ĉ [n_targets, rank]


def relex_weights(gram: np.ndarray, steps, targets, rank: int = 1, fit: str = "linear", degree: int = 2,
                  mode: str = "extrapolate") -> TensorFit:
    """Weights of the observed deltas for each target (see the module docstring).

    mode "reconstruct": the target must be a window step; ĉ is its own coefficient (the rank-r
    projection of the actual delta)."""
    steps = [int(s) for s in steps]
    vals, vecs = eigh_desc(gram)
    sigma = np.sqrt(vals)
    n = len(steps)
    keep = int(np.sum(sigma[: int(rank)] > REL_CUTOFF * sigma[0])) if sigma[0] > 0 else 0
    total = float(vals.sum())
    ev = float(min(vals[:keep].sum() / total, 1.0)) if total > 0 else None
    if mode == "reconstruct":
        h = np.zeros((len(targets), n))
        for i, t in enumerate(targets):
            h[i, steps.index(int(t))] = 1.0
    else:
        h = fit_hat(steps, targets, fit, degree)
    u = vecs[:, :keep]
    c = u * sigma[:keep]                       # C = U_r diag(σ)
    c_hat = h @ c                              # [n_targets, r]
    w = (c_hat / sigma[:keep]) @ u.T if keep else np.zeros((len(targets), n))
    return TensorFit(sigma=sigma, rank=keep, explained_variance=ev, weights=w, coefficients=c, predicted=c_hat)


# ---------------------------------------------------------------------------- windows
@dataclass
class Window:
    label: str                   # "h<T>" for histories, "w<first>-<last>" otherwise
    steps: list[int]             # observed steps (no 0)
    history: int | None = None


def select_windows(available: list[int], *, history=None, window=None, last=None, windows=None) -> list[Window]:
    """The observation windows asked for by extrapolate.history / window / last / windows.

    `available`: the trajectory's saved steps (without 0). `last=W` keeps the last W steps of
    each history (of all steps when no history is given)."""
    avail = sorted(int(s) for s in available if int(s) != 0)
    if window is not None and (history is not None or windows or last is not None):
        raise ConfigError("extrapolate.window: give explicit steps OR history/windows/last, not both")
    if history is not None and windows:
        raise ConfigError("extrapolate.history and extrapolate.windows both set: use one")
    if window is not None:
        steps = [int(s) for s in window]
        if len(set(steps)) != len(steps):
            raise ConfigError(f"extrapolate.window={steps}: duplicate steps")
        if any(s <= 0 for s in steps):
            raise ConfigError(f"extrapolate.window={steps}: steps must be > 0 (step 0 is the base)")
        missing = [s for s in steps if s not in avail]
        if missing:
            raise ConfigError(f"extrapolate.window: step(s) {missing} not in the trajectory (saved: {avail})")
        steps = sorted(steps)
        return [Window(f"w{steps[0]}-{steps[-1]}", steps)]
    hists = [int(h) for h in windows] if windows else ([int(history)] if history is not None else [None])
    if len(set(hists)) != len(hists):
        raise ConfigError(f"extrapolate.windows={hists}: duplicate histories")
    out = []
    for h in hists:
        if h is None:
            steps = list(avail)
        else:
            if not avail or h > avail[-1]:
                raise ConfigError(f"extrapolate.history={h}: larger than the trajectory, whose last saved step "
                                  f"is {avail[-1] if avail else None}")
            steps = [s for s in avail if s <= h]
            if not steps:
                raise ConfigError(f"extrapolate.history={h}: no saved step <= {h} (saved: {avail})")
        if last is not None:
            if int(last) < 1 or int(last) > len(steps):
                raise ConfigError(f"extrapolate.last={last}: the window has only {len(steps)} saved steps {steps}")
            steps = steps[-int(last):]
        label = f"h{h}" if h is not None else f"w{steps[0]}-{steps[-1]}"
        out.append(Window(label, steps, h))
    return out


def check_targets(windows: list[Window], targets, mode: str, rank: int, fit: str = "linear", degree: int = 2
                  ) -> list[int]:
    """Validate targets, rank, mode and fit against every window before anything is written."""
    targets = [int(t) for t in targets]
    if not targets:
        raise ConfigError("extrapolate.targets is empty: give the target steps, e.g. extrapolate.targets=[500]")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"extrapolate.targets={targets}: duplicate targets")
    if int(rank) < 1:
        raise ConfigError(f"extrapolate.rank={rank}: must be >= 1")
    if mode not in ("extrapolate", "reconstruct"):
        raise ConfigError(f"extrapolate.mode={mode!r}: expected extrapolate or reconstruct")
    for w in windows:
        if int(rank) > len(w.steps):
            raise ConfigError(f"extrapolate.rank={rank} exceeds the window {w.label} size {len(w.steps)} "
                              f"(steps {w.steps})")
        for t in targets:
            if mode == "extrapolate" and t <= w.steps[-1]:
                raise ConfigError(f"extrapolate.targets: target {t} is not beyond the window {w.label} "
                                  f"(last observed step {w.steps[-1]}); use mode=reconstruct for observed steps")
            if mode == "reconstruct" and t not in w.steps:
                raise ConfigError(f"extrapolate.targets: reconstruct target {t} is not an observed step of the "
                                  f"window {w.label} {w.steps}")
        if mode == "extrapolate":
            fit_hat(w.steps, targets, fit, degree)
    return targets


# ---------------------------------------------------------------------------- driver
def output_dirs(root: Path, windows: list[Window], targets: list[int]) -> dict[tuple[str, int], Path]:
    """DIR/extrapolate/step_<t>/ for one window; DIR/extrapolate/<label>/step_<t>/ for several."""
    if len(windows) == 1:
        return {(windows[0].label, t): root / f"step_{t}" for t in targets}
    return {(w.label, t): root / w.label / f"step_{t}" for w in windows for t in targets}


def _block_count(shape, steps: int, max_elements: int) -> int:
    """How many blocks `iter_blocks` cuts a tensor of `shape` into for `steps` steps."""
    rows = shape[0] if shape else 1
    return -(-rows // rows_per_block(shape, steps, max_elements))


def run_relex(traj, windows: list[Window], targets: list[int], out_root: Path, *, rank: int = 1,
              fit: str = "linear", degree: int = 2, mode: str = "extrapolate", dtype=None, cache_dir=None,
              memory_budget: int = 1 << 28, max_elements: int = 1 << 22, gram_steps=None) -> dict:
    """Write every (window, target) prediction; return extrapolation.json's content (without the
    top-level method/parameters, which the app adds). `gram_steps` (a superset of the windows'
    steps): take the Grams from the cache's entry over those steps, computing it first if absent,
    so the jobs of a sweep share one Gram pass."""
    from tqdm import tqdm

    from rlvr_linearity.linearity.gram import (GramCache, check_finite_gram, compute_grams, gram_update,
                                               predict_update, read_blocks)
    from rlvr_linearity.trajectory import ModelWriter
    from rlvr_linearity.trajectory.core import torch_threads

    t0 = time.perf_counter()
    targets = check_targets(windows, targets, mode, rank, fit, degree)
    union = sorted({s for w in windows for s in w.steps})
    pos = {s: i for i, s in enumerate(union)}
    rows = {w.label: np.asarray([pos[s] for s in w.steps]) for w in windows}
    base = traj.base
    names = list(base.tensor_names)
    floating = [n for n in names if base.dtype(n).is_floating_point]

    cache = GramCache(cache_dir, traj.fingerprint()) if cache_dir is not None else None
    cached = cache.lookup(union, floating) if cache is not None else None
    gram_source = "cache" if cached is not None else "window"
    if cached is None and cache is not None and gram_steps is not None:
        gram_source = "shared pass"
        compute_grams(traj, sorted(set(gram_steps) | set(union)), cache_dir=cache_dir, names=floating,
                      max_elements=max_elements)
        cached = cache.lookup(union, floating)
    grams: dict[str, np.ndarray] = {}
    fits: dict[str, dict[str, TensorFit]] = {w.label: {} for w in windows}
    dirs = output_dirs(Path(out_root), windows, targets)
    t_read = 0.0
    with ExitStack() as stack:
        stack.enter_context(torch_threads(1))  # memory-bound block arithmetic: no OpenMP spinning
        writers = {k: stack.enter_context(ModelWriter(d, template=base, dtype=dtype)) for k, d in dirs.items()}
        for name in names:  # not streamed: copied from the base
            if name not in floating:
                value = base.read(name)
                for wr in writers.values():
                    wr.write(name, value)

        def keep(name: str) -> bool:  # its blocks, as stored, fit the budget
            item = traj.block_dtype(name, [0, *union]).itemsize
            return cached is None and (len(union) + 1) * base.numel(name) * item <= memory_budget

        # the Gram pass reads ahead in a background thread; a tensor read twice (too big to keep, or
        # its Gram cached) is read once here, after its weights are known
        first = [] if cached is not None else floating
        # every block lands in the reader's ring of reused buffers (no page faults on fresh memory),
        # large enough that a kept tensor's blocks survive while the next two blocks are read ahead
        ring = PREFETCH_RING + max([_block_count(base.shape(n), len(union) + 1, max_elements)
                                    for n in floating if keep(n)], default=0)

        def read(name):  # NaN/Inf: found in this run's Gram (check_finite_gram), else by the reader
            return read_blocks(traj, name, [0, *union], max_elements, reuse=ring,
                               check_finite=None if cached is not None else False)

        blocks = stack.enter_context(closing(prefetch(tensor_stream(first, read))))
        predicted = torch.empty(0, dtype=torch.float32)  # grown to the largest block's predictions
        groups = by_tensor(blocks)
        for name in tqdm(floating, desc="RELEX", unit="tensor", leave=False):
            numel = base.numel(name)
            kept = []
            if cached is not None:
                g = cached[name]
            else:
                g = np.zeros((len(union), len(union)))
                ts = time.perf_counter()
                _, group = next(groups)
                for start, _, block in group:
                    gram_update(g, block)
                    if keep(name):
                        kept.append((start, block))
                t_read += time.perf_counter() - ts
                check_finite_gram(traj, name, [0, *union], g)
            grams[name] = g
            # weights of every (window, target) over the union's deltas: [K, U]
            keys, wmat = [], []
            for w in windows:
                r = rows[w.label]
                tf = relex_weights(g[np.ix_(r, r)], w.steps, targets, rank, fit, degree, mode)
                fits[w.label][name] = tf
                full = np.zeros((len(targets), len(union)))
                full[:, r] = tf.weights
                keys += [(w.label, t) for t in targets]
                wmat.append(full)
            wt = torch.from_numpy(np.concatenate(wmat)).to(torch.float32)
            if numel == 0:  # no rows, no blocks
                for k in keys:
                    writers[k].write(name, base.read(name))
            with closing(prefetch(tensor_stream([] if kept else [name], read))) as again:
                for start, block in kept or ((start, b) for _, grp in by_tensor(again) for start, _, b in grp):
                    columns = block[0].numel()
                    if predicted.numel() < len(keys) * columns:
                        predicted = torch.empty(len(keys) * columns, dtype=torch.float32)
                    pred = predict_update(block, wt, predicted)
                    for k, p in zip(keys, pred):  # block by block: no output tensor is ever whole in memory
                        writers[k].write_rows(name, start, p)
            del kept
        t_write = time.perf_counter()
    if cache is not None and cached is None:
        cache.store(union, grams)
    t_end = time.perf_counter()

    report_windows = []
    for w in windows:
        f = fits[w.label]
        evs = [tf.explained_variance for tf in f.values() if tf.explained_variance is not None]
        report_windows.append({
            "label": w.label, "history": w.history, "steps": w.steps,
            "targets": [{"target": t, "path": str(dirs[(w.label, t)]),
                         "weights": {n: f[n].weights[i].tolist() for n in f}} for i, t in enumerate(targets)],
            "explained_variance": {n: tf.explained_variance for n, tf in f.items()},
            "explained_variance_summary": _summary(evs),
            "rank_kept": {n: tf.rank for n, tf in f.items()},
            "singular_values": {n: tf.sigma.tolist() for n, tf in f.items()},
            "coefficients": {n: tf.coefficients.tolist() for n, tf in f.items()},
            "predicted_coefficients": {n: tf.predicted.tolist() for n, tf in f.items()},
        })
    return {"steps_read": union, "windows": report_windows, "gram_cache_hit": gram_source == "cache",
            "gram_source": gram_source,
            "timings": {"total_s": t_end - t0, "read_gram_s": t_read, "write_s": t_end - t_write}}


def _summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max()), **{f"count_ge_{t:g}": int(np.sum(v >= t)) for t in (0.9, 0.95, 0.99)}}
