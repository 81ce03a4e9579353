"""RELEX (arXiv 2605.21468): rank-r SVD of each tensor's deltas over an observed window, each
temporal coefficient fitted on STEP VALUES and evaluated at the target steps.

Maths (per tensor; M [T, d] has rows Δ_t = W_t − W_0 for the window's steps, uncentred):
eigh of the window's Gram G = M Mᵀ gives U, λ; σ_i = sqrt(max(λ_i, 0)), components with
σ_i <= 1e-6·σ₁ dropped, C = U_r diag(σ) (the coefficients, = M V_r). A fit of each column of C
on the window's steps predicts ĉ at a target, and Δ̂ = ĉᵀ V_rᵀ with V_r = Mᵀ U_r diag(1/σ), so
Δ̂ = Σ_t w_t Δ_t with w = U_r diag(1/σ) ĉ: every prediction is a weighted sum of the observed
deltas, and V is never formed. The fit is linear in the coefficients (ĉ = C ᵀh for a "hat"
vector h of the fit), so w = U_r diag(1/σ) diag(σ) U_rᵀ h = U_r U_rᵀ h.

Options of the official code (docs/methods.md §B2), all off by default: `axis="position"` fits on
the 0-based position in the fit window and places label L at x* = (W−1) + (τ·L − s_last);
`target_scale` τ predicts label L at step τ·L; `fit_window` W fits the last W rows of C (the SVD
still covers the whole window); `ar_window` F extrapolates autoregressively, one step at a time,
refitting every F steps (evaluated where it should be: the official code's F > 1 is constant
between refits); `fit="sin_fft"` is not linear in C, so ĉ is fitted per tensor and w = U_r diag(1/σ) ĉ.

Method (`Relex`, run by `run_relex`): per tensor, the weights of every (window, target) over
the union of the windows' steps, from the tensor's Gram (cached, or formed by the executor from
the outputs' own read: one read per tensor when its blocks fit in `memory_budget` bytes);
`linearity.executor` streams the blocks as stored and writes every output block by block.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.linearity.lowrank import eigh_desc, kept_rank
from rlvr_linearity.linearity.plan import Combine, Copy, FromGram, Plan

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- pure maths
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


def _sin(x, a, f, phi, c0):
    return a * np.sin(2 * np.pi * f * x + phi) + c0


def sin_fft_fit(x, y) -> np.ndarray:
    """(A, f, φ, C₀) of y ≈ A·sin(2πf·x + φ) + C₀ (§B2's sin_fft), x taken from its first point.

    Started at A = 3·std/√2, f = the dominant non-DC rfft frequency (the mean spacing as the sample
    spacing), φ = 0, C₀ = mean; the initial guess stands when curve_fit fails, as in the official code."""
    from scipy.optimize import curve_fit

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    spacing = (x[-1] - x[0]) / (len(x) - 1)
    spectrum = np.abs(np.fft.rfft(y - y.mean()))
    f0 = np.fft.rfftfreq(len(y), d=spacing)[1 + int(np.argmax(spectrum[1:]))]
    p0 = np.array([3 * y.std() / np.sqrt(2), f0, 0.0, y.mean()])
    try:
        p, _ = curve_fit(_sin, x - x[0], y, p0=p0, maxfev=10_000)
    except (RuntimeError, ValueError):
        log.debug("sin_fft: curve_fit failed, keeping the initial guess %s", p0)
        return p0
    return p if np.all(np.isfinite(p)) else p0


def _sin_predict(x, y, xq) -> np.ndarray:
    """sin_fft's prediction at xq for each column of y [n, k]; each column is fitted with its
    largest-magnitude value positive, so an SVD's arbitrary sign cannot change the local optimum."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    xq = np.asarray(xq, dtype=np.float64)
    out = np.empty((xq.size, y.shape[1]))
    for j in range(y.shape[1]):
        sign = 1.0 if y[np.argmax(np.abs(y[:, j])), j] >= 0 else -1.0
        out[:, j] = sign * _sin(xq - x[0], *sin_fft_fit(x, sign * y[:, j]))
    return out


def _autoregress(x, y, ahead: list[int], every: int, predict) -> np.ndarray:
    """Values [len(ahead), k] `ahead` steps past the last of (x, y [W, k]), predicted one step at a
    time: each prediction joins the last W points, and the model is refitted on them every `every`
    steps (in between, the last fit is evaluated at the new step, not at the old one)."""
    xs, ys = deque(np.asarray(x, dtype=np.float64), maxlen=len(x)), deque(np.asarray(y), maxlen=len(x))
    out, fx, fy = {}, None, None
    for k in range(max(ahead)):
        if k % every == 0:
            fx, fy = np.array(xs), np.array(ys)
        xq = xs[-1] + 1.0
        yq = predict(fx, fy, xq)
        xs.append(xq)
        ys.append(yq)
        out[k + 1] = yq
    return np.stack([out[n] for n in ahead])


@dataclass
class TemporalFit:
    """How one window's coefficients C [T, r] become ĉ at its targets (§B2): the fit's coordinates
    of the last W rows and of each target; for fits linear in C (linear, polynomial, reconstruct)
    the hat matrix, built once per window and shared by every tensor."""

    x: np.ndarray                 # fit coordinates of the window's last W steps
    x_target: np.ndarray          # x* per target
    step_target: np.ndarray       # the step each target label stands for (τ·L)
    fit: str
    ar_window: int | None
    hat: np.ndarray | None        # [n_targets, T]: ĉ = hat @ C (None: sin_fft)

    def predict(self, c: np.ndarray) -> np.ndarray:
        """ĉ [n_targets, r] from C [T, r]."""
        if self.hat is not None:
            return self.hat @ c
        if c.shape[1] == 0:  # a tensor that never moved
            return np.zeros((len(self.x_target), 0))
        rows = c[len(c) - len(self.x):]
        if not self.ar_window:
            return _sin_predict(self.x, rows, self.x_target)
        ahead = [int(round(n)) for n in self.x_target - self.x[-1]]
        return _autoregress(self.x, rows, ahead, self.ar_window, lambda fx, fy, xq: _sin_predict(fx, fy, [xq])[0])


def _as_int(v: float):
    return int(v) if float(v).is_integer() else float(v)


def temporal_fit(steps, targets, *, fit: str = "linear", degree: int = 2, mode: str = "extrapolate",
                 axis: str = "step", target_scale: float = 1.0, fit_window: int | None = None,
                 ar_window: int | None = None) -> TemporalFit:
    """The window's TemporalFit; a ConfigError names the first option the window cannot take."""
    steps = [int(s) for s in steps]
    n = len(steps)
    step_target = np.asarray(targets, dtype=np.float64) * target_scale
    if axis not in ("step", "position"):
        raise ConfigError(f"extrapolate.axis={axis!r}: expected step or position")
    if fit_window is not None and not 1 <= int(fit_window) <= n:
        raise ConfigError(f"extrapolate.fit_window={fit_window}: the window has {n} saved steps {steps}")
    if mode == "reconstruct" and (fit_window is not None or ar_window is not None):
        raise ConfigError("extrapolate.mode=reconstruct fits nothing: fit_window and ar_window do not apply")
    w = n if fit_window is None else int(fit_window)
    fit_steps = np.asarray(steps[n - w:], dtype=np.float64)
    if axis == "step":
        x, x_target = fit_steps, step_target
    else:
        x, x_target = np.arange(w, dtype=np.float64), (w - 1) + (step_target - steps[-1])
    if mode in ("reconstruct", "fit_reconstruct"):
        for label, t in zip(targets, step_target):
            if t not in steps:
                shown = f"{label}" if target_scale == 1 else f"{label} (step {_as_int(t)})"
                raise ConfigError(f"extrapolate.targets: {mode} target {shown} is not an observed step of the "
                                  f"window {steps}")
    if mode == "reconstruct":
        hat = np.zeros((len(step_target), n))
        for i, t in enumerate(step_target):
            hat[i, steps.index(int(t))] = 1.0
        return TemporalFit(x, x_target, step_target, fit, None, hat)
    if ar_window is not None:
        if mode != "extrapolate":
            raise ConfigError(f"extrapolate.ar_window={ar_window}: autoregression is for mode=extrapolate")
        if int(ar_window) < 1:
            raise ConfigError(f"extrapolate.ar_window={ar_window}: must be >= 1 (or null: fit once)")
        for label, t in zip(targets, step_target):
            if not float(t - steps[-1]).is_integer():
                raise ConfigError(f"extrapolate.ar_window: target {label} stands for step {_as_int(t)}, not a whole "
                                  f"number of steps past the window's last step {steps[-1]}")
    if fit == "sin_fft":
        if w < 4:
            raise ConfigError(f"extrapolate.fit=sin_fft needs at least 4 fitted steps (4 parameters), "
                              f"the fit window has {w} ({fit_steps.astype(int).tolist()})")
        return TemporalFit(x, x_target, step_target, fit, ar_window, None)
    if ar_window is None:
        hat = fit_hat(x, x_target, fit, degree)
    else:  # linear in C: the autoregression run on the identity gives the hat rows
        fit_hat(x, x_target[:1], fit, degree)  # the degree's check, with its message
        ahead = [int(round(t)) for t in x_target - x[-1]]
        hat = _autoregress(x, np.eye(w), ahead, int(ar_window),
                           lambda fx, fy, xq: fit_hat(fx, [xq], fit, degree)[0] @ fy)
    if w < n:
        hat = np.concatenate([np.zeros((len(step_target), n - w)), hat], axis=1)
    return TemporalFit(x, x_target, step_target, fit, ar_window, hat)


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
                  mode: str = "extrapolate", temporal: TemporalFit | None = None) -> TensorFit:
    """Weights of the observed deltas for each target (see the module docstring).

    mode "reconstruct": the target must be a window step; ĉ is its own coefficient (the rank-r
    projection of the actual delta); "fit_reconstruct" (an oracle): the fit's value there.
    `temporal` (the window's, with the §B2 options) replaces steps/targets/fit/degree/mode."""
    if temporal is None:
        temporal = temporal_fit(steps, targets, fit=fit, degree=degree, mode=mode)
    vals, vecs = eigh_desc(gram)
    sigma = np.sqrt(vals)
    n = len(steps)
    keep = kept_rank(sigma, rank)
    total = float(vals.sum())
    ev = float(min(vals[:keep].sum() / total, 1.0)) if total > 0 else None
    u = vecs[:, :keep]
    c = u * sigma[:keep]                       # C = U_r diag(σ)
    c_hat = temporal.predict(c)                # [n_targets, r]
    w = (c_hat / sigma[:keep]) @ u.T if keep else np.zeros((len(temporal.x_target), n))
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


