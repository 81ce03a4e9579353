"""Models and trajectories from the Hugging Face hub, through huggingface_hub's own cache.

A base model given as a hub id is fetched with `snapshot_download` (weights in safetensors,
config, tokenizer and chat template only). A hub trajectory is a repository whose revisions
`<prefix>N` (RELEX: `step_N`) are the checkpoints. Each needed revision is fetched with
`snapshot_download(revision=...)` into the Hugging Face cache (HF_HUB_CACHE: blobs shared
between revisions, interrupted files resumed, HF_HUB_OFFLINE, `hf cache ls/rm`), validated, and
only then linked as `<cache>/hub/<org>--<name>/step_N -> <snapshot>`. The link marks a complete,
valid step: a half-downloaded revision never gets one, a corrupt one is deleted from the HF cache
(so the next run downloads it again), and offline the linked steps are what is available.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from rlvr_linearity.errors import TrajectoryError, where
from rlvr_linearity.io import write_json_atomic

from .files import ModelFiles

log = logging.getLogger(__name__)

ALLOW = ["*.safetensors", "*.json", "*.txt", "*.jinja", "tokenizer*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _snapshot_download(**kw) -> str:
    """huggingface_hub.snapshot_download into the HF cache (HF_HUB_CACHE; HF_HUB_OFFLINE honoured)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(**kw)


def _list_revisions(repo: str) -> dict[str, str]:
    """Branch name -> commit of a hub model repository."""
    from huggingface_hub import HfApi

    return {b.name: b.target_commit for b in HfApi().list_repo_refs(repo).branches}


def _revision_files(repo: str, revision: str) -> list[tuple[str, int]]:
    """(path, bytes) of the files of one revision that `snapshot_download(allow_patterns=ALLOW)` fetches."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    files = [f for f in HfApi().list_repo_tree(repo, revision=revision, recursive=True) if isinstance(f, RepoFile)]
    return [(f.path, f.size) for f in filter_repo_objects(files, allow_patterns=ALLOW, key=lambda f: f.path)]


def _offline_hint(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def is_hub_id(s: str) -> bool:
    return bool(HUB_ID.match(s)) and not Path(s).expanduser().exists()


def resolve_model_path(spec: str, what: str = "base model") -> Path:
    """A local model directory for `spec` (a path, or a hub id downloaded into HF's cache)."""
    p = Path(spec).expanduser()
    if p.exists():
        return p.resolve()
    if not is_hub_id(spec):
        raise TrajectoryError(f"{where(p)}: {what} not found (neither a directory nor a hub id ORG/NAME)")
    try:
        return Path(_snapshot_download(repo_id=spec, allow_patterns=ALLOW))
    except Exception as e:  # network, auth, offline, missing repo: all one line for the user
        raise TrajectoryError(f"{what} {spec}: not a local directory and the hub download failed "
                              f"(offline? set trajectory.base to a local path) [{_offline_hint(e)}]") from None


def hub_cache_dir(cache: Path, repo: str) -> Path:
    return Path(cache) / "hub" / repo.replace("/", "--")


def _cached_revisions(root: Path) -> dict[int, str]:
    """Linked steps -> commit (the name of the HF snapshot each `step_N` link points to)."""
    rx = re.compile(r"^step_(\d+)$")
    return {int(m.group(1)): d.resolve().name for d in sorted(root.glob("*")) if d.is_dir() and (m := rx.match(d.name))}


def hub_revisions(repo: str, prefix: str, cache_root: Path) -> dict[int, str]:
    """Step -> commit of the revisions `<prefix>N` (offline: the steps already linked, with a
    warning; other revisions in the HF cache are used when asked for by trajectory.steps). The
    commits identify the steps' content without downloading them."""
    rx = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    try:
        revs = _list_revisions(repo)
    except Exception as e:
        cached = _cached_revisions(cache_root) if cache_root.is_dir() else {}
        if cached:
            log.warning("cannot list revisions of %s (%s); using the %d cached steps", repo, _offline_hint(e),
                        len(cached))
            return dict(sorted(cached.items()))
        raise TrajectoryError(f"trajectory.hub_repo {repo}: cannot list its revisions and nothing is cached in "
                              f"{cache_root} (offline?) [{_offline_hint(e)}]") from None
    steps = dict(sorted((int(m.group(1)), commit) for r, commit in revs.items() if (m := rx.match(r))))
    if not steps:
        raise TrajectoryError(f"trajectory.hub_repo {repo}: no revisions named {prefix}N")
    cache_root.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_listing(cache_root), steps)
    return steps


