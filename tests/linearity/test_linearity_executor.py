"""The weight-space executor on a plan mixing every kind of tensor plan, against float64 numpy
combinations of the stored values: copies, exact (float64) and fused (float32) combinations over
any base step, and Gram-dependent weights formed from the same read (kept or read again)."""

import numpy as np
import pytest
import torch
from conftest import make_trajectory
from safetensors.torch import load_file

from rlvr_linearity.linearity import gram
from rlvr_linearity.linearity.executor import execute
from rlvr_linearity.linearity.plan import Combine, Copy, FromGram, Plan
from rlvr_linearity.trajectory import open_trajectory

STEPS = (1, 2, 4, 7)


def _gram_weights(name, g):
    """Weights that depend on the Gram (its normalised first column), for two outputs."""
    col = g[:, 0] / max(g[0, 0], 1e-30)
    return np.stack([col, -0.5 * col])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("memory_budget", [10**8, 0])
def test_mixed_plan_matches_float64(tmp_path, dtype, memory_budget):
    tt = make_trajectory(tmp_path / "t", "checkpoint", STEPS, dtype=dtype, drift="random")
    traj = open_trajectory(path=tt.path, base=tt.base)
    names = list(traj.base.tensor_names)
    kinds = {}
    for i, name in enumerate(names):
        kinds[name] = [Copy(2),
                       Combine(1, (4, 7), np.array([[2.0, -0.25], [0.5, 1.5]]), exact=True),
                       Combine(0, (1, 2, 4, 7), np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, -1.0, 2.0]])),
                       FromGram((1, 4, 7), _gram_weights)][i % 4]
    outs = [tmp_path / "out" / "a", tmp_path / "out" / "b"]
    before = gram.bytes_read()
    execute(traj, Plan(outs, kinds, label="test"), max_elements=40, memory_budget=memory_budget)
    got = [load_file(str(o / "model.safetensors")) for o in outs]
    val = {s: {n: tt.values[s][n].numpy() for n in names} for s in (0, *STEPS)}
    for name, p in kinds.items():
        if isinstance(p, Copy):
            for g in got:
                assert torch.equal(g[name], tt.values[p.step][name].to(dtype))
            continue
        if isinstance(p, FromGram):
            d = np.stack([(val[s][name] - val[0][name]).ravel() for s in p.steps])
            p = Combine(0, p.steps, _gram_weights(name, d @ d.T))
        d = np.stack([(val[s][name] - val[p.base][name]).ravel() for s in p.steps])
        for k, g in enumerate(got):
            ref = val[p.base][name].ravel() + p.weights[k] @ d
            err = np.abs(g[name].double().numpy().ravel() - ref).max() / max(np.abs(ref).max(), 1e-30)
            assert err < (1e-2 if dtype == torch.bfloat16 else 1e-6), (name, k, err)  # output rounding
    item = torch.tensor([], dtype=dtype).element_size()
    per_step = {n: traj.base.numel(n) * item for n in names}
    want = 0
    for name, p in kinds.items():
        if isinstance(p, Combine):
            want += per_step[name] * (len(p.steps) + 1)
        elif isinstance(p, FromGram):  # one read when kept, else the Gram pass and a second read
            want += per_step[name] * (len(p.steps) + 1) * (1 if memory_budget else 2)
    assert gram.bytes_read() - before == want
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]
