"""Models and trajectories from the Hugging Face hub.

A base model given as a hub id is fetched with `snapshot_download` (weights in safetensors,
config, tokenizer and chat template only). A hub trajectory is a repository whose revisions
`<prefix>N` (RELEX: `step_N`) are the checkpoints; each needed revision is downloaded once into
`<cache>/hub/<org>--<name>/step_N/`, through a temp dir that is verified, then renamed, so an
interrupted download is resumed (huggingface_hub's own cache) and never taken as complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from rlvr_linearity.errors import TrajectoryError, where

from .files import ModelFiles

log = logging.getLogger(__name__)

ALLOW = ["*.safetensors", "*.json", "*.txt", "*.jinja", "tokenizer*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _snapshot_download(**kw) -> str:
    """huggingface_hub.snapshot_download (one indirection so tests can replace the hub)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(**kw)


def _list_revisions(repo: str) -> list[str]:
    """Branch names of a hub model repository."""
    from huggingface_hub import HfApi

    return [b.name for b in HfApi().list_repo_refs(repo).branches]


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


def _cached_steps(root: Path, prefix: str) -> list[int]:
    rx = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    return sorted(int(m.group(1)) for d in root.glob("*") if d.is_dir() and (m := rx.match(d.name)))


def hub_steps(repo: str, prefix: str, cache_root: Path) -> list[int]:
    """Steps available as revisions `<prefix>N` (offline: the ones already cached, with a warning)."""
    rx = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    try:
        revs = _list_revisions(repo)
    except Exception as e:
        cached = _cached_steps(cache_root, "step_") if cache_root.is_dir() else []
        if cached:
            log.warning("cannot list revisions of %s (%s); using the %d cached steps", repo, _offline_hint(e),
                        len(cached))
            return cached
        raise TrajectoryError(f"trajectory.hub_repo {repo}: cannot list its revisions and nothing is cached in "
                              f"{cache_root} (offline?) [{_offline_hint(e)}]") from None
    steps = sorted({int(m.group(1)) for r in revs if (m := rx.match(r))})
    if not steps:
        raise TrajectoryError(f"trajectory.hub_repo {repo}: no revisions named {prefix}N")
    return steps


def fetch_hub_trajectory(repo: str, steps: list[int], cache: Path, prefix: str = "step_",
                         progress: bool = True) -> Path:
    """Download revisions `<prefix>N` for `steps` (skipping complete ones); returns the local
    trajectory dir holding `step_N/` model directories."""
    root = hub_cache_dir(cache, repo)
    root.mkdir(parents=True, exist_ok=True)
    todo = [s for s in steps if not (root / f"step_{s}").is_dir()]
    for s in tqdm(todo, desc=f"download {repo}", unit="step", disable=not progress or not todo):
        final = root / f"step_{s}"
        tmp = root / f".tmp-step_{s}-{uuid.uuid4().hex[:8]}"
        rev = f"{prefix}{s}"
        try:
            _snapshot_download(repo_id=repo, revision=rev, allow_patterns=ALLOW, local_dir=str(tmp))
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TrajectoryError(f"trajectory.hub_repo {repo}, step {s}: download of revision {rev} failed "
                                  f"(offline?) [{_offline_hint(e)}]") from None
        try:
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's local_dir metadata
            ModelFiles(tmp, step=s)  # config present, headers readable, sizes match
        except TrajectoryError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TrajectoryError(f"trajectory.hub_repo {repo}, revision {rev}: downloaded files invalid: {e}") from None
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same step first
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
    return root
