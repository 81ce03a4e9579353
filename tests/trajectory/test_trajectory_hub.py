"""Hub bases and hub trajectories through huggingface_hub's own cache, against a local fake Hub
served over HTTP (tests/fake_hf_hub.py): the real client, its cache layout, resume and offline mode."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, scan_cache_dir

from conftest import make_trajectory
from fake_hf_hub import FakeHfHub, serve
from rlvr_linearity.errors import TrajectoryError
from rlvr_linearity.trajectory import open_trajectory

REPO = "relex-rlvr/RLVR-Tiny"
STORAGE = "models--relex-rlvr--RLVR-Tiny"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    t = make_trajectory(tmp_path / "src", "step", [1, 2, 3, 5, 8], noise=1e-4)
    hub = FakeHfHub(tmp_path / "hub")
    for s, d in t.step_dirs.items():
        shutil.copytree(d, hub.revision_dir(REPO, f"step_{s}"))
    shutil.copytree(t.base, hub.revision_dir("Qwen/Tiny-Base", "main"))
    serve(hub, monkeypatch, tmp_path / "hf-cache")
    hub.traj, hub.cache = t, tmp_path / "hf-cache"
    yield hub
    hub.close()


def _linked(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "hub" / REPO.replace("/", "--")).iterdir())


def _revision_fetches(hub) -> list[str]:
    return [p.rsplit("/", 1)[1] for m, p, _ in hub.requests if f"/api/models/{REPO}/revision/" in p]


def _same_values(traj, reference) -> None:
    for name in traj.tensor_names:
        for a, b, block in traj.iter_blocks(name, traj.steps, 64):
            for i, s in enumerate(traj.steps):
                assert torch.equal(block[i].double(), reference.values[s][name][a:b])


def test_hub_trajectory_goes_through_the_hf_cache_once(tmp_path, fake_hub):
    cache = tmp_path / "cache"
    kw = dict(hub_repo=REPO, base="Qwen/Tiny-Base", max_step=3, cache_dir=cache)
    traj = open_trajectory(**kw)
    assert traj.steps == [0, 1, 2, 3]
    _same_values(traj, fake_hub.traj)
    assert _revision_fetches(fake_hub) == ["step_1", "step_2", "step_3"]
    # the Hugging Face cache holds the revisions (refs, snapshots, shared blobs): `hf cache` sees them
    (repo,) = [r for r in scan_cache_dir(fake_hub.cache).repos if r.repo_id == REPO]
    assert {ref for rev in repo.revisions for ref in rev.refs} == {"step_1", "step_2", "step_3"}
    files = [p for rev in ("step_1", "step_2", "step_3") for p in fake_hub.revision_dir(REPO, rev).iterdir()]
    blobs = list((fake_hub.cache / STORAGE / "blobs").iterdir())
    assert len(blobs) == len({p.read_bytes() for p in files}) < len(files)  # identical files stored once
    # our trajectory dir only links the validated snapshots
    assert _linked(cache) == ["step_1", "step_2", "step_3"]
    for s in (1, 2, 3):
        link = cache / "hub" / REPO.replace("/", "--") / f"step_{s}"
        assert link.is_symlink() and link.resolve().parent == (fake_hub.cache / STORAGE / "snapshots").resolve()

    fake_hub.requests.clear()
    assert open_trajectory(**kw).steps == [0, 1, 2, 3]
    assert _revision_fetches(fake_hub) == [] and not fake_hub.downloads()  # linked steps: no download
    assert open_trajectory(**{**kw, "max_step": None, "steps": [2, 8]}).steps == [0, 2, 8]
    assert _revision_fetches(fake_hub) == ["step_8"]


def test_hub_offline_uses_cache_or_fails_clearly(tmp_path, fake_hub, monkeypatch, caplog):
    cache = tmp_path / "cache"
    base = fake_hub.traj.base
    open_trajectory(hub_repo=REPO, base=base, steps=[1, 2], cache_dir=cache)
    (cache / "hub" / REPO.replace("/", "--") / "step_2").unlink()  # in the HF cache, not linked
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    fake_hub.requests.clear()
    traj = open_trajectory(hub_repo=REPO, base=base, steps=[1, 2], cache_dir=cache)
    assert traj.steps == [0, 1, 2] and fake_hub.requests == []  # step 2 from the HF cache, offline
    _same_values(traj, fake_hub.traj)
    assert open_trajectory(hub_repo=REPO, base=base, max_step=75, cache_dir=cache).steps == [0, 1, 2]
    assert "cannot list revisions" in caplog.text
    with pytest.raises(TrajectoryError, match="cannot list its revisions and nothing is cached"):
        open_trajectory(hub_repo=REPO, base=base, max_step=75, cache_dir=tmp_path / "empty")
    with pytest.raises(TrajectoryError, match=r"step 3: download of revision step_3 failed \(offline\?\)"):
        open_trajectory(hub_repo=REPO, base=base, steps=[3], cache_dir=cache)
    with pytest.raises(TrajectoryError, match="base model Qwen/Other: not a local directory and the hub download "
                                              "failed.*offline"):
        open_trajectory(hub_repo=REPO, base="Qwen/Other", steps=[1], cache_dir=cache)
    # the Hub unreachable (connection refused) rather than offline mode: the same cached steps
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake_hub.close()
    assert open_trajectory(hub_repo=REPO, base=base, max_step=75, cache_dir=cache).steps == [0, 1, 2]


def test_hub_interrupted_download_resumes_and_is_never_taken_as_complete(tmp_path, fake_hub, monkeypatch):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda s: None)  # the client's own retry pauses
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # tiny files: chunks smaller than half a file
    cache = tmp_path / "cache"
    size = (fake_hub.revision_dir(REPO, "step_2") / "model.safetensors").stat().st_size
    # a connection dropped once mid-file: huggingface_hub resumes it with a byte range
    fake_hub.cut[("step_2", "model.safetensors")] = 1
    # dropped at every attempt: the run fails, the step is not taken, nothing partial stays in the cache
    fake_hub.cut[("step_3", "model.safetensors")] = 100
    with pytest.raises(TrajectoryError, match=r"step 3: download of revision step_3 failed"):
        open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache)
    ranges = [r for p, r in fake_hub.downloads() if p.split("/")[-2] == fake_hub.commit(REPO, "step_2")]
    assert len(ranges) == 2 and ranges[0] is None
    assert 0 < int(re.fullmatch(r"bytes=(\d+)-", ranges[1]).group(1)) <= size // 2
    assert _linked(cache) == ["step_1", "step_2"]
    assert not list((fake_hub.cache / STORAGE / "blobs").glob("*.incomplete"))
    snapshot3 = fake_hub.cache / STORAGE / "snapshots" / fake_hub.commit(REPO, "step_3")
    assert (snapshot3 / "config.json").is_file() and not (snapshot3 / "model.safetensors").exists()

    fake_hub.cut.clear()
    fake_hub.requests.clear()
    traj = open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache)
    assert traj.steps == [0, 1, 2, 3]
    _same_values(traj, fake_hub.traj)
    # the next run fetches only what is missing: step 3's weights
    assert [p.rsplit("/", 1)[1] for m, p, _ in fake_hub.requests if m == "GET" and "/resolve/" in p] \
        == ["model.safetensors"]


def test_hub_corrupt_revision_is_deleted_from_the_hf_cache(tmp_path, fake_hub):
    cache = tmp_path / "cache"
    weights = fake_hub.revision_dir(REPO, "step_2") / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-50])  # the hub serves a truncated file, consistently
    bad_commit = fake_hub.commit(REPO, "step_2")
    with pytest.raises(TrajectoryError, match=r"revision step_2: downloaded files invalid \(deleted from the "
                                              r"Hugging Face cache\).*truncated"):
        open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache)
    assert _linked(cache) == ["step_1"]  # step 1 kept: resumable
    assert not (fake_hub.cache / STORAGE / "snapshots" / bad_commit).exists()
    assert not (fake_hub.cache / STORAGE / "refs" / "step_2").exists()
    assert (fake_hub.cache / STORAGE / "refs" / "step_1").exists()
    weights.write_bytes(good)
    traj = open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache)
    assert traj.steps == [0, 1, 2, 3]
    _same_values(traj, fake_hub.traj)


def test_hub_step_removed_from_the_hf_cache_is_fetched_again(tmp_path, fake_hub):
    cache = tmp_path / "cache"
    open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, steps=[1, 2], cache_dir=cache)
    scan_cache_dir(fake_hub.cache).delete_revisions(fake_hub.commit(REPO, "step_1")).execute()  # `hf cache rm`
    fake_hub.requests.clear()
    assert open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, steps=[1, 2], cache_dir=cache).steps == [0, 1, 2]
    assert _revision_fetches(fake_hub) == ["step_1"]


def test_hub_requested_step_missing_and_no_base(tmp_path, fake_hub):
    with pytest.raises(TrajectoryError, match=r"requested step\(s\) \[4\] not found"):
        open_trajectory(hub_repo=REPO, base="Qwen/Tiny-Base", steps=[4], max_step=10, cache_dir=tmp_path / "c")
    with pytest.raises(TrajectoryError, match="missing base model"):
        open_trajectory(hub_repo=REPO, max_step=2, cache_dir=tmp_path / "c")


def test_hub_from_config_and_default_cache(tmp_path, fake_hub, monkeypatch):
    from omegaconf import OmegaConf

    default = tmp_path / "default-cache"  # the per-machine cache (RLVR_CACHE_DIR) when cache_dir is null
    monkeypatch.setenv("RLVR_CACHE_DIR", str(default))

    cfg = OmegaConf.create({"path": None, "base": "Qwen/Tiny-Base", "hub_repo": REPO, "hub_revision_prefix": "step_",
                            "steps": None, "max_step": 2, "check_finite": True, "cache_dir": None})
    assert open_trajectory(cfg).steps == [0, 1, 2]
    assert (default / "hub" / REPO.replace("/", "--") / "step_2" / "model.safetensors").is_file()


def test_base_hub_id_resolution(tmp_path, fake_hub):
    t = fake_hub.traj
    traj = open_trajectory(path=t.path, base="Qwen/Tiny-Base")
    assert ("GET", "/api/models/Qwen/Tiny-Base/revision/main", None) in fake_hub.requests
    assert Path(traj.base.path).is_relative_to(fake_hub.cache / "models--Qwen--Tiny-Base" / "snapshots")
    assert torch.equal(traj.base.read("model.norm.weight").double(), t.values[0]["model.norm.weight"])
