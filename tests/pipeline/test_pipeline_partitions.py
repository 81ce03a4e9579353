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


def test_a_sweep_downloads_a_hub_trajectory_once_before_its_partitions(tmp_path, monkeypatch):
    """The sweep's callback opens the hub trajectory before the partition jobs fan out (one
    download into the shared cache); the jobs then download nothing; the sweep's end merges."""
    import shutil

    from huggingface_hub import constants

    from fake_hf_hub import FakeHfHub
    from rlvr_linearity.config import derive
    from rlvr_linearity.linearity.partition import run_partition
    from rlvr_linearity.paths import partition_dir
    from rlvr_linearity.pipeline.partitions import MergePartitions

    repo = "relex-rlvr/RLVR-Tiny"
    t = make_trajectory(tmp_path / "src", "step", [1, 2, 3], drift="random")
    hub = FakeHfHub(tmp_path / "hub")
    try:
        for s, d in t.step_dirs.items():
            shutil.copytree(d, hub.revision_dir(repo, f"step_{s}"))
        shutil.copytree(t.base, hub.revision_dir("Qwen/Tiny-Base", "main"))
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        out = tmp_path / "D"
        cfg = compose_config("linearity", "logger=none", f"trajectory.hub_repo={repo}", "trajectory.base=Qwen/Tiny-Base",
                             f"paths.cache_dir={tmp_path / 'cache'}", f"output_dir={out}", "partition.count=2")
        callback = MergePartitions()
        callback.on_multirun_start(cfg)
        assert len(hub.downloads()) == 4  # base and 3 steps, once
        hub.requests.clear()
        for i in range(2):
            run_partition(derive(cfg, **{"partition.index": i}), partition_dir(out, 2, i))
        assert not hub.downloads()
        callback.on_multirun_end(cfg)
        assert json.loads((out / "linearity" / "weights_r2.json").read_text())["steps"] == [0, 1, 2, 3]
    finally:
        hub.close()
