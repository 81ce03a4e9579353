"""The `reconstruct` stage (RELEX Finding 1): rank-r reconstructions of trained steps, each rank
its own cached stage, evaluated into results.json `reconstruction` rows whose weight-space
numbers agree with an SVD done here; and the evaluation cache keyed by the model, not the label."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config, make_trajectory
from safetensors.numpy import load_file

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.pipeline.chain import Pipeline, run_chain


def _cfg(tmp_path, tt, *extra):
    return compose_config("pipeline", "logger=none", f"trajectory.path={tt.path}", f"paths.cache_dir={tmp_path / 'cache'}",
                          f"output_dir={tmp_path / 'out'}", "pipeline.stages=[reconstruct,evaluate]",
                          "pipeline.evaluate_steps=[0,2,4]", "pipeline.reconstruct.steps=[2,4]",
                          "pipeline.reconstruct.ranks=[1,2]", "evaluate.max_problems=3", "sampling.max_tokens=4",
                          *extra)


def _svd_rel_l2(tt, step: int, rank: int) -> tuple[float, dict]:
    """‖P_r Δ_s − Δ_s‖ / ‖Δ_s‖ over every tensor, P_r the projection on the top-r right singular
    vectors of the deltas of all steps (numpy SVD), and the reconstructed tensors."""
    res2 = tot2 = 0.0
    recon = {}
    for name in tt.names:
        w0 = tt.values[0][name].numpy().ravel()
        m = np.stack([tt.values[s][name].numpy().ravel() - w0 for s in tt.steps])
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        d = m[tt.steps.index(step)]
        proj = vt[:rank].T @ (vt[:rank] @ d)
        res2 += float(np.sum((proj - d) ** 2))
        tot2 += float(d @ d)
        recon[name] = (w0 + proj).reshape(tt.values[0][name].shape)
    return (res2 / tot2) ** 0.5, recon


def test_reconstruct_stage_rows_keys_and_weights(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3, 4), noise=2e-3, write_json=True)
    res = run_chain(_cfg(tmp_path, tt), tmp_path / "out")
    rows = res["reconstruction"]
    assert sorted((r["step"], r["rank"]) for r in rows) == [(2, 1), (2, 2), (4, 1), (4, 2)]
    for r in rows:
        assert r["history"] is None and 0 <= r["accuracy"] <= 1
        assert r["metrics"]["arithmetic"]["n_problems"] == 3 and r["accuracy"] == r["metrics"]["arithmetic"]["accuracy"]
        want, recon = _svd_rel_l2(tt, r["step"], r["rank"])
        assert r["weight_error"]["rel_l2"] == pytest.approx(want, rel=1e-4)
        got = load_file(f"{r['path']}/model.safetensors")
        for name, w in recon.items():
            np.testing.assert_allclose(got[name], w, atol=2e-6)
    keys = {s["stage"]: s["key"] for s in res["stages"]}
    assert keys["reconstruct_r1"] != keys["reconstruct_r2"]
    assert keys["eval_recon_r1_hall_s4"] != keys["eval_recon_r2_hall_s4"]  # one label per model, one key per model
    err = {(r["step"], r["rank"]): r["weight_error"]["rel_l2"] for r in rows}
    assert all(err[(s, 2)] < err[(s, 1)] for s in (2, 4))  # a higher rank keeps more of each update
    listing = run_chain(_cfg(tmp_path, tt, "pipeline.dry_run=true"), tmp_path / "dry")["dry_run"]
    ran = [(s["stage"], s["key"]) for s in res["stages"] if s["stage"] != "prediction_error"]  # not planned ahead
    assert [(r["stage"], r["key"]) for r in listing] == ran
    assert all(r["cached"] for r in listing)  # a dry run keys every evaluation by its model, as the run did


def test_reconstruct_stage_rejects_an_untrained_step(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2), write_json=True)
    with pytest.raises(ConfigError, match="pipeline.reconstruct.steps"):
        run_chain(_cfg(tmp_path, tt, "pipeline.reconstruct.steps=[3]", "pipeline.reconstruct.ranks=[1]"), tmp_path / "out")
    with pytest.raises(ConfigError, match="pipeline.reconstruct.ranks"):
        compose_config("pipeline", "pipeline.reconstruct.ranks=[0]")


def test_evaluations_are_keyed_by_the_model_not_the_label(tmp_path, monkeypatch):
    """Two models under one label (a rank-1 and a rank-2 reconstruction, say) are two evaluations."""
    import rlvr_linearity.evaluate.app as app

    seen = []

    def fake(cfg, out):
        seen.append(cfg.evaluate.model)
        return {"arithmetic": {"accuracy": 0.1 * len(seen)}}

    monkeypatch.setattr(app, "evaluate", fake)
    cfg = compose_config("pipeline", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    p = Pipeline(cfg, tmp_path / "out")
    a, b = (p.cache.root / "reconstruct-x" / "reconstruct" / f"step_4_rank{r}" for r in (1, 2))
    first, second = p.evaluate_model("same", str(a), "traj"), p.evaluate_model("same", str(b), "traj")
    assert seen == [str(a), str(b)] and first != second
    assert p.evaluate_model("other_label", str(a), "traj") == first and len(seen) == 2  # same model: cached
    assert p.model_identity(str(a)) == "reconstruct-x/reconstruct/step_4_rank1"  # the cache may move
