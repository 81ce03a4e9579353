"""`rlvr pipeline ... partition.count=N`: the linearity, relex and weight stages run as tensor
partitions and merge into the same outputs (docs/scaling.md#in-the-pipeline)."""

import json
from pathlib import Path

import torch
from conftest import compose_config, differences, make_trajectory, safetensors_of

from rlvr_linearity.pipeline.app import run_pipeline


def test_partitioned_stages_equal_the_single_ones(tmp_path):
    tt = make_trajectory(tmp_path / "t", "checkpoint", (1, 2, 3, 4, 6), drift="random", write_json=True)
    runs = {}
    for count in (1, 3):
        cfg = compose_config("pipeline", "logger=none", f"trajectory.path={tt.path}",
                             f"paths.cache_dir={tmp_path / f'cache{count}'}", f"output_dir={tmp_path / f'out{count}'}",
                             "pipeline.stages=[linearity,relex,weight]", "extrapolate.windows=[2,3]",
                             "extrapolate.targets=[8]", "pipeline.weight.pairs=[[0,2]]", "pipeline.weight.targets=[4]",
                             f"partition.count={count}")
        runs[count] = run_pipeline(cfg, tmp_path / f"out{count}")
    one, three = runs[1], runs[3]
    assert [s["key"] for s in one["stages"]] == [s["key"] for s in three["stages"]]  # same stages, same keys
    assert differences(one["linearity"]["median_r2"], three["linearity"]["median_r2"]) == []
    lin = [json.loads((tmp_path / f"out{c}" / "stages" / "linearity" / "linearity" / "weights_r2.json").read_text())
           for c in (1, 3)]
    assert differences(*lin) == []
    assert (tmp_path / "out3" / "stages" / "linearity" / "partitions" / "part-2-of-3").is_dir()
    for a, b in zip(one["relex"] + one["weight_extrapolation"], three["relex"] + three["weight_extrapolation"]):
        x, y = safetensors_of(a["path"]), safetensors_of(b["path"])
        assert set(x) == set(y) and all(torch.equal(x[n], y[n]) for n in x)
        assert len(list(Path(b["path"]).glob("model-*-of-00003.safetensors"))) == 3
