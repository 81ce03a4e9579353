"""RELEX figures from a real extrapolation.json and from accuracy lists."""

from conftest import compose_config, make_trajectory

from rlvr_linearity.extrapolate.app import extrapolate
from rlvr_linearity.figures import extrapolation as fx


def test_relex_figures(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "t", "step", (1, 2, 4, 7), noise=1e-3)
    cfg = compose_config("extrapolate", "logger=none", f"trajectory.path={tt.path}", f"trajectory.base={tt.base}",
                         "extrapolate.windows=[4,7]", "extrapolate.targets=[10,14]")
    res = extrapolate(cfg, tmp_path / "out")
    made = fx.extrapolation_figures(tmp_path / "fig", res)
    assert set(made) == {"relex_explained_variance", "relex_coefficient"}
    assert all(p.stat().st_size > 1000 for p in made.values())
    assert fx.plot_relex_coefficient(res, tmp_path / "fig" / "c", tensor=tt.names[-1], window="h4").exists()
    acc = fx.plot_accuracy_vs_target([{"history": 4, "target": 10, "accuracy": 0.4}, {"history": 4, "target": 14, "accuracy": 0.45},
                                      {"history": 7, "target": 14, "accuracy": 0.5}],
                                     [{"step": s, "accuracy": 0.3 + 0.02 * s} for s in (0, 1, 2, 4, 7)],
                                     tmp_path / "fig" / "acc", base_accuracy=0.3)
    assert acc.exists()
    assert fx.plot_accuracy_vs_target([], [], tmp_path / "fig" / "none") is None
    assert fx.extrapolation_figures(tmp_path / "fig", {"method": "weight"}) == {}
