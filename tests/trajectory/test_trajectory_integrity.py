"""Bad trajectories are one clear line naming file, step and tensor, never a traceback or wrong
bytes: safetensors headers checked as the safetensors library checks them (the library itself is
the reference), corrupt JSON side files, unreadable or odd directory entries."""

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_trajectory, without_dac
from safetensors import safe_open

from rlvr_linearity.errors import TrajectoryError
from rlvr_linearity.trajectory import open_trajectory

ROOT = REPO_ROOT
NAME = "model.layers.0.self_attn.v_proj.weight"


def rewrite_header(f: Path, edit, tail: bytes = b"") -> None:
    """Replace the JSON header of safetensors file `f` with `edit(meta)`, keeping the data bytes;
    `tail` is appended after the data."""
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = edit(json.loads(raw[8:8 + n]))
    head = json.dumps(meta).encode()
    head += b" " * (-len(head) % 8)
    f.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n:] + tail)


def library_rejects(f: Path) -> bool:
    try:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                h.get_tensor(k)
    except Exception:
        return True
    return False


def _neighbours(meta):
    """(earlier, later) names of two tensors adjacent in the data area, `NAME` the later one."""
    order = sorted((v["data_offsets"], k) for k, v in meta.items() if k != "__metadata__")
    i = [k for _, k in order].index(NAME)
    return order[i - 1][1], NAME


def _overlap(meta):
    prev, name = _neighbours(meta)
    a, b = meta[name]["data_offsets"]
    meta[name]["data_offsets"] = [a - 4, b - 4]
    return meta


def _negative(meta):
    a, b = meta[NAME]["data_offsets"]
    meta[NAME]["data_offsets"] = [-4, b - a - 4]
    return meta


def _reversed(meta):
    a, b = meta[NAME]["data_offsets"]
    meta[NAME]["data_offsets"] = [b, a]
    return meta


def _length(meta):
    meta[NAME]["shape"] = [meta[NAME]["shape"][0] - 1, meta[NAME]["shape"][1]]
    return meta


def _float_offset(meta):
    a, b = meta[NAME]["data_offsets"]
    meta[NAME]["data_offsets"] = [float(a), b]
    return meta


def _metadata(meta):
    meta["__metadata__"] = {"format": 1}
    return meta


def _swap(meta):  # two same-size tensors trade places: still a valid file (the reader must follow it)
    prev, name = _neighbours(meta)
    if meta[prev]["shape"] == meta[name]["shape"]:
        meta[prev]["data_offsets"], meta[name]["data_offsets"] = meta[name]["data_offsets"], meta[prev]["data_offsets"]
    return meta


@pytest.mark.parametrize("edit, tail, needle, names_tensor", [
    (_overlap, b"", "overlaps tensor", True),
    (_negative, b"", "corrupt safetensors header entry", True),
    (_reversed, b"", "corrupt safetensors header entry", True),
    (_length, b"", "bytes of F32 [15, 32]", True),
    (_float_offset, b"", "corrupt safetensors header entry", True),
    (_metadata, b"", "__metadata__", False),
    (lambda m: m, b"\0" * 8, "8 bytes after the last tensor's data", False),
    (lambda m: [], b"", "a JSON list, not an object", False),
    (lambda m: None, b"", "a JSON NoneType, not an object", False),
    (lambda m: "weights", b"", "a JSON str, not an object", False),
])
def test_lying_headers_are_rejected_as_the_library_rejects_them(tmp_path, edit, tail, needle, names_tensor):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2, 3])
    f = t.step_dirs[2] / "model.safetensors"
    rewrite_header(f, edit, tail)
    assert library_rejects(f)
    with pytest.raises(TrajectoryError) as e:
        open_trajectory(path=t.path, base=t.base)
    msg = str(e.value)
    assert needle in msg and f"file {f}" in msg and "step 2" in msg and "\n" not in msg, msg
    if names_tensor:
        assert f"tensor {NAME}" in msg, msg


def test_valid_but_unusual_layouts_are_accepted_like_the_library(tmp_path):
    """Tensors stored out of name order are fine: only the data area's tiling matters."""
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    f = t.step_dirs[2] / "model.safetensors"
    rewrite_header(f, _swap)
    assert not library_rejects(f)
    traj = open_trajectory(path=t.path, base=t.base)
    with safe_open(str(f), framework="pt") as h:
        for name in traj.tensor_names:
            assert h.get_tensor(name).equal(traj.model(2).read_rows(name, 0, 1 << 30).reshape(h.get_tensor(name).shape))


