"""RELEX's options of the official code (docs/methods.md §B2) against independent float64
references: numpy's full SVD of the stacked deltas, np.polyfit, explicit autoregression loops."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
from conftest import make_trajectory
from test_extrapolate import assert_close, cfg_for

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.extrapolate import relex
from rlvr_linearity.extrapolate.app import extrapolate

FIB = (1, 2, 3, 5, 8, 13, 21)  # uneven steps


def svd_parts(tt, steps, name, rank):
    """(w0, C = U_r diag(σ), V_rᵀ) of numpy's full SVD of the stacked float64 deltas."""
    w0 = tt.values[0][name].numpy()
    m = np.stack([(tt.values[s][name].numpy() - w0).ravel() for s in steps])
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    k = int(np.sum(s[:rank] > 1e-6 * s[0])) if s[0] > 0 else 0
    return w0, u[:, :k] * s[:k], vt[:k]


def reference(tt, steps, predict, rank=1):
    """W_0 + ĉ V_rᵀ per tensor, ĉ = predict(C) for the window's C."""
    out = {}
    for n in tt.names:
        w0, c, vt = svd_parts(tt, steps, n, rank)
        out[n] = w0 + (predict(c) @ vt).reshape(w0.shape)
    return out


def official_position(c, steps, label, tau, w=None, deg=1):
    """The official formula: polyfit on x = 0..W-1 of the last W rows, evaluated at
    x* = (W-1) + (τ·L - s_last)."""
    w = len(steps) if w is None else w
    x_star = (w - 1) + (tau * label - steps[-1])
    return np.array([np.polyval(np.polyfit(np.arange(w), c[-w:, i], deg), x_star) for i in range(c.shape[1])])