def check_targets(windows: list[Window], targets, mode: str, rank: int, fit: str = "linear", degree: int = 2, *,
                  axis: str = "step", target_scale: float = 1.0, fit_window: int | None = None,
                  ar_window: int | None = None) -> dict[str, TemporalFit]:
    """Validate targets, rank, mode, fit and the §B2 options against every window before anything
    is written; return each window's TemporalFit."""
    targets = [int(t) for t in targets]
    if not targets:
        raise ConfigError("extrapolate.targets is empty: give the target steps, e.g. extrapolate.targets=[500]")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"extrapolate.targets={targets}: duplicate targets")
    if int(rank) < 1:
        raise ConfigError(f"extrapolate.rank={rank}: must be >= 1")
    if mode not in MODES:
        raise ConfigError(f"extrapolate.mode={mode!r}: expected one of {', '.join(MODES)}")
    if fit not in FITS:
        raise ConfigError(f"extrapolate.fit={fit!r}: expected one of {', '.join(FITS)}")
    scale = float(target_scale)
    if not scale > 0:
        raise ConfigError(f"extrapolate.target_scale={target_scale}: must be > 0")
    fits = {}
    for w in windows:
        if int(rank) > len(w.steps):
            raise ConfigError(f"extrapolate.rank={rank} exceeds the window {w.label} size {len(w.steps)} "
                              f"(steps {w.steps})")
        for t in targets:
            if mode == "extrapolate" and t * scale <= w.steps[-1]:
                stands = "" if scale == 1 else f" (step {_as_int(t * scale)})"
                raise ConfigError(f"extrapolate.targets: target {t}{stands} is not beyond the window {w.label} "
                                  f"(last observed step {w.steps[-1]}); use mode=reconstruct for observed steps")
        fits[w.label] = temporal_fit(w.steps, targets, fit=fit, degree=degree, mode=mode, axis=axis,
                                     target_scale=scale, fit_window=fit_window, ar_window=ar_window)
    return fits


