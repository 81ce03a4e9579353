"""A pipeline on a hub trajectory fetches only the steps its stages read, and says so first:
`stage_steps` on several configs, dry runs against a fake hub shaped like RELEX's 1.5B release
(500 steps of 3.1 GB, sizes from the file listing only), and a real run that downloads exactly
the steps its dry run listed."""

import json
import shutil

import pytest
from huggingface_hub import constants

from conftest import compose_config, make_trajectory
from fake_hf_hub import FakeHfHub, serve
from rlvr_linearity.pipeline.chain import run_chain
from rlvr_linearity.pipeline.fetch import human_bytes, stage_steps, step_ranges, union

PRESET = "experiment=paper/relex_qwen2.5_math_1.5b"
RELEX_REPO = "relex-rlvr/RLVR-Qwen2.5-Math-1.5B"
STEP_BYTES = 3_100_000_000  # one bf16 Qwen2.5-Math-1.5B checkpoint
TINY = "relex-rlvr/RLVR-Tiny"


def test_stage_steps_of_the_relex_preset():
    """Every step for the linearity windows ("all" of 500); RELEX's window 1..75; the evaluated
    steps; the targets the predictions are compared with."""
    reads = stage_steps(compose_config("pipeline", PRESET), range(0, 501))
    evaluated, targets = [75, 100, 200, 300, 400, 500], [100, 200, 300, 400, 500]
    assert reads == {"linearity": list(range(1, 501)), "relex": list(range(1, 76)), "evaluate": evaluated,
                     "prediction_error": targets}
    only = stage_steps(compose_config("pipeline", PRESET, "linearity.max_step=75"), range(0, 501))
    assert only == {**reads, "linearity": list(range(1, 76))}
    assert union(only) == [*range(1, 76), 100, 200, 300, 400, 500]


def test_stage_steps_read_pairs_windows_and_only_what_exists():
    """LIN-like saves every 50 steps: weight and logits pairs, two RELEX windows with `last`,
    evaluated steps of which one was never saved, mechanism over everything; stages not listed
    in pipeline.stages read nothing."""
    available = [0, 50, 100, 150, 200, 250, 300]
    cfg = compose_config("pipeline", "pipeline.stages=[linearity,relex,weight,logits,evaluate]",
                         "linearity.max_step=120", "extrapolate.windows=[150,250]", "extrapolate.last=2",
                         "extrapolate.targets=[300,400]", "pipeline.weight.pairs=[[0,100],[50,150]]",
                         "pipeline.weight.targets=[250]", "pipeline.logits.pairs=[[0,200]]",
                         "pipeline.logits.targets=[300]", "pipeline.evaluate_steps=[0,100,175,300]")
    assert stage_steps(cfg, available) == {
        "linearity": [50, 100], "relex": [100, 150, 200, 250], "weight": [50, 100, 150], "logits": [200],
        "evaluate": [100, 300], "prediction_error": [250, 300]}
    gram_all = compose_config("pipeline", "pipeline.stages=[relex,mechanism]", "extrapolate.history=100",
                              "extrapolate.targets=[200]", "extrapolate.gram_steps=all")
    assert stage_steps(gram_all, available) == {"relex": available[1:], "mechanism": available[1:],
                                                "prediction_error": [200]}
    assert stage_steps(compose_config("pipeline", "pipeline.stages=[linearity]", "linearity.max_step=3"),
                       [0, 1, 2, 3, 4, 5]) == {"linearity": [1, 2, 3]}
    # logits extrapolation runs inside evaluate: without it, no pair is read
    no_eval = compose_config("pipeline", "pipeline.stages=[logits]", "pipeline.logits.pairs=[[0,2]]",
                             "pipeline.logits.targets=[4]")
    assert stage_steps(no_eval, [0, 1, 2, 3, 4]) == {}


def test_stage_steps_of_per_pair_targets_and_linearity_steps():
    """LIN Fig. 5's per-pair targets: each pair's steps, each target compared; linearity.steps is
    what weight R² reads, unless the low-rank analysis (every step) is on."""
    available = list(range(0, 1001, 100))
    per_pair = ("pipeline.weight.per_pair=[{base:0,second:300,targets:[400,600]},{base:100,second:600,"
                "targets:[800]}]")
    cfg = compose_config("pipeline", "pipeline.stages=[linearity,weight,logits,evaluate]", per_pair,
                         "pipeline.logits.per_pair=[{base:0,second:200,targets:[500]}]", "pipeline.evaluate_steps=[]",
                         "linearity.steps=[0,200,300,900]", "linearity.lowrank=false", "linearity.max_step=800")
    assert stage_steps(cfg, available) == {"linearity": [200, 300], "weight": [100, 300, 600], "logits": [200],
                                           "prediction_error": [400, 600, 800]}
    lowrank = compose_config("pipeline", "pipeline.stages=[linearity]", "linearity.steps=[0,200,300]")
    assert stage_steps(lowrank, available) == {"linearity": available[1:]}