def _listing(cache_root: Path) -> Path:
    """`<cache>/hub/<org>--<name>.revisions.json`, beside the step links."""
    return cache_root.with_name(cache_root.name + ".revisions.json")


def listed_revisions(cache_root: Path) -> dict[int, str]:
    """Step -> commit of the last listing `hub_revisions` saved (empty if none): offline, the
    commits of the steps not linked, so an offline run keys its stages as the online one did."""
    try:
        return {int(s): str(c) for s, c in json.loads(_listing(cache_root).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def hub_step_sizes(repo: str, prefix: str, steps: list[int], workers: int = 8) -> dict[int, int]:
    """Bytes each step's download holds (the files `fetch_hub_trajectory` takes), from the hub's
    file listing: one metadata request per step, nothing downloaded."""
    from concurrent.futures import ThreadPoolExecutor

    def size(s: int) -> int:
        return sum(n for _, n in _revision_files(repo, f"{prefix}{s}"))

    try:
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(steps, pool.map(size, steps)))
    except Exception as e:
        raise TrajectoryError(f"trajectory.hub_repo {repo}: cannot list the files of its revisions "
                              f"(offline?) [{_offline_hint(e)}]") from None


def fetch_hub_trajectory(repo: str, steps: list[int], cache: Path, prefix: str = "step_",
                         progress: bool = True) -> Path:
    """Fetch revisions `<prefix>N` for `steps` into the HF cache (skipping linked ones); returns the
    local trajectory dir whose `step_N` entries link to the validated snapshots."""
    root = hub_cache_dir(cache, repo)
    root.mkdir(parents=True, exist_ok=True)
    # is_dir() follows the link: a step whose snapshot was removed (`hf cache rm`) is fetched again
    todo = [s for s in steps if not (root / f"step_{s}").is_dir()]
    for s in tqdm(todo, desc=f"download {repo}", unit="step", disable=not progress or not todo):
        rev = f"{prefix}{s}"
        try:
            snapshot = Path(_snapshot_download(repo_id=repo, revision=rev, allow_patterns=ALLOW))
        except Exception as e:
            raise TrajectoryError(f"trajectory.hub_repo {repo}, step {s}: download of revision {rev} failed "
                                  f"(offline?) [{_offline_hint(e)}]") from None
        try:
            ModelFiles(snapshot, step=s)  # config present, headers readable, sizes match
        except TrajectoryError as e:
            _delete_from_hf_cache(snapshot)
            raise TrajectoryError(f"trajectory.hub_repo {repo}, revision {rev}: downloaded files invalid "
                                  f"(deleted from the Hugging Face cache): {e}") from None
        link = root / f".tmp-step_{s}-{uuid.uuid4().hex[:8]}"
        link.symlink_to(snapshot, target_is_directory=True)
        os.replace(link, root / f"step_{s}")  # atomic; a concurrent fetch of the same step links the same
    return root


def _delete_from_hf_cache(snapshot: Path) -> None:
    """Remove one revision (its snapshot, refs and unshared blobs) with huggingface_hub's cache API."""
    from huggingface_hub import scan_cache_dir

    storage = snapshot.parent.parent  # <HF cache>/models--org--name/snapshots/<commit>
    scan_cache_dir(storage.parent).delete_revisions(snapshot.name).execute()