def test_position_axis_and_target_scale_match_the_official_formula(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", FIB, drift="random", noise=1e-3)
    out = tmp_path / "out"
    extrapolate(cfg_for(tt, "extrapolate.history=13", "extrapolate.targets=[10,15]", "extrapolate.axis=position",
                        "extrapolate.target_scale=2", "extrapolate.rank=2", "extrapolate.dtype=float32"), out)
    steps = [1, 2, 3, 5, 8, 13]
    for label in (10, 15):
        ref = reference(tt, steps, lambda c, L=label: official_position(c, steps, L, 2.0), rank=2)
        assert_close(out / "extrapolate" / f"step_{label}", ref)  # the label's name, not τ·L
    saved = json.loads((out / "extrapolate" / "extrapolation.json").read_text())
    t = saved["windows"][0]["targets"]
    assert [(e["target"], e["step"], e["x"]) for e in t] == [(10, 20, 5 + 20 - 13), (15, 30, 5 + 30 - 13)]
    assert saved["parameters"]["axis"] == "position" and saved["parameters"]["target_scale"] == 2.0
    # on uneven steps the position axis is not the step axis: the default gives another prediction
    step_ref = reference(tt, steps, lambda c: np.array([np.polyval(np.polyfit(steps, c[:, i], 1), 20)
                                                         for i in range(c.shape[1])]), rank=2)
    pos_ref = reference(tt, steps, lambda c: official_position(c, steps, 10, 2.0), rank=2)
    assert max(np.abs(step_ref[n] - pos_ref[n]).max() for n in tt.names) > 1e-3


def test_unit_steps_position_equals_step_axis_and_the_paper_index():
    # steps 1..75, τ 2, L 500: x* = 74 + 925 = 999 (§B2), and the step axis at τ·L gives the same line
    tf = relex.temporal_fit(range(1, 76), [500], axis="position", target_scale=2)
    assert tf.x_target[0] == 999 and tf.step_target[0] == 1000
    step = relex.temporal_fit(range(1, 76), [1000])
    assert np.allclose(tf.hat, step.hat, atol=1e-9)


def test_fit_window_and_fit_reconstruct(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", FIB, drift="random", noise=1e-3)
    out = tmp_path / "out"
    steps = list(FIB)
    extrapolate(cfg_for(tt, "extrapolate.targets=[30]", "extrapolate.fit_window=4", "extrapolate.rank=2",
                        "extrapolate.dtype=float32"), out / "w")
    ref = reference(tt, steps, lambda c: np.array([np.polyval(np.polyfit(steps[-4:], c[-4:, i], 1), 30)
                                                    for i in range(c.shape[1])]), rank=2)
    assert_close(out / "w" / "extrapolate" / "step_30", ref)
    extrapolate(cfg_for(tt, "extrapolate.targets=[5,21]", "extrapolate.mode=fit_reconstruct", "extrapolate.fit=polynomial",
                        "extrapolate.fit_window=5", "extrapolate.dtype=float32"), out / "fr")
    for t in (5, 21):
        ref = reference(tt, steps, lambda c, t=t: np.array([np.polyval(np.polyfit(steps[-5:], c[-5:, 0], 2), t)]))
        assert_close(out / "fr" / "extrapolate" / f"step_{t}", ref)


def ar_reference(x, y, n_ahead, every, deg):
    """Autoregression as §B2 describes it, with the fit evaluated where it predicts: each refit is on
    the deque re-indexed 0..W-1, and j steps after it the next value is at index W + j."""
    w = len(y)
    d = deque(y, maxlen=w)
    for k in range(n_ahead):
        if k % every == 0:
            coef = np.polyfit(np.arange(w), np.array(d), deg)
        d.append(np.polyval(coef, w + k % every))
    return d[-1]


@pytest.mark.parametrize("every,deg", [(1, 2), (3, 2), (4, 1)])
def test_autoregressive_window_vs_loop(every, deg):
    rng = np.random.default_rng(every)
    steps = list(FIB)
    m = rng.standard_normal((7, 30)) + np.outer(np.sqrt(steps), rng.standard_normal(30))
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    c = u[:, :1] * s[:1]
    fit = "linear" if deg == 1 else "polynomial"
    for axis, x, ahead in (("position", np.arange(5.0), 9), ("step", np.array(steps[-5:], float), 9)):
        tf = relex.temporal_fit(steps, [30], fit=fit, degree=deg, axis=axis, fit_window=5, ar_window=every)
        got = relex.relex_weights(m @ m.T, steps, None, 1, temporal=tf).weights @ m
        if axis == "position":
            chat = ar_reference(x, c[-5:, 0], ahead, every, deg)
        else:  # on steps (8, 13, 21, ...) the deque's spacing is uneven: explicit absolute x
            xs, ys = deque(x, maxlen=5), deque(c[-5:, 0], maxlen=5)
            for k in range(ahead):
                if k % every == 0:
                    coef = np.polyfit(np.array(xs), np.array(ys), deg)
                xs.append(xs[-1] + 1)
                ys.append(np.polyval(coef, xs[-1]))
            chat = ys[-1]
        assert np.allclose(got, chat * vt[0], atol=1e-8), (axis, every, deg)


def test_sin_fft_recovers_a_sinusoidal_coefficient():
    rng = np.random.default_rng(3)
    steps = list(range(1, 17))
    a, f, phi, c0 = 2.0, 2 / 16, 0.3, 0.5
    coef = lambda x: a * np.sin(2 * np.pi * f * x + phi) + c0  # noqa: E731
    v = rng.standard_normal(25)
    m = np.outer(coef(np.arange(16.0)), v)  # rank 1: Δ_t = c(position) v
    tf = relex.temporal_fit(steps, [20, 23], fit="sin_fft", axis="position")
    got = relex.relex_weights(m @ m.T, steps, None, 1, temporal=tf).weights @ m
    assert np.allclose(got, np.outer(coef(np.array([19.0, 22.0])), v), atol=1e-6)
    c = coef(np.arange(16.0))[:, None]  # the sign an SVD happens to return does not matter
    assert np.allclose(tf.predict(-c), -tf.predict(c), atol=1e-9)
    # through the autoregression (F = 2) the fitted sinusoid carries on
    tf = relex.temporal_fit(steps, [20], fit="sin_fft", axis="position", ar_window=2)
    got = relex.relex_weights(m @ m.T, steps, None, 1, temporal=tf).weights @ m
    assert np.allclose(got, np.outer(coef(np.array([19.0])), v), atol=1e-5)


def test_sin_fft_end_to_end(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", range(1, 9), drift="random", noise=1e-3)
    out = tmp_path / "out"
    extrapolate(cfg_for(tt, "extrapolate.targets=[12]", "extrapolate.fit=sin_fft", "extrapolate.dtype=float32"), out)
    steps = list(range(1, 9))

    def predict(c):  # an independent least-squares sinusoid (several starts, the best kept)
        from scipy.optimize import least_squares

        y = c[:, 0]
        x = np.asarray(steps, float) - 1
        best = min((least_squares(lambda p: p[0] * np.sin(2 * np.pi * p[1] * x + p[2]) + p[3] - y,
                                  [y.std(), f, ph, y.mean()]) for f in (0.05, 0.1, 0.2, 0.3) for ph in (0, 1.5, 3, 4.5)),
                   key=lambda r: r.cost)
        p = best.x
        return np.array([p[0] * np.sin(2 * np.pi * p[1] * 11 + p[2]) + p[3]])

    got = json.loads((out / "extrapolate" / "extrapolation.json").read_text())
    assert got["parameters"]["fit"] == "sin_fft"
    # the prediction is the rank-1 reconstruction at ĉ: compare ĉ's residual optimum rather than
    # the (possibly different) local optimum's weights, tensor by tensor
    for n in tt.names:
        w0, c, vt = svd_parts(tt, steps, n, 1)
        pred = np.asarray(got["windows"][0]["predicted_coefficients"][n])[0, 0]
        sign = np.sign(np.asarray(got["windows"][0]["coefficients"][n])[0, 0] * c[0, 0])
        ref = predict(c)[0]
        assert abs(sign * pred - ref) <= 0.05 * np.abs(c).max() + 1e-12, n


@pytest.mark.parametrize("overrides,needle", [
    (["extrapolate.targets=[3]", "extrapolate.target_scale=2"], "(step 6) is not beyond"),
    (["extrapolate.targets=[5]", "extrapolate.mode=fit_reconstruct", "extrapolate.target_scale=2"], "step 10"),
    (["extrapolate.targets=[20]", "extrapolate.fit_window=9"], "fit_window=9"),
    (["extrapolate.targets=[20]", "extrapolate.fit=sin_fft", "extrapolate.fit_window=3"], "at least 4"),
    (["extrapolate.targets=[5]", "extrapolate.mode=reconstruct", "extrapolate.ar_window=1"], "do not apply"),
    (["extrapolate.targets=[9]", "extrapolate.target_scale=1.5", "extrapolate.ar_window=1"], "whole number"),
])
def test_option_errors(tmp_path, rlvr_cache, overrides, needle):
    tt = make_trajectory(tmp_path / "t", "step", (1, 2, 4, 7, 8, 12))
    with pytest.raises(ConfigError) as e:
        extrapolate(cfg_for(tt, *overrides), tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value)