# ---------------------------------------------------------------------------- method
def output_dirs(root: Path, windows: list[Window], targets: list[int]) -> dict[tuple[str, int], Path]:
    """DIR/extrapolate/step_<t>/ for one window; DIR/extrapolate/<label>/step_<t>/ for several."""
    if len(windows) == 1:
        return {(windows[0].label, t): root / f"step_{t}" for t in targets}
    return {(w.label, t): root / w.label / f"step_{t}" for w in windows for t in targets}


MODES = ("extrapolate", "reconstruct", "fit_reconstruct")
FITS = ("linear", "polynomial", "sin_fft")


class Relex:
    """RELEX as a weight-space method: every (window, target) prediction, per tensor a weighted sum
    of the deltas over the union of the windows' steps, weights from the tensor's Gram.

    `plan(traj)` takes the Grams from the cache (`cache_dir`; with `gram_steps`, a superset of
    the windows' steps, the cache's entry over those steps, computed first if absent, so the jobs
    of a sweep share one Gram pass) or has the executor form them from the outputs' own read."""

    def __init__(self, windows: list[Window], targets, out_root: Path, *, rank: int = 1, fit: str = "linear",
                 degree: int = 2, mode: str = "extrapolate", dtype=None, cache_dir=None, gram_steps=None,
                 max_elements: int = 1 << 22, names: list[str] | None = None, **options):
        self.temporal = check_targets(windows, targets, mode, rank, fit, degree, **options)
        self.targets = [int(t) for t in targets]
        self.windows, self.rank, self.fit, self.degree, self.mode = windows, rank, fit, degree, mode
        self.dtype, self.cache_dir, self.gram_steps, self.max_elements = dtype, cache_dir, gram_steps, max_elements
        self.names = names  # a partition job's share of the tensors (None: all)
        self.union = sorted({s for w in windows for s in w.steps})
        pos = {s: i for i, s in enumerate(self.union)}
        self.rows = {w.label: np.asarray([pos[s] for s in w.steps]) for w in windows}
        self.dirs = output_dirs(Path(out_root), windows, self.targets)
        self.grams: dict[str, np.ndarray] = {}
        self.fits: dict[str, dict[str, TensorFit]] = {w.label: {} for w in windows}
        self.cache = self.cached = None
        self.gram_source = "window"

    def plan(self, traj) -> Plan:
        from rlvr_linearity.linearity.gram import GramCache, compute_grams

        base = traj.base
        names = list(base.tensor_names if self.names is None else self.names)
        floating = [n for n in names if base.dtype(n).is_floating_point]
        if self.cache_dir is not None:
            self.cache = GramCache(self.cache_dir, traj.fingerprint())
            self.cached = self.cache.lookup(self.union, floating)
            self.gram_source = "cache" if self.cached is not None else "window"
            if self.cached is None and self.gram_steps is not None:
                self.gram_source = "shared pass"
                compute_grams(traj, sorted(set(self.gram_steps) | set(self.union)), cache_dir=self.cache_dir,
                              names=floating, max_elements=self.max_elements)
                self.cached = self.cache.lookup(self.union, floating)
        steps = tuple(self.union)
        tensors = {}
        for name in names:  # non-floating tensors: copied from the base
            if name not in floating:
                tensors[name] = Copy(0)
            elif self.cached is not None:
                tensors[name] = Combine(0, steps, self.weights(name, self.cached[name]))
            else:
                tensors[name] = FromGram(steps, self.weights)
        # NaN/Inf: FromGram tensors are checked on their Gram's diagonal (check_finite_gram); Combine
        # tensors, whose Grams came from the cache, by the reader: a cache hit proves nothing of the
        # weights read now (an in-place edit the fingerprint did not see)
        return Plan(list(self.dirs.values()), tensors, self.dtype, check_finite=None, label="RELEX")

    def weights(self, name: str, g: np.ndarray) -> np.ndarray:
        """[outputs, union] weights of every (window, target) over the union's deltas, from the
        tensor's Gram over the union; the fits are kept for the report."""
        self.grams[name] = g
        wmat = []
        for w in self.windows:
            r = self.rows[w.label]
            tf = relex_weights(g[np.ix_(r, r)], w.steps, self.targets, self.rank, temporal=self.temporal[w.label])
            self.fits[w.label][name] = tf
            full = np.zeros((len(self.targets), len(self.union)))
            full[:, r] = tf.weights
            wmat.append(full)
        return np.concatenate(wmat)

    def store_grams(self) -> None:
        """Computed Grams go to the cache (after the outputs: a failed run caches nothing)."""
        if self.cache is not None and self.cached is None:
            self.cache.store(self.union, self.grams)

    def report(self, timings: dict) -> dict:
        """extrapolation.json's content (without the top-level method/parameters)."""
        windows = []
        for w in self.windows:
            f = self.fits[w.label]
            evs = [tf.explained_variance for tf in f.values() if tf.explained_variance is not None]
            windows.append({
                "label": w.label, "history": w.history, "steps": w.steps,
                "targets": [{"target": t, "step": _as_int(self.temporal[w.label].step_target[i]),
                             "x": float(self.temporal[w.label].x_target[i]), "path": str(self.dirs[(w.label, t)]),
                             "weights": {n: f[n].weights[i].tolist() for n in f}} for i, t in enumerate(self.targets)],
                "explained_variance": {n: tf.explained_variance for n, tf in f.items()},
                "explained_variance_summary": ev_summary(evs),
                "rank_kept": {n: tf.rank for n, tf in f.items()},
                "singular_values": {n: tf.sigma.tolist() for n, tf in f.items()},
                "coefficients": {n: tf.coefficients.tolist() for n, tf in f.items()},
                "predicted_coefficients": {n: tf.predicted.tolist() for n, tf in f.items()},
            })
        return {"steps_read": self.union, "windows": windows, "gram_cache_hit": self.gram_source == "cache",
                "gram_source": self.gram_source, "timings": timings}


