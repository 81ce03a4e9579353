"""LIN's procedure as options and as a preset: R² over a chosen step subset, `*.weight` tensors only,
the unique-value filter on bf16 values (each against an independent float64 numpy reference),
the LIN preset's per-pair Fig. 5 targets in a dry run, and probe sampling reaching the generator."""

import json

import numpy as np
import pytest
import torch
from conftest import compose_config, make_trajectory

from rlvr_linearity.errors import ConfigError

SAVED = (1, 2, 3, 5, 7, 8, 12)
SUBSET = [0, 2, 3, 7, 12]  # gaps between steps; 1, 5 and 8 are left out
LIN_PRESET = "experiment=paper/lin_deepscaler_r1_distill_1.5b"


def bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float64 by bit arithmetic (round to nearest, ties to even): numpy only."""
    u = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def reference(tt, steps, *, weights_only: bool, unique_dtype: str, min_unique: int, min_abs_change: float) -> dict:
    """Per-tensor R² of the weights LIN's filters keep, float64, from the stored values."""
    x = np.asarray(steps, float)
    out = {}
    for n in tt.names:
        if weights_only and not n.endswith(".weight"):
            continue
        y = np.stack([tt.values[s][n].numpy().ravel() for s in steps])  # stored values, float64
        u = bf16_round(y) if unique_dtype == "bfloat16" else y
        r2 = [np.corrcoef(x, y[:, j])[0, 1] ** 2 for j in range(y.shape[1])
              if np.ptp(y[:, j]) > min_abs_change and len(np.unique(u[:, j])) >= min_unique]
        out[n] = np.asarray(r2)
    return out


@pytest.fixture(scope="module")
def fp32_walk(tmp_path_factory):
    """An fp32 random walk whose steps often differ below bf16 resolution (bf16 counts fewer values)."""
    return make_trajectory(tmp_path_factory.mktemp("walk") / "run", steps=SAVED, dtype=torch.float32,
                           drift="random", scale=2e-4, write_json=True)


@pytest.mark.parametrize("tensors,unique_dtype,steps", [
    ("all", "stored", None), ("weights_only", "stored", SUBSET), ("all", "bfloat16", SUBSET),
    ("weights_only", "bfloat16", SUBSET)])
def test_lin_options_match_numpy_reference(tmp_path, rlvr_cache, fp32_walk, tensors, unique_dtype, steps):
    from rlvr_linearity.linearity.app import analyse

    tt = fp32_walk
    over = [] if steps is None else [f"linearity.steps=[{','.join(map(str, steps[1:]))}]"]  # 0 always counts
    cfg = compose_config("linearity", "logger=none", f"trajectory.path={tt.path}", "linearity.lowrank=false",
                         f"linearity.tensors={tensors}", f"linearity.unique_filter_dtype={unique_dtype}",
                         "linearity.min_unique=4", "linearity.min_abs_change=1e-5", *over)
    summary = analyse(cfg, tmp_path / "out")
    res = json.loads((tmp_path / "out" / "linearity" / "weights_r2.json").read_text())
    used = [0, *SAVED] if steps is None else steps
    assert res["steps"] == used and summary["r2_steps"] == used and summary["steps"] == [0, *SAVED]
    ref = reference(tt, used, weights_only=tensors == "weights_only", unique_dtype=unique_dtype,
                    min_unique=4, min_abs_change=1e-5)
    assert sorted(r["name"] for r in res["per_tensor"]) == sorted(ref)
    assert any(".bias" in n for n in tt.names) and any(tt.values[0][n].dim() == 1 for n in ref)  # biases, 1-D norms
    allv = np.concatenate(list(ref.values()))
    assert res["n_defined"] == allv.size > 0
    assert res["n_weights"] == sum(tt.values[0][n].numel() for n in ref)
    assert abs(res["mean"] - allv.mean()) < 1e-9 and abs(res["median"] - np.median(allv)) < 1e-9
    for row in res["per_tensor"]:
        assert row["n_defined"] == ref[row["name"]].size
        if ref[row["name"]].size:
            assert abs(row["mean"] - ref[row["name"]].mean()) < 1e-9
    assert (res["filters"]["tensors"], res["filters"]["unique_filter_dtype"]) == (tensors, unique_dtype)


