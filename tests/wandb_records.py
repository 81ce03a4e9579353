"""Read back an offline W&B run: the records of its `run-*.wandb` transaction log.

wandb (0.31) no longer ships a Python reader for these files; the format is LevelDB's log
format (32 KiB blocks of records: crc32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte
":W&B" header, each record a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def read_run(run_dir: Path) -> dict:
    """{"config", "history": [row], "summary", "metrics": [(name or glob, step_metric)], "artifacts": [(name, type,
    [reference uris])]} of one offline run directory."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    out = {"config": {}, "history": [], "summary": {}, "metrics": [], "artifacts": []}
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config comes with the run record or in its own
            config = rec.run.config if kind == "run" else rec.config
            out["config"].update({i.key: json.loads(i.value_json) for i in config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "metric":
            out["metrics"].append((rec.metric.name or rec.metric.glob_name, rec.metric.step_metric))
        elif kind == "artifact":
            out["artifacts"].append((rec.artifact.name, rec.artifact.type,
                                     [c.ref for c in rec.artifact.manifest.contents]))
    return out
