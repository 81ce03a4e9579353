"""GPU paths, for a machine with CUDA (`pytest -m gpu`; skipped elsewhere): the torch reductions
of weight R² on `linearity.device=cuda` against the same on CPU, and the logits-extrapolation
engine on `device=cuda` reproducing each model's own greedy `generate` at α = 0 and 1."""

import pytest
import torch
from conftest import greedy_generate, make_trajectory

from rlvr_linearity.evaluate.engines.logits import LogitsExtrapolationEngine
from rlvr_linearity.linearity.weights import weight_linearity
from rlvr_linearity.trajectory import open_trajectory

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = ["Compute 1 + 2.", "Compute 13 - 4 and box it.", "7 * 3 ="]


def test_weight_r2_on_cuda_equals_cpu(tmp_path):
    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 4, 7), dtype=torch.bfloat16, drift="random")
    traj = open_trajectory(path=tt.path, base=tt.base)
    cpu = weight_linearity(traj, windows=[4, "all"], engine="torch", progress=False)
    gpu = weight_linearity(traj, windows=[4, "all"], engine="torch", device="cuda", progress=False)
    for label, a in cpu["windows"].items():
        b = gpu["windows"][label]
        assert a["n_defined"] == b["n_defined"] and a["frac_above"] == b["frac_above"]
        assert abs(a["mean"] - b["mean"]) < 1e-9 and abs(a["median"] - b["median"]) < 1e-9


def test_partitions_on_cuda_merge_into_the_single_cuda_run(tmp_path):
    """`linearity.device=cuda` partition jobs (each on its node's GPU) saved, loaded and merged:
    the single cuda run's weights_r2.json (means to float rounding)."""
    from conftest import differences

    from rlvr_linearity.linearity.weights import WeightState, weight_pass, weights_result
    from rlvr_linearity.partitions import assign, tensor_bytes

    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 4, 7), dtype=torch.bfloat16, drift="random")
    traj = open_trajectory(path=tt.path, base=tt.base)
    run = dict(windows=[4, "all"], engine="torch", device="cuda", progress=False)
    single = weight_linearity(traj, **run)
    for i, names in enumerate(assign(tensor_bytes(traj.base), 3)):
        weight_pass(traj, names=names, scope=traj.tensor_names, **run).save(tmp_path / f"{i}.npz")
    merged = WeightState.merge([WeightState.load(tmp_path / f"{i}.npz") for i in range(3)], traj.tensor_names)
    assert differences(single, weights_result(merged)) == []


@pytest.mark.parametrize("alpha,which", [(0.0, 0), (1.0, 1)])
def test_logits_extrapolation_on_cuda_reproduces_models(tiny_model_dir, alpha, which):
    pair = str(tiny_model_dir(seed=1)), str(tiny_model_dir(seed=2))
    eng = LogitsExtrapolationEngine(*pair, alpha, device="cuda", dtype="auto", batch_size=4, compact_at=None)
    got = [s[0] for s in eng.generate_ids(PROMPTS, {"n": 1, "temperature": 0.0, "max_tokens": 8})]
    assert got == greedy_generate(pair[which], PROMPTS, 8, next(iter(eng.eos)), device="cuda")