def test_plan_formatting():
    assert step_ranges([1, 2, 3, 5, 7, 8, 100]) == "1-3,5,7-8,100"
    assert [human_bytes(n) for n in (5, 80 * STEP_BYTES, 500 * STEP_BYTES, 999.7e9)] == [
        "5 B", "248 GB", "1.55 TB", "1 TB"]


@pytest.fixture
def relex_shaped_hub(tmp_path, monkeypatch):
    """500 revisions step_N whose listing reports 3.1 GB of weights each (the files are stubs: a
    plan reads only the listing)."""
    hub = FakeHfHub(tmp_path / "hub")
    for s in range(1, 501):
        d = hub.revision_dir(RELEX_REPO, f"step_{s}")
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"step": s}))
        (d / "model.safetensors").write_bytes(b"stub %d" % s)
    hub.listed_size["model.safetensors"] = STEP_BYTES
    serve(hub, monkeypatch, tmp_path / "hf-cache")
    yield hub
    hub.close()


def _dry_run(tmp_path, capsys, *overrides):
    cfg = compose_config("pipeline", PRESET, "pipeline.dry_run=true", f"paths.cache_dir={tmp_path / 'cache'}",
                         "logger=none", *overrides)
    res = run_chain(cfg, tmp_path / "out")
    return res, capsys.readouterr().out


def test_dry_run_lists_the_steps_and_their_size_and_downloads_nothing(tmp_path, capsys, relex_shaped_hub):
    res, out = _dry_run(tmp_path, capsys)
    assert "hub relex-rlvr/RLVR-Qwen2.5-Math-1.5B: 500 steps selected" in out
    assert "  linearity         500 steps  1-500" in out and "  relex              75 steps  1-75" in out
    assert "  evaluate            6 steps  75,100,200,300,400,500" in out
    assert "fetch 500 steps, 1.55 TB (0 cached; 1.55 TB to download)" in out
    assert res["fetch"]["bytes"] == 500 * (STEP_BYTES + len(json.dumps({"step": 1}))) + sum(
        len(str(s)) - 1 for s in range(1, 501))  # config.json sizes differ by the digits of the step
    # extrapolation only: the linearity windows cut at the RELEX window
    res, out = _dry_run(tmp_path, capsys, "linearity.max_step=75")
    assert "  linearity          75 steps  1-75" in out
    assert "fetch 80 steps, 248 GB (0 cached; 248 GB to download)" in out
    assert res["fetch"]["steps"] == [*range(1, 76), 100, 200, 300, 400, 500]
    assert relex_shaped_hub.downloads() == [] and relex_shaped_hub.downloads("config.json") == []
    assert not (tmp_path / "hf-cache").exists()  # nothing in the Hugging Face cache, no step linked
    assert not (tmp_path / "cache" / "hub" / RELEX_REPO.replace("/", "--")).exists()
    assert [row["stage"] for row in res["dry_run"]][:2] == ["linearity", "relex"]


@pytest.fixture
def tiny_hub(tmp_path, monkeypatch):
    t = make_trajectory(tmp_path / "src", "step", range(1, 9), noise=1e-4)
    hub = FakeHfHub(tmp_path / "hub")
    for s, d in t.step_dirs.items():
        shutil.copytree(d, hub.revision_dir(TINY, f"step_{s}"))
    serve(hub, monkeypatch, tmp_path / "hf-cache")
    hub.traj = t
    yield hub
    hub.close()