def run_relex(traj, windows: list[Window], targets: list[int], out_root: Path, *, rank: int = 1,
              fit: str = "linear", degree: int = 2, mode: str = "extrapolate", dtype=None, cache_dir=None,
              memory_budget: int = 1 << 28, max_elements: int = 1 << 22, gram_steps=None, names=None,
              **options) -> dict:
    """Write every (window, target) prediction (`Relex`, through the executor); return
    extrapolation.json's content (without the top-level method/parameters, which the app adds).
    `options`: temporal_fit's §B2 options (axis, target_scale, fit_window, ar_window); `names`:
    only these tensors (a partition job's share; its outputs hold only them)."""
    from rlvr_linearity.linearity.executor import execute

    t0 = time.perf_counter()
    method = Relex(windows, targets, out_root, rank=rank, fit=fit, degree=degree, mode=mode, dtype=dtype,
                   cache_dir=cache_dir, gram_steps=gram_steps, max_elements=max_elements, names=names, **options)
    done = execute(traj, method.plan(traj), max_elements=max_elements, memory_budget=memory_budget)
    t_store = time.perf_counter()
    method.store_grams()
    t_end = time.perf_counter()
    return method.report({"total_s": t_end - t0, "read_gram_s": done["gram_s"],
                          "write_s": done["write_s"] + t_end - t_store})


def ev_summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max()), **{f"count_ge_{t:g}": int(np.sum(v >= t)) for t in (0.9, 0.95, 0.99)}}
