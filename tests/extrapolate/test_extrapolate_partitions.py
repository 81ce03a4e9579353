"""Tensor-partitioned `rlvr extrapolate` and its merge: sharded models bit for bit the single run's.

The Slurm version is in tests/cli/test_slurm.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose_config, differences, make_trajectory, safetensors_of

from rlvr_linearity.paths import partition_dir

STEPS = (1, 2, 3, 4, 6)


def _cfg(tt, *extra):
    return compose_config("extrapolate", "logger=none", f"trajectory.path={tt.path}", *extra)


def _same_models(a, b, rels):
    for rel in rels:
        x, y = safetensors_of(a / "extrapolate" / rel), safetensors_of(b / "extrapolate" / rel)
        assert set(x) == set(y), rel
        for n in x:
            assert x[n].dtype == y[n].dtype and torch.equal(x[n].view(torch.uint8), y[n].view(torch.uint8)), (rel, n)


def _same_report(a, b):
    ra, rb = (json.loads((d / "extrapolate" / "extrapolation.json").read_text()) for d in (a, b))
    for r, d in ((ra, a), (rb, b)):
        for key in ("timings", "gram_cache_hit", "gram_source"):  # how long, where the Grams came from
            r.pop(key, None)
        for w in r.get("windows", []):
            for t in w["targets"]:
                t["path"] = os.path.relpath(t["path"], d)
        for t in r["targets"] if r["method"] == "weight" else []:
            t["path"] = os.path.relpath(t["path"], d)
    assert differences(ra, rb) == []


@pytest.mark.parametrize("method", [
    ("extrapolate.windows=[2,4]", "extrapolate.targets=[8,10]"),
    ("extrapolate=weight", "extrapolate.second_step=4", "extrapolate.targets=[8]", "extrapolate.dtype=float32"),
], ids=["relex", "weight"])
def test_three_partitions_merge_into_the_single_run(tmp_path, rlvr_cache, method):
    from transformers import AutoModelForCausalLM

    from rlvr_linearity.extrapolate.app import extrapolate
    from rlvr_linearity.extrapolate.partition import merge

    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", dtype=torch.bfloat16, write_json=True)
    single, out = tmp_path / "single", tmp_path / "D"
    res = extrapolate(_cfg(tt, *method), single)
    for i in range(3):
        extrapolate(_cfg(tt, *method, "partition.count=3", f"partition.index={i}"), partition_dir(out, 3, i))
    merged = merge(_cfg(tt, *method, "partition.count=3", "partition.merge=true"), out)
    rels = ["h2/step_8", "h2/step_10", "h4/step_8", "h4/step_10"] if "relex" in str(res["method"]) else ["step_8"]
    _same_models(single, out, rels)
    _same_report(single, out)
    for rel in rels:
        d = out / "extrapolate" / rel
        shards = sorted(p.name for p in d.glob("*.safetensors"))
        assert shards == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
        assert json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].keys() == \
            safetensors_of(single / "extrapolate" / rel).keys()
        part = partition_dir(out, 3, 0) / "extrapolate" / rel / "model.safetensors"
        assert (d / shards[0]).stat().st_ino == part.stat().st_ino  # hard-linked, not copied
    model = AutoModelForCausalLM.from_pretrained(out / "extrapolate" / rels[0])
    ref = AutoModelForCausalLM.from_pretrained(single / "extrapolate" / rels[0])
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), ref.state_dict().values()))
    assert merge(_cfg(tt, *method, "partition.count=3", "partition.merge=true"), out) == merged  # a rerun: nothing


def test_multirun_merges_and_a_missing_partition_is_named(tmp_path, rlvr_cache):
    tt = make_trajectory(tmp_path / "run", steps=STEPS, drift="random", write_json=True)
    env = {**os.environ, "RLVR_CACHE_DIR": str(rlvr_cache)}
    common = [f"trajectory.path={tt.path}", "logger=none", "extrapolate.history=4", "extrapolate.targets=[8]",
              f"output_dir={tmp_path / 'D'}", "partition.count=2"]

    def rlvr(*args):
        return subprocess.run([sys.executable, "-m", "rlvr_linearity", "extrapolate", *args, *common],
                              capture_output=True, text=True, env=env, timeout=600)

    r = rlvr("-m", "partition.index=1", f"hydra.sweep.dir={tmp_path / 's0'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("rlvr extrapolate: error: cannot merge extrapolate: "
                                                        "partition(s) 0 of 2")
    r = rlvr("-m", "partition.index=0", f"hydra.sweep.dir={tmp_path / 's1'}")
    assert r.returncode == 0, r.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "D" / "extrapolate" / "step_8")
    assert list((tmp_path / "D" / "figures").glob("*.png"))  # the merge draws the single run's figures
