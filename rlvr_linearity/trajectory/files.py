"""One HF model directory on disk: safetensors headers parsed up front, tensors read lazily.

Tensors are always read in their STORED dtype; config.json's dtype is ignored on purpose (verl
writes fp32 tensors under a config that says bfloat16). Whole tensors come through `safe_open`
(mmap); the streaming path (`read_rows_into`, used by `Trajectory.iter_blocks`) reads a row
range's bytes with one `pread` straight into the caller's buffer, so nothing is mapped and the
page cache is not counted in the process's RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr_linearity.errors import TrajectoryError, where

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_PREADV = hasattr(os, "preadv")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `file`
    stop: int


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header, checked against the file's size."""

    path: Path
    size: int
    raw: bytes
    tensors: dict[str, TensorInfo]  # in data-offset order

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def read_header(path: Path, step=None) -> Header:
    """Parse a safetensors header and check it as the safetensors library does before it reads
    a byte: a JSON object of string metadata and tensor entries whose `data_offsets`, sorted,
    tile the data area from 0 to the end of the file without gaps or overlaps, each as long as
    its shape times its dtype's size. A header that lies would make every read come from the
    wrong bytes. Raises TrajectoryError naming file, step and tensor; a data area that runs past
    the end of the file is reported as truncated (a copy or save still in progress)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TrajectoryError(f"{where(path, step)}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise TrajectoryError(f"{where(path, step)}: truncated safetensors file "
                                      f"(header of {n} bytes, file of {size})")
            raw = f.read(n)
    except OSError as e:
        raise TrajectoryError(f"{where(path, step)}: cannot read ({e.strerror or e})") from None
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TrajectoryError(f"{where(path, step)}: corrupt safetensors header") from None
    if not isinstance(meta, dict):
        raise TrajectoryError(f"{where(path, step)}: corrupt safetensors header (a JSON "
                              f"{type(meta).__name__}, not an object)")
    extra = meta.pop("__metadata__", None)
    if extra is not None and not (isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())):
        raise TrajectoryError(f"{where(path, step)}: corrupt safetensors header (__metadata__ is not a "
                              "map of strings)")
    base = 8 + n
    items = []
    for name, info in meta.items():
        try:
            a, b = info["data_offsets"]
            dtype = DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            if not all(_count(x) for x in (a, b, *shape)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise TrajectoryError(f"{where(path, step, name)}: corrupt safetensors header entry") from None
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        if b < a or b - a != nbytes:
            raise TrajectoryError(f"{where(path, step, name)}: corrupt safetensors header entry (data_offsets "
                                  f"[{a}, {b}] for {nbytes} bytes of {info['dtype']} {list(shape)})")
        if base + b > size:
            raise TrajectoryError(f"{where(path, step, name)}: truncated safetensors file (data ends at byte "
                                  f"{base + b}, file has {size})")
        items.append((a, b, name, TensorInfo(path, dtype, shape, base + a, base + b)))
    items.sort(key=lambda x: x[:2])
    end, prev = 0, None
    for a, b, name, _ in items:
        if a != end:
            what = f"overlaps tensor {prev}" if a < end else f"leaves bytes {end}:{a} of the data area unused"
            raise TrajectoryError(f"{where(path, step, name)}: corrupt safetensors header (data_offsets "
                                  f"[{a}, {b}] {what})")
        end, prev = b, name
    if base + end != size:
        raise TrajectoryError(f"{where(path, step)}: corrupt safetensors file ({size - base - end} bytes after "
                              "the last tensor's data)")
    return Header(path, size, raw, {name: ti for _, _, name, ti in items})


def _count(x) -> bool:
    """A JSON unsigned integer (what safetensors reads offsets and dimensions as)."""
    return type(x) is int and x >= 0


def read_json(path: Path, step, what: str) -> dict:
    """A JSON object from a file of the trajectory (config.json, shard index, trajectory.json);
    TrajectoryError naming it if it cannot be read, is not UTF-8 JSON or is not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TrajectoryError(f"{where(path, step)}: cannot read {what} ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise TrajectoryError(f"{where(path, step)}: corrupt {what} ({e})") from None
    if not isinstance(data, dict):
        raise TrajectoryError(f"{where(path, step)}: corrupt {what} (a JSON {type(data).__name__}, not an object)")
    return data


class TensorTable:
    """What a checkpoint's tensors are, from its `_info` {name: info with .shape, .dtype} (file
    order), `path`, `step` and `config`: shared by safetensors models and verl's FSDP shards."""

    @property
    def tensor_names(self) -> list[str]:
        """Stored names in file order (shard by shard, data-offset order)."""
        return list(self._info)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._info[name]
        except KeyError:
            raise TrajectoryError(f"{where(self.path, self.step, name)}: tensor missing") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        """The dtype stored in the file (not config.json's)."""
        return self.info(name).dtype

    def numel(self, name: str) -> int:
        n = 1
        for d in self.info(name).shape:
            n *= d
        return n

    @property
    def tied_embeddings(self) -> bool:
        """config.tie_word_embeddings and no separate lm_head stored."""
        cfg = self.config if "tie_word_embeddings" in self.config else self.config.get("text_config") or {}
        return bool(cfg.get("tie_word_embeddings", False)) and "lm_head.weight" not in self._info


class ModelFiles(TensorTable):
    """A HF model directory (config.json + single or sharded safetensors), opened lazily.

    Headers are parsed (and checked against file sizes) on construction, so a truncated file
    fails at open time, before any output is written. `step` only labels error messages.
    """

    def __init__(self, path, step=None):
        self.path = Path(path)
        self.step = step
        try:
            if not self.path.is_dir():
                raise TrajectoryError(f"{where(self.path, step)}: model directory not found")
            cfg = self.path / "config.json"
            if not cfg.is_file():
                raise TrajectoryError(f"{where(cfg, step)}: missing config.json (not a HF model directory)")
            self.config = read_json(cfg, step, "config.json")
            self.files = self._weight_files()
        except OSError as e:  # an unreadable directory
            raise TrajectoryError(f"{where(e.filename or self.path, step)}: cannot read "
                                  f"({e.strerror or e})") from None
        self.headers = [read_header(f, step) for f in self.files]
        self._info: dict[str, TensorInfo] = {}
        for h in self.headers:
            for name, ti in h.tensors.items():
                if name in self._info:
                    raise TrajectoryError(f"{where(h.path, step, name)}: tensor stored in two shards")
                self._info[name] = ti
        if self._index is not None:
            for name, fname in self._index.items():
                if name not in self._info or self._info[name].file.name != fname:
                    raise TrajectoryError(f"{where(self.path / fname, step, name)}: listed in {INDEX} "
                                          "but not stored in that shard")
        if not self._info:
            raise TrajectoryError(f"{where(self.files[0], step)}: no tensors stored")
        self._handles: dict[Path, object] = {}
        self._fd: tuple[Path, int] | None = None  # the one raw descriptor kept open (read_rows_into)
        self._fd_lock = threading.Lock()

    def _weight_files(self) -> list[Path]:
        self._index = None
        idx = self.path / INDEX
        if idx.is_file():
            wm = read_json(idx, self.step, "shard index").get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise TrajectoryError(f"{where(idx, self.step)}: corrupt shard index (weight_map is not a map "
                                      "of tensor names to file names)")
            self._index = dict(wm)
            files = sorted({self.path / f for f in wm.values()})
            for f in files:
                if not f.is_file():
                    raise TrajectoryError(f"{where(f, self.step)}: shard listed in {INDEX} is missing")
            return files
        if (self.path / SINGLE).is_file():
            return [self.path / SINGLE]
        files = sorted(self.path.glob("*.safetensors"))
        if files:
            return files
        bins = sorted(p.name for p in self.path.glob("*.bin"))
        extra = f" (found {', '.join(bins)}: convert to safetensors)" if bins else ""
        raise TrajectoryError(f"{where(self.path, self.step)}: config.json but no safetensors weights{extra}")

    def __repr__(self) -> str:
        return f"ModelFiles({str(self.path)!r}, step={self.step})"


    def _handle(self, file: Path):
        h = self._handles.get(file)
        if h is None:
            from safetensors import safe_open

            try:
                h = safe_open(str(file), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error type for corrupt files
                raise TrajectoryError(f"{where(file, self.step)}: cannot open safetensors ({e})") from None
            self._handles[file] = h
        return h

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, stored precision, CPU."""
        return self._handle(self.info(name).file).get_tensor(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start:stop) of dim 0 (elements for 1-D tensors, [1] for 0-D ones) in the stored
        dtype: one `pread` through `read_rows_into` (the streaming path's reader, no mmap)."""
        ti = self.info(name)
        rows = ti.shape[0] if ti.shape else 1
        start, stop = max(0, min(start, rows)), max(0, min(stop, rows))
        out = torch.empty((max(0, stop - start), *ti.shape[1:]), dtype=ti.dtype)
        self.read_rows_into(name, start, max(start, stop), out)
        return out

    def read_rows_into(self, name: str, start: int, stop: int, out: torch.Tensor,
                       scratch: torch.Tensor | None = None) -> None:
        """Rows [start:stop) of dim 0 (elements for 1-D tensors, the value for 0-D ones) into the
        contiguous tensor `out` (that many elements, any shape). One `pread` of the rows' bytes
        straight into `out` when it has the stored dtype; otherwise into `scratch` (a uint8
        buffer, grown if too small; allocated if None) and one conversion `out.copy_`."""
        ti = self.info(name)
        row = 1
        for d in ti.shape[1:]:
            row *= d
        rows = ti.shape[0] if ti.shape else 1
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"rows {start}:{stop} of a tensor with {rows}")
        count = (stop - start) * row
        if out.numel() != count or not out.is_contiguous():
            raise ValueError(f"read_rows_into: out must be contiguous with {count} elements")
        if count == 0:
            return
        item = ti.dtype.itemsize
        offset, nbytes = ti.start + start * row * item, count * item
        direct = out.dtype == ti.dtype
        if direct:
            dst = out.reshape(-1)
        else:
            if scratch is None or scratch.numel() < nbytes:
                scratch = torch.empty(nbytes, dtype=torch.uint8)
            dst = scratch[:nbytes].view(ti.dtype)
        self._pread(ti.file, dst.view(torch.uint8).numpy(), offset, name)
        if not direct:
            out.reshape(-1).copy_(dst)

    def _pread(self, file: Path, buf, offset: int, name: str) -> None:
        """Fill the writable byte buffer `buf` from `file` at `offset` (short reads continued)."""
        mv = memoryview(buf).cast("B")
        with self._fd_lock:
            if self._fd is None or self._fd[0] != file:  # a tensor lives in one shard: one fd per model
                self._close_fd()
                try:
                    self._fd = (file, os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
                except OSError as e:
                    raise TrajectoryError(f"{where(file, self.step, name)}: cannot read ({e.strerror or e})") from None
            fd = self._fd[1]
            done = 0
            while done < len(mv):
                try:
                    if _PREADV:
                        n = os.preadv(fd, [mv[done:]], offset + done)
                    else:  # no preadv (older macOS): one more copy
                        got = os.pread(fd, min(len(mv) - done, 1 << 30), offset + done)
                        n = len(got)
                        mv[done:done + n] = got
                except OSError as e:
                    raise TrajectoryError(f"{where(file, self.step, name)}: cannot read ({e.strerror or e})") from None
                if n <= 0:
                    raise TrajectoryError(f"{where(file, self.step, name)}: truncated safetensors file (read "
                                          f"ends at byte {offset + done}, expected {len(mv) - done} more)")
                done += n

    def close(self) -> None:
        """Close the raw descriptor of `read_rows_into` (reopened on the next read)."""
        with self._fd_lock:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd[1], None
            os.close(fd)

    def __del__(self):
        try:
            if getattr(self, "_fd", None) is not None:
                os.close(self._fd[1])
        except OSError:
            pass

    def sample_digest(self, n_ranges: int = 4, size: int = 1 << 16) -> str:
        """sha256 of every header plus `n_ranges` evenly spaced `size`-byte ranges of each file's
        data, and of each file's (and config.json's) `file_identity`."""
        h = hashlib.sha256()
        for hd in self.headers:
            h.update(f"{file_identity(hd.path)}:{hd.digest}".encode())
            data0 = 8 + len(hd.raw)
            span = max(0, hd.size - data0 - size)
            with open(hd.path, "rb") as f:
                for i in range(n_ranges):
                    f.seek(data0 + (span * i) // max(1, n_ranges - 1))
                    h.update(f.read(size))
        cfg = self.path / "config.json"
        h.update(f"{file_identity(cfg)}:".encode() + cfg.read_bytes())
        return h.hexdigest()


def file_identity(path: Path) -> str:
    """name, size, mtime (ns) and inode: what changes when a file is copied or rewritten, even
    where the bytes a digest samples do not."""
    st = os.stat(path)
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
