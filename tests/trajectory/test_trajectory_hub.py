"""Hub bases and hub trajectories, with the hub replaced by a local directory of revisions."""

import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_trajectory
from rlvr_linearity.errors import TrajectoryError
from rlvr_linearity.trajectory import hub, open_trajectory

REPO = "relex-rlvr/RLVR-Tiny"


class FakeHub:
    """Serves `revisions/<rev>/` as the revisions of REPO and `models/<id>` as model repos."""

    def __init__(self, root: Path):
        self.root = root
        self.calls = []
        self.fail = set()
        self.truncate = set()

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, local_dir=None, **kw):
        self.calls.append((repo_id, revision))
        assert allow_patterns == hub.ALLOW
        if revision in self.fail:
            raise OSError("connection refused")
        src = self.root / ("revisions" if revision else "models") / (revision or repo_id.replace("/", "--"))
        if not src.is_dir():
            raise FileNotFoundError(f"revision {revision} not found")
        dst = Path(local_dir) if local_dir else self.root / "hf-cache" / repo_id.replace("/", "--")
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            shutil.copy2(f, dst / f.name)
        (dst / ".cache").mkdir(exist_ok=True)
        if revision in self.truncate:
            w = dst / "model.safetensors"
            w.write_bytes(w.read_bytes()[:-50])
        return str(dst)

    def list_revisions(self, repo):
        self.calls.append((repo, "list"))
        return ["main"] + [d.name for d in (self.root / "revisions").iterdir()]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    t = make_trajectory(tmp_path / "src", "step", [1, 2, 3, 5, 8], noise=1e-4)
    fh = FakeHub(tmp_path / "hub")
    (fh.root / "revisions").mkdir(parents=True)
    for s, d in t.step_dirs.items():
        shutil.copytree(d, fh.root / "revisions" / f"step_{s}")
    shutil.copytree(t.base, fh.root / "models" / "Qwen--Tiny-Base")
    monkeypatch.setattr(hub, "_snapshot_download", fh.snapshot_download)
    monkeypatch.setattr(hub, "_list_revisions", fh.list_revisions)
    fh.traj = t
    return fh


def test_hub_trajectory_downloads_needed_steps_once(tmp_path, fake_hub):
    cache = tmp_path / "cache"
    kw = dict(hub_repo=REPO, base="Qwen/Tiny-Base", max_step=3, cache_dir=cache)
    traj = open_trajectory(**kw)
    assert traj.steps == [0, 1, 2, 3]
    downloaded = sorted(r for _, r in fake_hub.calls if r and r.startswith("step_"))
    assert downloaded == ["step_1", "step_2", "step_3"]
    root = cache / "hub" / REPO.replace("/", "--")
    assert sorted(p.name for p in root.iterdir()) == ["step_1", "step_2", "step_3"]  # no temp dirs, no .cache
    for name in traj.tensor_names:
        for a, b, block in traj.iter_blocks(name, traj.steps, 64):
            for i, s in enumerate(traj.steps):
                assert torch.equal(block[i].double(), fake_hub.traj.values[s][name][a:b])
    fake_hub.calls.clear()
    assert open_trajectory(**kw).steps == [0, 1, 2, 3]
    assert not [c for c in fake_hub.calls if c[1] and c[1].startswith("step_")]  # cached
    assert open_trajectory(**{**kw, "max_step": None, "steps": [2, 8]}).steps == [0, 2, 8]
    assert [c[1] for c in fake_hub.calls if c[1] and c[1].startswith("step_")] == ["step_8"]


def test_hub_offline_uses_cache_or_fails_clearly(tmp_path, fake_hub, monkeypatch):
    cache = tmp_path / "cache"
    open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, steps=[1, 2], cache_dir=cache)

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "_list_revisions", offline)
    monkeypatch.setattr(hub, "_snapshot_download", offline)
    assert open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=75, cache_dir=cache).steps == [0, 1, 2]
    with pytest.raises(TrajectoryError, match="cannot list its revisions and nothing is cached"):
        open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=75, cache_dir=tmp_path / "empty")
    with pytest.raises(TrajectoryError, match=r"step 3: download of revision step_3 failed \(offline\?\)"):
        open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, steps=[3], cache_dir=cache)
    with pytest.raises(TrajectoryError, match="base model Qwen/Other: not a local directory and the hub download "
                                              "failed.*offline"):
        open_trajectory(hub_repo=REPO, base="Qwen/Other", steps=[1], cache_dir=cache)


def test_hub_failed_or_corrupt_download_is_not_kept(tmp_path, fake_hub):
    cache = tmp_path / "cache"
    fake_hub.truncate.add("step_2")
    with pytest.raises(TrajectoryError, match="revision step_2: downloaded files invalid.*truncated"):
        open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache)
    root = cache / "hub" / REPO.replace("/", "--")
    assert sorted(p.name for p in root.iterdir()) == ["step_1"]
    fake_hub.truncate.clear()
    fake_hub.fail.add("step_3")
    with pytest.raises(TrajectoryError, match="step_3 failed"):
        open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache)
    assert sorted(p.name for p in root.iterdir()) == ["step_1", "step_2"]  # resumable: step 2 kept
    fake_hub.fail.clear()
    assert open_trajectory(hub_repo=REPO, base=fake_hub.traj.base, max_step=3, cache_dir=cache).steps == [0, 1, 2, 3]


def test_hub_requested_step_missing_and_no_base(tmp_path, fake_hub):
    with pytest.raises(TrajectoryError, match=r"requested step\(s\) \[4\] not found"):
        open_trajectory(hub_repo=REPO, base="Qwen/Tiny-Base", steps=[4], max_step=10, cache_dir=tmp_path / "c")
    with pytest.raises(TrajectoryError, match="missing base model"):
        open_trajectory(hub_repo=REPO, max_step=2, cache_dir=tmp_path / "c")


def test_hub_from_config_and_default_cache(tmp_path, fake_hub, rlvr_cache):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"path": None, "base": "Qwen/Tiny-Base", "hub_repo": REPO, "hub_revision_prefix": "step_",
                            "steps": None, "max_step": 2, "check_finite": True, "cache_dir": None})
    assert open_trajectory(cfg).steps == [0, 1, 2]
    assert (rlvr_cache / "hub" / REPO.replace("/", "--") / "step_2" / "model.safetensors").is_file()


def test_base_hub_id_resolution(tmp_path, fake_hub):
    t = fake_hub.traj
    traj = open_trajectory(path=t.path, base="Qwen/Tiny-Base")
    assert ("Qwen/Tiny-Base", None) in fake_hub.calls
    assert torch.equal(traj.base.read("model.norm.weight").double(), t.values[0]["model.norm.weight"])
