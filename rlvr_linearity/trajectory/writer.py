"""ModelWriter: write a HF model directory tensor by tensor, atomically, in bounded memory.

The safetensors headers are computed up front from the template's (name, shape, target dtype)
list, the files are pre-sized, and each `write(name, tensor)` puts that tensor's bytes at its
offset: memory holds one tensor at a time, any write order works, and many writers can be open
at once. Everything goes to `<out>.tmp-<random>`, renamed to `<out>` only when every tensor has
been written and the files re-read as valid safetensors. A writer holds `claim_output(<out>)`
while open: a second writer of the same place fails at once with one line, and the temp dirs
that a killed writer left there (full size) are removed. A full disk or a permission problem
is one line naming the file (`OutputError`), and nothing complete-looking is left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from rlvr_linearity.errors import OutputError, RlvrError, writing
from rlvr_linearity.io import replace_dir

from .files import DTYPE_NAMES, INDEX, SINGLE, ModelFiles, read_header

log = logging.getLogger(__name__)

AUX_SUFFIXES = (".json", ".txt", ".jinja", ".model", ".tiktoken", ".py")
SKIP = {INDEX, "trajectory.json", "fsdp_config.json", "trainer_state.json"}  # run state, not model files
DTYPE_ALIASES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float64": torch.float64}
EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
TIED_CHUNK = 1 << 24  # bytes of the embedding compared (and copied) at a time


def parse_dtype(dtype) -> torch.dtype | None:
    """None, a torch.dtype or a name ('float32', 'bf16', ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPE_ALIASES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise RlvrError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)") from None


@contextmanager
def claim_output(path):
    """Hold an exclusive lock on writing `path` (a file or directory; the lock is the hidden
    `.<name>.lock` next to it, released by the kernel if the holder dies, and removed while
    still held, which filelock's acquire detects): a run that finds it held fails at once with
    one line rather than tear the other run's files or wait for hours."""
    from filelock import FileLock, Timeout

    path = Path(path)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputError(f"{path}: another run is writing it (it holds {lock.lock_file}); wait for it to "
                              "finish or choose another output_dir") from None
    try:
        yield
    finally:
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()