def test_cli_lying_headers_exit_2_one_line_no_output(tmp_path):
    out = tmp_path / "out"
    for i, edit in enumerate((_overlap, _negative, _reversed)):
        t = make_trajectory(tmp_path / f"t{i}", "checkpoint", [1, 2, 3])
        rewrite_header(t.step_dirs[3] / "model.safetensors", edit)
        r = subprocess.run([sys.executable, "-m", "rlvr_linearity", "extrapolate", f"trajectory.path={t.path}",
                            f"trajectory.base={t.base}", "extrapolate.targets=[6]", "logger=none",
                            f"output_dir={out}"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "RLVR_CACHE_DIR": str(tmp_path / "cache")})
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "step 3" in lines[0] and "model.safetensors" in lines[0], lines[0]
        assert not (out / "extrapolate" / "step_6").exists()
        assert not (out / "extrapolate" / "extrapolation.json").exists()


# ----------------------------------------------------------------------------- side files
def err(match, **kw):
    with pytest.raises(TrajectoryError, match=match) as e:
        open_trajectory(**kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_non_utf8_json_side_files(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2], write_json=True)
    cfg = t.step_dirs[2] / "config.json"
    good = cfg.read_bytes()
    cfg.write_bytes(b"\xff\xfe{}")
    msg = err("corrupt config.json", path=t.path, base=t.base)
    assert f"file {cfg}" in msg and "step 2" in msg
    cfg.write_text("[1, 2]")
    err("corrupt config.json .a JSON list", path=t.path, base=t.base)
    cfg.write_bytes(good)
    tj = t.path / "trajectory.json"
    tj.write_bytes(b'{"base": "\xff"}')
    msg = err("corrupt trajectory.json", path=t.path)
    assert str(tj) in msg


@pytest.mark.parametrize("steps", [["1", "2"], [1.5, 2], "1,2", [True, 2]])
def test_trajectory_json_steps_must_be_integers(tmp_path, steps):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2], write_json=True)
    (t.path / "trajectory.json").write_text(json.dumps({"base": str(t.base), "steps": steps}))
    err("steps must be a list of integers", path=t.path)


def test_weight_map_given_as_a_list(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    d = t.step_dirs[2]
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model-00001-of-00001.safetensors"]}))
    msg = err("weight_map is not a map", path=t.path, base=t.base)
    assert "step 2" in msg
    (d / "model.safetensors.index.json").write_bytes(b"\x80")
    err("corrupt shard index", path=t.path, base=t.base)


def test_symlink_loop_as_trajectory_root(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    msg = err("cannot resolve the trajectory path", path=a, base=tmp_path)
    assert str(a) in msg


def test_step_named_entries_that_are_not_directories_are_warned_about(tmp_path, caplog):
    t = make_trajectory(tmp_path, "global_step", [1, 2])
    (t.path / "global_step_5").write_text("not a checkpoint")
    (t.path / "global_step_7").symlink_to(t.path / "global_step_7")  # a loop
    with caplog.at_level(logging.WARNING, logger="rlvr_linearity.trajectory.discover"):
        traj = open_trajectory(path=t.path, base=t.base)
    assert traj.steps == [0, 1, 2]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert "global_step_5" in warned[0] and "not a directory" in warned[0]
    assert "global_step_7" in warned[1] and "symlink loop" in warned[1]


def test_unreadable_step_directory(tmp_path):
    t = make_trajectory(tmp_path, "checkpoint", [1, 2])
    code = ("from rlvr_linearity.errors import RlvrError\nfrom rlvr_linearity.trajectory import open_trajectory\n"
            f"try:\n    open_trajectory(path={str(t.path)!r}, base={str(t.base)!r})\n"
            "except RlvrError as e:\n    print(e)\n")
    os.chmod(t.step_dirs[2], 0)
    try:
        r = subprocess.run(without_dac([sys.executable, "-c", code]), capture_output=True, text=True, cwd=ROOT,
                           timeout=300)
    finally:
        os.chmod(t.step_dirs[2], 0o755)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "step 2" in r.stdout and "Permission denied" in r.stdout and "checkpoint-2" in r.stdout, r.stdout