def test_bf16_filter_keeps_fewer_weights_than_stored(fp32_walk):
    """The walk exercises the bf16 option: rounding merges values, so fewer weights reach 4 distinct."""
    kw = dict(weights_only=False, min_unique=4, min_abs_change=1e-5)
    stored = reference(fp32_walk, SUBSET, unique_dtype="stored", **kw)
    bf16 = reference(fp32_walk, SUBSET, unique_dtype="bfloat16", **kw)
    assert sum(v.size for v in bf16.values()) < sum(v.size for v in stored.values())


def test_bf16_round_matches_torch():
    """The reference's rounding is torch's float32 -> bfloat16 cast (round to nearest even)."""
    v = np.random.default_rng(0).normal(size=4096).astype(np.float32) * np.float32(3e-2)
    v[:3] = [1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -(1.0 + 2.0 ** -8)]  # exact ties
    assert np.array_equal(bf16_round(v), torch.from_numpy(v).to(torch.bfloat16).double().numpy())


def test_steps_missing_from_the_trajectory_fail_in_one_line(tmp_path, rlvr_cache, fp32_walk):
    from rlvr_linearity.linearity.app import analyse

    cfg = compose_config("linearity", "logger=none", f"trajectory.path={fp32_walk.path}", "linearity.lowrank=false",
                         "linearity.steps=[2,4,6,12]")
    with pytest.raises(ConfigError, match=r"^linearity.steps: step\(s\) 4, 6 not in the trajectory") as err:
        analyse(cfg, tmp_path / "out")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("linearity.steps=[0]", "need a step besides the base"), ("linearity.steps=[-100,100]", "is negative"),
    ("linearity.tensors=biases", "not one of all, weights_only"),
    ("linearity.unique_filter_dtype=float16", "not one of stored, bfloat16")])
def test_bad_lin_options_fail_at_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config("linearity", "logger=none", override)


# ------------------------------------------------------------------------------ preset
def test_lin_preset_states_the_paper_procedure():
    cfg = compose_config("pipeline", LIN_PRESET, "logger=none")
    lin = cfg.linearity
    assert list(lin.steps) == list(range(0, 1301, 100))
    assert (lin.tensors, lin.unique_filter_dtype, lin.sample_fraction, lin.min_samples, lin.min_abs_change,
            lin.min_unique) == ("weights_only", "bfloat16", 0.001, 50, 1e-4, 4)
    pc = lin.probes
    assert (pc.benchmark, pc.n_problems, pc.n_samples, pc.temperature, pc.top_p, pc.top_k) == \
        ("aime24", 30, 64, 0.6, 0.95, -1)
    assert list(cfg.benchmarks) == ["aime24", "aime25", "math500", "livecodebench"]


def test_lin_preset_dry_run_lists_fig5_targets_per_pair(tmp_path, capsys):
    from rlvr_linearity.pipeline.app import run_pipeline

    cfg = compose_config("pipeline", LIN_PRESET, "logger=none", "pipeline.dry_run=true",
                         f"output_dir={tmp_path / 'out'}", f"pipeline.stage_dir={tmp_path / 'stages'}")
    labels = [row["stage"] for row in run_pipeline(cfg, tmp_path / "out")["dry_run"]]
    fig5 = {300: range(400, 1201, 100), 600: range(800, 1201, 100), 1400: range(1600, 1901, 100)}
    weight_evals = [f"eval_weight_0_{t1}_t{t}" for t1, targets in fig5.items() for t in targets]
    assert labels[:5] == ["train", "linearity", "weight_0_300", "weight_0_600", "weight_0_1400"]
    assert [lb for lb in labels if lb.startswith("eval_weight_")] == weight_evals
    assert [lb for lb in labels if lb.startswith("eval_logits_")] == ["eval_logits_200_1400_t2000"]
    assert [lb for lb in labels if lb.startswith("eval_step_")] == [f"eval_step_{s}" for s in range(0, 2001, 200)]
    assert not (tmp_path / "stages").exists() or not any((tmp_path / "stages").iterdir())  # nothing ran
    assert "eval_weight_0_1400_t1900" in capsys.readouterr().out


