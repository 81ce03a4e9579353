"""Read a verl step saved without `hf_model`: the FSDP shard files `model_world_size_W_rank_r.pt`.

These files are torch pickles of sharded state dicts, full fp32: ShardedTensor values (FSDP1),
DTensor values (FSDP2, 1-D mesh: rank r's local chunk follows rank r-1's along the Shard dim),
or plain tensors (NO_SHARD).
They are never unpickled with torch's or pickle's own class lookup: a restricted unpickler maps
the few torch globals such files use to inert records, storages to lazy references into the zip
archive, and anything else to an error; so no code from the file runs and nothing is loaded
until a tensor is read. Each tensor is reassembled from every rank's shards at their offsets.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr_linearity.errors import TrajectoryError, where

from .files import TensorTable, file_identity, read_json

SHARD_RX = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
STORAGES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
            "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
            "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


class _Rec:
    """An inert stand-in for a pickled object: keeps its constructor args and state."""

    _kind = "object"

    def __init__(self, *args):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


def _rec(kind: str):
    return type(kind, (_Rec,), {"_kind": kind})


@dataclass
class _Storage:
    zip: Path
    entry: str
    dtype: torch.dtype


@dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def load(self) -> torch.Tensor:
        with zipfile.ZipFile(self.storage.zip) as z:
            buf = bytearray(z.read(self.storage.entry))
        flat = torch.frombuffer(buf, dtype=self.storage.dtype) if buf else torch.empty(0, dtype=self.storage.dtype)
        return torch.as_strided(flat, self.size, self.stride, self.offset).clone()


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return _LazyTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_wrapper_subclass(cls, dtype, size, *_):
    return {"cls": cls, "dtype": dtype, "size": tuple(size)}


class _PlainTensor:
    """Marker for `torch.Tensor` as a pickled type (a plain tensor, as NO_SHARD FSDP saves)."""


def _rebuild_from_type_v2(func, new_type, args, state):
    ret = func(*args)
    if new_type is _PlainTensor:
        return ret
    obj = new_type()
    obj.wrapper = ret
    obj.state = state
    return obj


def _nested_class(owner, attr):
    """`getattr(ShardedTensor, "ProcessGroupState")` as pickled: another record class."""
    if not (isinstance(owner, type) and issubclass(owner, _Rec)):
        raise pickle.UnpicklingError(f"unsupported getattr on {owner!r}")
    return _rec(f"{owner._kind}.{attr}")


def _fields(rec) -> dict:
    """Attributes of a record built by BUILD: a dict, or (dict | None, slots dict)."""
    st = rec.state
    if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
        return {**(st[0] or {}), **(st[1] or {})}
    if isinstance(st, dict):
        return st
    raise pickle.UnpicklingError(f"unexpected state of {rec._kind}")


class _Unpickler(pickle.Unpickler):
    SAFE = {("collections", "OrderedDict"): OrderedDict, ("torch", "Size"): tuple,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_wrapper_subclass"): _rebuild_wrapper_subclass,
            ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
            ("torch", "device"): str, ("torch", "Tensor"): _PlainTensor, ("torch.serialization", "_get_layout"): str}
    RECORDS = {"torch.distributed._shard.sharded_tensor.api": {"ShardedTensor"},
               "torch.distributed._shard.sharded_tensor.shard": {"Shard"},
               "torch.distributed._shard.metadata": {"ShardMetadata"},
               "torch.distributed._shard.sharded_tensor.metadata": {"ShardedTensorMetadata", "TensorProperties",
                                                                    "MEM_FORMAT_ENCODING"},
               "torch.distributed._shard.sharding_spec.chunk_sharding_spec": {"ChunkShardingSpec"},
               "torch.distributed.remote_device": {"_remote_device"},
               "torch.distributed.tensor": {"DTensor"},
               "torch.distributed.tensor._dtensor_spec": {"DTensorSpec", "ShardOrderEntry", "TensorMeta"},
               "torch.distributed.tensor.placement_types": {"Shard", "Replicate"},
               "torch.distributed.device_mesh": {"DeviceMesh"},
               "torch.distributed._mesh_layout": {"_MeshLayout", "_FlatLayout"}}

    def __init__(self, fh, zpath: Path, prefix: str):
        super().__init__(fh)
        self.zpath, self.prefix = zpath, prefix

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name in STORAGES:
            return STORAGES[name]
        if name in self.RECORDS.get(module, ()):
            return _rec(name)
        if (module, name) in (("__builtin__", "getattr"), ("builtins", "getattr")):
            return _nested_class
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in an FSDP shard file")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        return _Storage(self.zpath, f"{self.prefix}/data/{key}", dtype)


def _load_index(path: Path, step) -> dict:
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            prefix = pkl[: -len("/data.pkl")]
            with z.open(pkl) as fh:
                return _Unpickler(fh, path, prefix).load()
    except (zipfile.BadZipFile, StopIteration, OSError, EOFError) as e:
        raise TrajectoryError(f"{where(path, step)}: unreadable or truncated FSDP shard file ({e})") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise TrajectoryError(f"{where(path, step)}: unsupported FSDP shard content ({e}); "
                              "save hf_model in verl's checkpoint.save_contents") from None


@dataclass(frozen=True)
class _Info:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]


class FsdpShardFiles(TensorTable):
    """ModelFiles-compatible view of `global_step_N/actor/` FSDP shards (full fp32)."""

    def __init__(self, actor_dir, step=None):
        self.path = Path(actor_dir)
        self.step = step
        self.files = sorted(self.path.glob("model_world_size_*_rank_*.pt"))
        ranks = {}
        for f in self.files:
            w, r = (int(x) for x in SHARD_RX.match(f.name).groups())
            ranks.setdefault(w, {})[r] = f
        if len(ranks) != 1:
            raise TrajectoryError(f"{where(self.path, step)}: FSDP shard files of several world sizes {sorted(ranks)}")
        (world, by_rank), = ranks.items()
        missing = sorted(set(range(world)) - set(by_rank))
        if missing:
            raise TrajectoryError(f"{where(self.path, step)}: FSDP shard file(s) of rank {missing} missing "
                                  f"(world size {world})")
        self.files = [by_rank[r] for r in range(world)]
        cfg = self.path / "huggingface" / "config.json"
        self.config = read_json(cfg, step, "config.json")
        self._parts: dict[str, list] = {}
        self._info: dict[str, _Info] = {}
        for f in self.files:
            for name, v in _load_index(f, step).items():
                self._add(f, name, v)
        tied = bool(self.config.get("tie_word_embeddings", False))
        if tied and "lm_head.weight" in self._info and "model.embed_tokens.weight" in self._info:
            del self._info["lm_head.weight"], self._parts["lm_head.weight"]  # the same parameter, stored once by HF
        self._last: tuple[str, torch.Tensor] | None = None

    def _add(self, f: Path, name: str, v) -> None:
        if isinstance(v, _LazyTensor):
            self._info[name] = _Info(f, v.storage.dtype, v.size)
            self._parts[name] = [((0,) * len(v.size), v.size, v)]
            return
        if getattr(v, "_kind", None) == "DTensor":
            self._add_dtensor(f, name, v)
            return
        if getattr(v, "_kind", None) != "ShardedTensor":
            raise TrajectoryError(f"{where(f, self.step, name)}: unsupported FSDP shard value "
                                  f"({getattr(v, '_kind', type(v).__name__)}); save hf_model in verl")
        size = v.wrapper["size"]
        self._info.setdefault(name, _Info(f, v.wrapper["dtype"], size))
        parts = self._parts.setdefault(name, [])
        for shard in v.state[0]:
            sf = _fields(shard)
            md = _fields(sf["metadata"])
            parts.append((tuple(md["shard_offsets"]), tuple(md["shard_sizes"]), sf["tensor"]))

    def _add_dtensor(self, f: Path, name: str, v) -> None:
        fields = _fields(v)
        local, spec = fields["_local_tensor"], _fields(fields["_spec"])
        placements = tuple(spec["placements"])
        size = v.wrapper["size"]
        self._info.setdefault(name, _Info(f, v.wrapper["dtype"], size))
        parts = self._parts.setdefault(name, [])
        if len(placements) != 1 or placements[0]._kind not in ("Shard", "Replicate"):
            raise TrajectoryError(f"{where(f, self.step, name)}: unsupported DTensor placements "
                                  f"{[p._kind for p in placements]} (1-D Shard/Replicate only); save hf_model in verl")
        if placements[0]._kind == "Replicate":
            if not parts:
                parts.append(((0,) * len(size), tuple(size), local))
            return
        dim = int(_fields(placements[0])["dim"])
        at = sum(p[1][dim] for p in parts)  # files are read in rank order
        offsets = tuple(at if d == dim else 0 for d in range(len(size)))
        parts.append((offsets, local.size, local))

    @property
    def aux_dir(self) -> Path:
        """Where verl put config, tokenizer and chat template (copied by ModelWriter)."""
        return self.path / "huggingface"

    def __repr__(self) -> str:
        return f"FsdpShardFiles({str(self.path)!r}, step={self.step})"

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, assembled from every rank's shards (the last one is kept for read_rows)."""
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        info = self.info(name)
        out = torch.empty(info.shape, dtype=info.dtype)
        covered = 0
        for offsets, sizes, t in self._parts[name]:
            try:
                x = t.load()
            except (KeyError, RuntimeError, OSError, zipfile.BadZipFile, AttributeError) as e:
                raise TrajectoryError(f"{where(getattr(getattr(t, 'storage', None), 'zip', self.path), self.step, name)}"
                                      f": unreadable FSDP shard ({e})") from None
            if tuple(x.shape) != tuple(sizes):
                raise TrajectoryError(f"{where(self.path, self.step, name)}: FSDP shard of shape {list(x.shape)}, "
                                      f"metadata says {list(sizes)}")
            out[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] = x
            covered += x.numel()
        if covered != out.numel():
            raise TrajectoryError(f"{where(self.path, self.step, name)}: FSDP shards cover {covered} of "
                                  f"{out.numel()} elements")
        self._last = (name, out)
        return out

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        t = self.read(name)
        return (t.reshape(-1) if t.dim() == 0 else t)[start:stop]

    def sample_digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            with zipfile.ZipFile(f) as z:
                h.update(f"{file_identity(f)}:".encode() + b"".join(
                    f"{i.filename}:{i.CRC}".encode() for i in z.infolist()))
        cfg = self.path / "huggingface" / "config.json"
        h.update(f"{file_identity(cfg)}:".encode() + cfg.read_bytes())
        return h.hexdigest()