def test_pipeline_fetches_only_the_steps_its_dry_run_listed(tmp_path, capsys, monkeypatch, tiny_hub):
    """linearity ≤ 3, RELEX window 1..2, weight pair (0, 2), evaluation of step 6, predictions at
    4 and 5 compared with the trained ones: steps 1-6 are fetched, 7 and 8 never."""
    overrides = [f"trajectory.hub_repo={TINY}", f"trajectory.base={tiny_hub.traj.base}",
                 f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
                 "pipeline.stages=[linearity,relex,weight,evaluate]", "linearity.max_step=3",
                 "linearity.logprobs=false", "extrapolate.windows=[2]", "extrapolate.targets=[5]",
                 "pipeline.weight.pairs=[[0,2]]", "pipeline.weight.targets=[4]", "pipeline.evaluate_steps=[0,6]",
                 "benchmarks=[arithmetic]", "task.n_test=2", "sampling.max_tokens=2", "engine.device=cpu"]
    dry = run_chain(compose_config("pipeline", *overrides, "pipeline.dry_run=true"), tmp_path / "dry")
    out = capsys.readouterr().out
    assert dry["fetch"]["steps"] == [1, 2, 3, 4, 5, 6] and "fetch 6 steps" in out and "(0 cached;" in out
    assert dry["fetch"]["reads"] == {"linearity": [1, 2, 3], "relex": [1, 2], "weight": [2], "evaluate": [6],
                                     "prediction_error": [4, 5]}
    assert tiny_hub.downloads() == []

    res = run_chain(compose_config("pipeline", *overrides), tmp_path / "run")
    assert tiny_hub.fetched_revisions(TINY) == [f"step_{s}" for s in range(1, 7)]
    links = sorted(p.name for p in (tmp_path / "cache" / "hub" / TINY.replace("/", "--")).iterdir())
    assert links == [f"step_{s}" for s in range(1, 7)]
    assert [r["step"] for r in res["rlvr"]] == [6] and res["linearity"]["median_r2"] is not None
    assert {r["target"]: r["weight_error"] is not None for r in res["relex"] + res["weight_extrapolation"]} == {
        5: True, 4: True}

    # the stages' key is the hub's commits: a dry run after the run finds every stage cached
    tiny_hub.requests.clear()
    again = run_chain(compose_config("pipeline", *overrides, "pipeline.dry_run=true"), tmp_path / "dry2")
    assert all(row["cached"] for row in again["dry_run"]) and again["fetch"]["to_download"] == 0
    assert tiny_hub.downloads() == []
    # offline, the linked steps and the last listing of the branches give the same keys
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    capsys.readouterr()
    offline = run_chain(compose_config("pipeline", *overrides, "pipeline.dry_run=true"), tmp_path / "dry3")
    assert all(row["cached"] for row in offline["dry_run"]) and offline["fetch"]["steps"] == [1, 2, 3, 4, 5, 6]
    assert "fetch 6 steps, size unknown" in capsys.readouterr().out


def test_partitioned_hub_pipeline_fetches_only_the_planned_steps(tmp_path, tiny_hub):
    """partition.count=2: the plan is fetched once before the stages fan out (each file once),
    the partitions open only their stage's steps, and the stages' results are the single run's."""
    overrides = [f"trajectory.hub_repo={TINY}", f"trajectory.base={tiny_hub.traj.base}", "logger=none",
                 "pipeline.stages=[linearity,relex,weight]", "linearity.max_step=3", "linearity.logprobs=false",
                 "extrapolate.windows=[2]", "extrapolate.targets=[5]", "pipeline.weight.pairs=[[0,2]]",
                 "pipeline.weight.targets=[4]"]
    runs = {}
    for count in (2, 1):
        tiny_hub.requests.clear()
        cfg = compose_config("pipeline", *overrides, f"paths.cache_dir={tmp_path / f'cache{count}'}",
                             f"partition.count={count}")
        runs[count] = run_chain(cfg, tmp_path / f"run{count}")
        links = sorted(p.name for p in (tmp_path / f"cache{count}" / "hub" / TINY.replace("/", "--")).iterdir())
        assert links == [f"step_{s}" for s in range(1, 6)]  # 6-8 never
        if count == 2:  # the first run downloads (the second finds the Hugging Face cache)
            assert tiny_hub.fetched_revisions(TINY) == links and len(tiny_hub.downloads()) == 5  # each once
    parts = tmp_path / "run2" / "stages" / "linearity" / "partitions"
    assert sorted(p.name for p in parts.iterdir()) == ["part-0-of-2", "part-1-of-2"]
    assert runs[2]["linearity"]["median_r2"] == runs[1]["linearity"]["median_r2"] is not None
    lin = [json.loads((tmp_path / f"run{c}" / "stages" / "linearity" / "linearity" / "weights_r2.json").read_text())
           for c in (1, 2)]
    assert lin[1]["steps"] == [0, 1, 2, 3] and lin[0]["windows"].keys() == lin[1]["windows"].keys()
    assert [r["weight_error"] for r in runs[2]["relex"] + runs[2]["weight_extrapolation"]] == [
        r["weight_error"] for r in runs[1]["relex"] + runs[1]["weight_extrapolation"]]
