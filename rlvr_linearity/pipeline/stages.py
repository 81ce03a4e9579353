"""Stage cache: each pipeline stage's outputs live in a directory keyed by a hash of the
stage's config and its inputs' identities, so a sweep never redoes a shared stage and a
preempted job resumes from what is complete.

A stage directory is complete when its `_stage.json` marker exists (written last, atomically).
Concurrent jobs that need the same stage serialise on a file lock: the first one computes it,
the others find it complete.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from rlvr_linearity.errors import writing
from rlvr_linearity.io import stage_key, write_json_atomic

log = logging.getLogger(__name__)

MARKER = "_stage.json"


@dataclass
class StageResult:
    name: str
    key: str
    path: Path
    result: dict
    cached: bool
    seconds: float


class StageCache:
    """Runs stages at most once per (config, inputs), under `root/<name>-<key>/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed: list[str] = []  # stages actually run by this process (for tests/logs)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def lookup(self, name: str, key: str) -> dict | None:
        marker = self.path(name, key) / MARKER
        if marker.exists():
            return json.loads(marker.read_text())
        return None

    def run(self, name: str, config: Any, fn: Callable[[Path], dict | None], inputs=()) -> StageResult:
        """Return the stage's result, computing it with `fn(stage_dir)` only if not complete.

        `fn` writes into `stage_dir` (which may hold a partial earlier attempt it can resume
        from) and returns a JSON-able summary stored in the marker.
        """
        key = stage_key(name, config, inputs)
        path = self.path(name, key)
        done = self.lookup(name, key)
        if done is not None:
            log.info("stage %s: cached (%s)", name, path)
            return StageResult(name, key, path, done["result"], True, 0.0)
        with FileLock(str(path) + ".lock"):
            done = self.lookup(name, key)  # another job may have finished it while we waited
            if done is not None:
                return StageResult(name, key, path, done["result"], True, 0.0)
            path.mkdir(parents=True, exist_ok=True)
            log.info("stage %s: running in %s", name, path)
            start = time.perf_counter()
            with writing(path, known_write=False):  # e.g. torch's "unexpected pos" when the disk fills: one line
                result = fn(path) or {}
            seconds = time.perf_counter() - start
            write_json_atomic(
                path / MARKER,
                {"stage": name, "key": key, "config": config, "inputs": list(inputs), "result": result, "seconds": seconds},
            )
            self.computed.append(name)
            return StageResult(name, key, path, result, False, seconds)
