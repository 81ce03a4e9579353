"""`rlvr pipeline experiment=demo_mechanism`: its stages in a dry run, and end to end at reduced
size (tiny model build, GRPO, noisy SFT, decomposition, activation R², the three figures)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RECIPE

SMALL = [
    "task.n_train=12", "task.n_test=8", "task.max_operand=4", "task.seed=3",
    *[f"train.tiny.{k}={v}" for k, v in {**TINY_RECIPE, "sft_batch_size": 12}.items()],
    "train.steps=3", "train.prompts_per_step=2", "train.group_size=4",
    "mechanism.sft.steps=3", "mechanism.sft.batch_size=4", "mechanism.snr_db=[0,-10]", "mechanism.probes=2",
    "figures.pdf=false",
]


def run(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLVR_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "WANDB_DIR": str(out.parent)}
    return subprocess.run([sys.executable, "-m", "rlvr_linearity", "pipeline", "experiment=demo_mechanism",
                           f"output_dir={out}", *SMALL, *extra], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=900)


def test_dry_run_lists_the_mechanism_stages(tmp_path):
    res = run(tmp_path / "dry", tmp_path / "cache", "pipeline.dry_run=true")
    assert res.returncode == 0, res.stderr[-2000:]
    listed = [line.split()[2] for line in res.stdout.splitlines() if line.strip().startswith("to run")]
    assert listed == ["train", "token_snr", "mechanism"]


@pytest.mark.slow
def test_demo_mechanism_small(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    res = run(out, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    mech = json.loads((out / "results.json").read_text())["mechanism"]
    assert set(mech["token_snr_median_r2"]) == {"sft", "snr_0dB", "snr_-10dB"}
    assert mech["mechanism"]["identity_error"] < 1e-9
    snr = json.loads((out / "stages" / "token_snr" / "mechanism" / "token_snr.json").read_text())
    assert [lv["snr_db"] for lv in snr["levels"]] == [None, 0.0, -10.0]
    assert all(0 <= lv["median"] <= 1 for lv in snr["levels"])
    dec = json.loads((out / "stages" / "mechanism" / "mechanism" / "decomposition.json").read_text())
    assert dec["steps"] == [0, 1, 2, 3] and len(dec["pairs"]) == 3 and dec["layers"] == ["0", "lm_head"]
    act = json.loads((out / "stages" / "mechanism" / "mechanism" / "activation_r2.json").read_text())
    assert [a["name"] for a in act["layers"]] == ["embedding", "layer 0 (+final norm)"]
    for name in ("lin_fig3_token_snr", "lin_fig4_decomposition", "activation_linearity"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    again = run(out, cache)
    assert again.returncode == 0, again.stderr[-2000:]
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert [(s["stage"], s["cached"]) for s in stages] == [("train", True), ("token_snr", True), ("mechanism", True)]
