"""Ground floor for every file the project writes: atomic writes, JSON-able values, content keys.

Imports nothing of the project above `errors`, so every package can use it without a cycle.
A write goes to a unique hidden temp name beside its target and is renamed into place only when
complete: a run that dies leaves no file that a later run would take as complete, and two runs
writing the same file never share a temp name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy/torch scalars unwrapped, paths as strings, NaN/Inf as null
    (strict JSON has no NaN, and a metric that is undefined is absent, not a number)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def stage_key(name: str, config: Any, inputs: Iterable[str] = ()) -> str:
    """A short content hash of a stage's name, resolved config and input identities."""
    blob = json.dumps({"stage": name, "config": config, "inputs": list(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def temp_name(path: Path) -> Path:
    """A hidden temp name beside `path`, unique per process and call."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; it replaces `path` when the block ends without an error and
    is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the complete directory `tmp` in place of `out`: the old one is renamed aside first and
    removed only after the rename, so `out` is always either the old whole or the new whole."""
    old = None
    if out.exists():
        old = out.parent / f"{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON with NaN/Inf as null (strict JSON readers reject NaN)."""
    write_text_atomic(path, json.dumps(jsonable(data), indent=2, default=str, allow_nan=False) + "\n")


def write_lines_atomic(path: str | Path, lines: Iterable[str]) -> None:
    """One string per line (JSONL), each ended by a newline."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