def _header_bytes(entries: list[tuple[str, torch.dtype, tuple[int, ...], int, int]]) -> bytes:
    meta: dict = {"__metadata__": {"format": "pt"}}
    for name, dt, shape, a, b in entries:
        meta[name] = {"dtype": DTYPE_NAMES[dt], "shape": list(shape), "data_offsets": [a, b]}
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class ModelWriter:
    """`with ModelWriter(out, template=mf, dtype=None) as w: for n in w.tensor_names: w.write(n, t)`.

    dtype None keeps each tensor's stored dtype in the template; otherwise floating tensors are
    cast to `dtype` on write. Above `shard_bytes` the weights are split into
    `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`. The template's config
    (dtype updated), generation config, tokenizer and chat template are copied. `names`: write
    only these of the template's tensors (a partition job's share of a model; config.json as
    the whole model's).
    """

    def __init__(self, out_dir, template, dtype=None, shard_bytes: int = 5 * 10**9, names=None):
        self.out = Path(out_dir).resolve()
        self.template = template if hasattr(template, "tensor_names") else ModelFiles(template)
        self.dtype = parse_dtype(dtype)
        self.tensor_names = list(self.template.tensor_names if names is None else names)
        self._entries = {}
        for n in self.template.tensor_names:
            src = self.template.dtype(n)
            dt = self.dtype if (self.dtype is not None and src.is_floating_point) else src
            self._entries[n] = (dt, tuple(self.template.shape(n)), self.template.numel(n) * dt.itemsize)
        self._shards = self._plan(shard_bytes)
        self._tmp: Path | None = None
        self._claim = ExitStack()
        self._files: dict[str, object] = {}
        self._where: dict[str, tuple[str, int, int]] = {}  # name -> (file name, abs offset, nbytes)
        self._written: set[str] = set()
        self._rows_written: dict[str, int] = {}  # elements written so far by write_rows

    def _plan(self, shard_bytes: int) -> list[list[str]]:
        shards, cur, size = [], [], 0
        for n in self.tensor_names:
            nb = self._entries[n][2]
            if cur and size + nb > shard_bytes:
                shards.append(cur)
                cur, size = [], 0
            cur.append(n)
            size += nb
        shards.append(cur)
        return shards

    # -- context management
    def __enter__(self) -> "ModelWriter":
        self._claim.enter_context(claim_output(self.out))
        try:
            with writing(self.out):
                for stale in [*self.out.parent.glob(f"{self.out.name}.tmp-*"),
                              *self.out.parent.glob(f"{self.out.name}.old-*")]:  # a killed writer's
                    log.info("removing %s, left by an interrupted run", stale)
                    shutil.rmtree(stale, ignore_errors=True)
                self._tmp = self.out.parent / f"{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
                self._tmp.mkdir()
        except BaseException:
            self._claim.close()
            raise
        try:
            k = len(self._shards)
            for i, names in enumerate(self._shards):
                fname = SINGLE if k == 1 else f"model-{i + 1:05d}-of-{k:05d}.safetensors"
                entries, off = [], 0
                for n in names:
                    dt, shape, nb = self._entries[n]
                    entries.append((n, dt, shape, off, off + nb))
                    off += nb
                head = _header_bytes(entries)
                with writing(self.out / fname):
                    f = self._files[fname] = open(self._tmp / fname, "wb+")
                    f.write(head)
                    f.truncate(len(head) + off)
                for n, _, _, a, b in entries:
                    self._where[n] = (fname, len(head) + a, b - a)
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:  # the flush of a full disk: the file goes anyway
                pass
        self._files.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._claim.close()

    # -- writing
    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor (any float dtype, cast to the target dtype; shape must match)."""
        self._entry(name, "write")
        t = torch.as_tensor(tensor).detach()
        if tuple(t.shape) != self._entries[name][1]:
            raise RlvrError(f"tensor {name}: shape {list(t.shape)} does not match the template's "
                            f"{list(self._entries[name][1])}")
        self.write_rows(name, 0, t)

    def write_rows(self, name: str, start: int, values: torch.Tensor) -> None:
        """Write rows [start, start + len) of dim 0 of `name` (elements of a 1-D tensor; values
        cast to the target dtype): a tensor streamed block by block, never whole in memory. It
        counts as written once as many elements as it holds have been (each row once)."""
        dt, shape, nb = self._entry(name, "write_rows")
        row = 1
        for d in shape[1:]:
            row *= d
        data = torch.as_tensor(values).detach().to(device="cpu", dtype=dt).contiguous().reshape(-1)
        rows = shape[0] if shape else 1
        count = data.numel() // row if row else rows
        if (row and data.numel() % row) or not 0 <= start <= start + count <= rows:
            raise RlvrError(f"tensor {name}: rows {start}:{start + count} of {data.numel()} values "
                            f"do not fit its shape {list(shape)}")
        fname, off, _ = self._where[name]
        f = self._files[fname]
        with writing(self.out / fname):
            f.seek(off + start * row * dt.itemsize)
            f.write(memoryview(data.view(torch.uint8).numpy()))
        self._rows_written[name] = self._rows_written.get(name, 0) + data.numel()
        if self._rows_written[name] >= nb // dt.itemsize:
            self._written.add(name)

    def _entry(self, name: str, method: str) -> tuple:
        """(dtype, shape, nbytes) of a template tensor, inside the `with` block."""
        if self._tmp is None:
            raise RuntimeError(f"ModelWriter.{method} outside its `with` block")
        if name not in self._where:
            raise RlvrError(f"file {self.template.path}, tensor {name}: not a tensor of the template model "
                            "(or not one of the tensors this writer writes)")
        return self._entries[name]

    def _finish(self) -> None:
        missing = [n for n in self.tensor_names if n not in self._written]
        if missing:
            raise RlvrError(f"{self.out}: tensor {missing[0]} never written ({len(missing)} missing); "
                            "output discarded")
        with writing(self.out):
            self._complete()
        self._claim.close()

    def _complete(self) -> None:
        """Flush, check, add the index and the auxiliary files, and rename into place."""
        self._keep_tied()
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._files.clear()
        for fname in {w[0] for w in self._where.values()}:
            read_header(self._tmp / fname)  # sizes and offsets consistent
        if len(self._shards) > 1:
            total = sum(self._entries[n][2] for n in self.tensor_names)
            index = {"metadata": {"total_size": total}, "weight_map": {n: self._where[n][0] for n in self.tensor_names}}
            (self._tmp / INDEX).write_text(json.dumps(index, indent=2))
        self._copy_aux()
        replace_dir(self._tmp, self.out)
        self._tmp = None

    def _keep_tied(self) -> None:
        """A tied template storing both embedding and lm_head: keep them byte-identical."""
        cfg = self.template.config
        if not (cfg.get("tie_word_embeddings") and EMB in self._where and HEAD in self._where):
            return
        (fe, oe, n), (fh, oh, _) = self._where[EMB], self._where[HEAD]
        src, dst = self._files[fe], self._files[fh]
        differ = False
        for a in range(0, n, TIED_CHUNK):  # chunk by chunk: a 32B model's embedding is 1.6 GB
            src.seek(oe + a)
            emb = src.read(min(TIED_CHUNK, n - a))
            dst.seek(oh + a)
            if dst.read(len(emb)) != emb:
                differ = True
                dst.seek(oh + a)
                dst.write(emb)
        if differ:
            log.warning("%s: tied embeddings written with a different lm_head; lm_head set to the embedding", self.out)

    def _written_dtype(self) -> torch.dtype | None:
        sizes: dict[torch.dtype, int] = {}
        for dt, _, nb in self._entries.values():
            if dt.is_floating_point:
                sizes[dt] = sizes.get(dt, 0) + nb
        return max(sizes, key=sizes.get) if sizes else None

    def _copy_aux(self) -> None:
        src = getattr(self.template, "aux_dir", self.template.path)
        for f in sorted(src.iterdir()):
            if not f.is_file() or f.name in SKIP or f.suffix == ".safetensors":
                continue
            if f.suffix in AUX_SUFFIXES or f.name.startswith("tokenizer"):
                shutil.copy2(f, self._tmp / f.name)
        cfg = dict(self.template.config)
        dt = self._written_dtype()
        if dt is not None:
            name = str(dt).removeprefix("torch.")
            cfg["dtype"] = name
            if "torch_dtype" in cfg:
                cfg["torch_dtype"] = name
        (self._tmp / "config.json").write_text(json.dumps(cfg, indent=2))