def test_pairs_and_per_pair_targets_combine():
    from rlvr_linearity.pipeline.chain import pair_targets

    cfg = compose_config("pipeline", "logger=none", "pipeline.weight.pairs=[[0,3]]", "pipeline.weight.targets=[5,6]",
                         "pipeline.weight.per_pair=[{base:0,second:4,targets:[8]},{base:1,second:4,targets:[9,10]}]")
    assert pair_targets(cfg.pipeline.weight) == [(0, 3, [5, 6]), (0, 4, [8]), (1, 4, [9, 10])]
    assert pair_targets(cfg.pipeline.logits) == []


@pytest.mark.parametrize("per_pair,message", [
    ("[{base:0,second:3,targets:[5]}]", "given twice"), ("[{base:2,second:2,targets:[5]}]", "two different steps"),
    ("[{base:0,second:2,targets:[]}]", "has no targets")])
def test_bad_per_pair_fails_at_validation(per_pair, message):
    with pytest.raises(ConfigError, match=rf"pipeline.logits.per_pair: .*{message}"):
        compose_config("pipeline", "logger=none", "pipeline.logits.pairs=[[0,3]]", f"pipeline.logits.per_pair={per_pair}")


# ------------------------------------------------------------------------------ probes
@pytest.mark.parametrize("top_k,expected_top_k", [(-1, None), (7, 7)])
def test_probe_sampling_reaches_the_generator(tmp_path, rlvr_cache, monkeypatch, top_k, expected_top_k):
    """linearity.probes.{temperature, top_p, top_k, n_samples} arrive at `model.generate` (top-k -1 =
    off, not transformers' implicit 50), and the prompt carries the instruction once."""
    from rlvr_linearity.evaluate.engines import hf
    from rlvr_linearity.linearity.app import analyse

    calls = []
    real = hf.load_model

    def load(path, device, dtype, trust_remote_code):
        model, tok = real(path, device, dtype, trust_remote_code)
        generate = model.generate

        def recording(**kw):
            calls.append({**{k: kw.get(k) for k in ("do_sample", "temperature", "top_p", "top_k",
                                                   "num_return_sequences", "max_new_tokens")},
                          "prompts": tok.batch_decode(kw["input_ids"], skip_special_tokens=False)})
            return generate(**kw)

        model.generate = recording
        return model, tok

    monkeypatch.setattr(hf, "load_model", load)
    tt = make_trajectory(tmp_path / "run", steps=(1, 2), drift="random", scale=5e-2, write_json=True)
    instruction = "Let's think step by step and output the final answer within \\boxed{}."
    cfg = compose_config("linearity", "logger=none", f"trajectory.path={tt.path}", "linearity.weights=false",
                         "linearity.lowrank=false", "linearity.logprobs=true", "linearity.probes.n_problems=2",
                         "linearity.probes.n_samples=3", "linearity.probes.temperature=0.6",
                         "linearity.probes.top_p=0.95", f"linearity.probes.top_k={top_k}", "sampling.max_tokens=4",
                         f'linearity.probes.instruction="{instruction}"', "linearity.probes.benchmark=arithmetic")
    analyse(cfg, tmp_path / "out")
    assert calls and all({k: c[k] for k in c if k != "prompts"} == {
        "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": expected_top_k, "num_return_sequences": 3,
        "max_new_tokens": 4} for c in calls)
    prompts = [p for c in calls for p in c["prompts"]]
    assert len(prompts) == 2 and all(p.count("boxed") == 1 and p.count(instruction) == 1 for p in prompts)
    probes = json.loads((tmp_path / "out" / "linearity" / "probes.json").read_text())
    assert all("boxed" not in p["problem"] for p in probes)  # LIN's format: the bare problem
