"""`open_trajectory`: the base model plus step checkpoints, validated before anything is written."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import json
import logging
import operator
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from rlvr_linearity.errors import ConfigError, TrajectoryError, where

from .discover import Found, discover, trajectory_json, verl_base_hint
from .files import ModelFiles
from .hub import fetch_hub_trajectory, hub_cache_dir, hub_steps, resolve_model_path

log = logging.getLogger(__name__)

KEYS = ("path", "base", "hub_repo", "hub_revision_prefix", "steps", "max_step", "check_finite",
        "trust_remote_code", "cache_dir")


class Trajectory:
    """Base model (step 0) and checkpoints, all with the same tensor names and shapes.

    Validated on construction (files, headers, names, shapes); NaN/Inf are checked while
    streaming (`iter_blocks`) when `check_finite`.
    """

    def __init__(self, models: Mapping[int, ModelFiles], path: Path | None = None, check_finite: bool = True):
        self._models = dict(sorted(models.items()))
        self.steps = list(self._models)
        self.path = path
        self.check_finite = check_finite
        self._buffers = threading.local()  # iter_blocks' reused buffers, one set per thread
        if not self.steps or self.steps[0] != 0:
            raise TrajectoryError(f"{where(path)}: missing base model (step 0)")
        self._validate()

    @property
    def base(self) -> ModelFiles:
        return self._models[0]

    def model(self, step: int) -> ModelFiles:
        try:
            return self._models[int(step)]
        except KeyError:
            raise TrajectoryError(f"{where(self.path, step)}: step not in the trajectory {self.steps}") from None

    @property
    def tensor_names(self) -> list[str]:
        return self.base.tensor_names

    def __repr__(self) -> str:
        return f"Trajectory({str(self.path)!r}, steps={self.steps})"

    def _validate(self) -> None:
        base = self.base
        names = set(base.tensor_names)
        for s, mf in self._models.items():
            if s == 0:
                continue
            have = set(mf.tensor_names)
            for name in base.tensor_names:
                if name not in have:
                    raise TrajectoryError(f"{where(mf.path, s, name)}: tensor missing (present in the base model)")
                if mf.shape(name) != base.shape(name):
                    raise TrajectoryError(f"{where(mf.path, s, name)}: shape {list(mf.shape(name))} differs from "
                                          f"the base model's {list(base.shape(name))}")
                if mf.dtype(name).is_floating_point != base.dtype(name).is_floating_point:
                    raise TrajectoryError(f"{where(mf.path, s, name)}: dtype {mf.dtype(name)} incompatible with "
                                          f"the base model's {base.dtype(name)}")
            extra = sorted(have - names)
            if extra:
                raise TrajectoryError(f"{where(mf.path, s, extra[0])}: tensor not in the base model "
                                      f"{base.path} ({len(extra)} such)")

    def fingerprint(self) -> str:
        """Identity for caches: sha256 over the step list and, per step, each weight file's
        name, size, mtime (ns), inode and full safetensors header (names, dtypes, shapes,
        offsets), four 64 KiB ranges sampled evenly through its data, and config.json. Hashing
        every byte would cost a full read; the file identities make a copy or any rewrite (one
        that keeps sizes and the sampled bytes included) a new trajectory, so a cache never
        serves one trajectory's results to another. Only an edit that also restores the mtime
        goes unseen, and the passes that read weights still check them for NaN/Inf."""
        h = hashlib.sha256(json.dumps(self.steps).encode())
        for s, mf in self._models.items():
            h.update(f"|{s}:{mf.sample_digest()}".encode())
        return h.hexdigest()

    def block_dtype(self, name: str, steps=None) -> torch.dtype:
        """The widest stored dtype of `name` over `steps` (default all): `iter_blocks`' default."""
        steps = list(self.steps if steps is None else steps)
        dtype = self.model(steps[0]).dtype(name)
        for s in steps[1:]:
            dtype = torch.promote_types(dtype, self.model(s).dtype(name))
        return dtype

    def _buffer(self, kind: str, nbytes: int) -> torch.Tensor:
        """`nbytes` of a uint8 buffer kept for this thread across calls, grown when too small.
        Fresh memory costs a page fault per 4 KiB on first touch: allocating every block anew
        made the reader 2-3x slower than the copy itself (measured: 2.3 s vs 0.9 s for 4.9 GB)."""
        buf = getattr(self._buffers, kind, None)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8)
            setattr(self._buffers, kind, buf)
        return buf[:nbytes]

    def iter_blocks(self, name: str, steps=None, max_elements: int = 1 << 24, dtype: torch.dtype | None = None,
                    reuse: int = 0, check_finite: bool | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (start, stop, block): rows [start:stop) of dim 0 of `name` for `steps` (default all),
        block `[len(steps), stop - start, *shape[1:]]` in stored dtype (the widest one if steps
        differ, e.g. bf16 base + fp32 steps: exact), or in `dtype` if given: it must hold every
        stored dtype exactly (e.g. float32 for bf16/fp16/fp32, float64 for anything), so the
        values are the same and the reader converts once instead of the caller converting again.
        A block holds at most `max_elements` elements, but always at least one row. Each block is
        a new tensor (callers may keep it), or with `reuse=n` a view of one of a ring of `n`
        buffers that this trajectory keeps per thread: overwritten `n` blocks later (counted over
        every `reuse` iteration of the thread), for callers that let go of a block within that
        (1: before asking for the next; 3: behind `prefetch`). No page faults on fresh memory.
        `check_finite` (default: the trajectory's) scans each block for NaN/Inf and raises
        TrajectoryError naming the step; a caller that detects them for free passes False.

        Each step's rows are read once, straight into the block (`ModelFiles.read_rows_into`: one
        pread into the block when the dtypes agree, else into a reused buffer and one conversion),
        with one torch thread on CPU while the block is filled and checked (small memory-bound
        copies; OpenMP spin-waiting costs a shared CPU dearly); the caller's thread count is
        restored before the block is yielded. Before the first block, freed heap memory beyond
        512 MiB is handed back to the OS (`release_free_heap`)."""
        steps = list(self.steps if steps is None else steps)
        check = self.check_finite if check_finite is None else check_finite
        models = [self.model(s) for s in steps]
        shape = self.base.shape(name)
        rows = shape[0] if shape else 1
        rest = tuple(shape[1:])
        row_size = 1
        for d in rest:
            row_size *= d
        wide = self.block_dtype(name, steps)
        if dtype is None:
            dtype = wide
        elif torch.promote_types(wide, dtype) != dtype:
            raise ValueError(f"iter_blocks({name!r}, dtype={dtype}): cannot hold the stored {wide} exactly")
        per = rows_per_block(shape, len(steps), max_elements)
        release_free_heap()
        # bytes of the conversion buffer: the largest stored item that is not read straight into the block
        convert = [m.dtype(name).itemsize for m in models if hasattr(m, "read_rows_into") and m.dtype(name) != dtype]
        scratch = self._buffer("scratch", min(per, rows) * row_size * max(convert)) if convert else None
        for start in range(0, rows, per):
            stop = min(rows, start + per)
            shape_b = (len(steps), stop - start, *rest)
            if reuse:
                n = len(steps) * (stop - start) * row_size
                turn = getattr(self._buffers, "turn", 0)
                self._buffers.turn = turn + 1
                block = self._buffer(f"block{turn % int(reuse)}", n * dtype.itemsize).view(dtype).view(shape_b)
            else:
                block = torch.empty(shape_b, dtype=dtype)
            with torch_threads(1):
                for i, m in enumerate(models):
                    if hasattr(m, "read_rows_into"):
                        m.read_rows_into(name, start, stop, block[i], scratch)
                    else:  # FSDP shard steps: assembled in memory by the reader
                        block[i] = m.read_rows(name, start, stop).reshape(stop - start, *rest)
                # a sum is finite iff every element is, barring overflow: exact check only then (fast path)
                bad = check and dtype.is_floating_point and not torch.isfinite(block.sum()) \
                    and not torch.isfinite(block).all()
            if bad:
                i = int((~torch.isfinite(block.reshape(len(steps), -1))).any(1).nonzero()[0])
                raise TrajectoryError(f"{where(models[i].info(name).file, steps[i], name)}: NaN/Inf weights "
                                      f"(rows {start}:{stop})")
            yield start, stop, block


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc():
    """glibc with mallinfo2 (2.33+), else None (macOS, musl, older glibc: nothing to do)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallinfo2.restype = _Mallinfo2
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        return lib
    except (OSError, AttributeError, TypeError):
        return None


_GLIBC = _glibc()


def release_free_heap(threshold: int = 1 << 29) -> bool:
    """If glibc's heaps hold more than `threshold` bytes of freed memory, hand it back to the OS
    (malloc_trim). Streaming passes allocate and free blocks of a few MiB per tensor; glibc keeps
    the freed ones, and their mix of sizes grew a RELEX run's anonymous RSS to 1.2-1.9 GiB of
    which a few hundred MiB were live (measured; 0.45-0.8 GiB with this, at a CPU cost within
    the noise for 512 MiB). Returns whether it trimmed."""
    if _GLIBC is None or _GLIBC.mallinfo2().fordblks <= threshold:
        return False
    _GLIBC.malloc_trim(0)
    return True


PREFETCH_RING = 3  # `iter_blocks(reuse=...)` ring behind `prefetch(depth=1)`: held + queued + being filled


def rows_per_block(shape, steps: int, max_elements: int) -> int:
    """Rows of dim 0 in each `iter_blocks` block of a tensor of `shape` read over `steps` steps."""
    row = 1
    for d in tuple(shape)[1:]:
        row *= int(d)
    return max(1, int(max_elements) // max(1, steps * row))


def tensor_stream(names, read) -> Iterator[tuple]:
    """(name, start, stop, block) for every block `read(name)` yields, tensor after tensor, then
    (name, None, None, None) at each tensor's end (so a tensor without rows still appears):
    one flat stream for `prefetch`, regrouped by the consumer with `by_tensor`."""
    for name in names:
        for start, stop, block in read(name):
            yield name, start, stop, block
        yield name, None, None, None


def by_tensor(stream) -> Iterator[tuple[str, Iterator[tuple[int, int, torch.Tensor]]]]:
    """A `tensor_stream` (behind `prefetch`) regrouped per tensor: (name, its (start, stop, block)
    in order), end markers dropped. A tensor's blocks are to be consumed before the next tensor."""
    for name, group in itertools.groupby(stream, key=operator.itemgetter(0)):
        yield name, ((start, stop, block) for _, start, stop, block in group if block is not None)


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
    """Yield `items`, produced by a background thread up to `depth` items ahead, so that reading
    (preads and copies, which release the GIL) overlaps the consumer's compute (numba, BLAS and
    torch release it too): on 2 cores a streaming pass then costs about the larger of the two
    instead of their sum. `items` is iterated in the background thread (blocks reused through
    `iter_blocks(reuse=PREFETCH_RING)` live in that thread's ring). An exception of the producer
    is raised in the consumer where its item would have come; closing the generator early (or
    an exception in the consumer) stops the producer and waits for it."""
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        it = iter(items)
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer
            put((end, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="rlvr-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join()


@contextmanager
def torch_threads(n: int = 1):
    """Run the body with `n` torch intra-op threads, then restore the caller's count (even on
    error). A no-op when the count is already `n`."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


def open_trajectory(cfg=None, **kwargs) -> Trajectory:
    """Open and validate a trajectory from `cfg.trajectory` (a DictConfig/dict/dataclass) and/or
    keyword overrides: path, base, hub_repo, hub_revision_prefix, steps, max_step, check_finite,
    trust_remote_code, cache_dir (default: RLVR_CACHE_DIR or ~/.cache/rlvr-linearity)."""
    unknown = set(kwargs) - set(KEYS)
    if unknown:
        raise TypeError(f"open_trajectory: unknown arguments {sorted(unknown)}")
    opt = {k: kwargs.get(k) if kwargs.get(k) is not None else _get(cfg, k) for k in KEYS}
    steps_req = None if opt["steps"] is None else sorted({int(s) for s in opt["steps"]})
    max_step = None if opt["max_step"] is None else int(opt["max_step"])
    check_finite = True if opt["check_finite"] is None else bool(opt["check_finite"])

    if opt["hub_repo"]:
        if opt["path"]:
            raise ConfigError("trajectory: set either trajectory.path or trajectory.hub_repo, not both")
        from rlvr_linearity.paths import cache_dir

        cache = Path(opt["cache_dir"]).expanduser() if opt["cache_dir"] else cache_dir()
        repo, prefix = str(opt["hub_repo"]), str(opt["hub_revision_prefix"] or "step_")
        if steps_req is not None and max_step is None:
            wanted = steps_req
        else:
            avail = hub_steps(repo, prefix, hub_cache_dir(cache, repo))
            wanted = _select(avail, steps_req, max_step, where_=f"trajectory.hub_repo {repo}")
        root = fetch_hub_trajectory(repo, [s for s in wanted if s != 0 or not opt["base"]], cache, prefix)
        found = [f for f in discover(root) if f.step in set(wanted)]
    elif opt["path"]:
        try:
            root = Path(str(opt["path"])).expanduser().resolve()
        except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
            raise TrajectoryError(f"{where(opt['path'])}: cannot resolve the trajectory path ({e})") from None
        found = discover(root)
        avail = [f.step for f in found]
        wanted = _select(avail, steps_req, max_step, where_=str(root))
        found = [f for f in found if f.step in set(wanted) or f.step == 0]
    else:
        raise ConfigError("trajectory: set trajectory.path=DIR (or trajectory.hub_repo=ORG/NAME)")

    models: dict[int, ModelFiles] = {}
    for f in found:
        models[f.step] = _open_found(f)
    if opt["base"]:
        if 0 in models:
            log.info("trajectory.base given: it replaces the trajectory's own step 0 (%s)", models[0].path)
        models[0] = ModelFiles(resolve_model_path(str(opt["base"])), step=0)
    elif 0 not in models:
        models[0] = ModelFiles(_base_from_run(root, found), step=0)
    if len(models) < 2:
        raise TrajectoryError(f"{where(root)}: no checkpoints besides the base model")
    log.info("trajectory %s: base %s, steps %s", root, models[0].path, sorted(models)[1:])
    return Trajectory(models, path=root, check_finite=check_finite)


def _open_found(f: Found) -> ModelFiles:
    if f.layout == "verl_fsdp":
        from .verl_fsdp import FsdpShardFiles

        return FsdpShardFiles(f.dir, step=f.step)
    return ModelFiles(f.dir, step=f.step)


def _select(avail: list[int], steps_req, max_step, where_: str) -> list[int]:
    """Steps kept by trajectory.steps / trajectory.max_step (0 is always kept if present)."""
    if steps_req is not None:
        missing = [s for s in steps_req if s not in avail and s != 0]
        if missing:
            raise TrajectoryError(f"{where_}: requested step(s) {missing} not found (available: {avail})")
        chosen = [s for s in avail if s in steps_req or s == 0]
    else:
        chosen = list(avail)
    if max_step is not None:
        chosen = [s for s in chosen if s <= max_step]
    if not [s for s in chosen if s != 0]:
        raise TrajectoryError(f"{where_}: no checkpoints left after trajectory.steps={steps_req} "
                              f"max_step={max_step} (available: {avail})")
    return chosen


def _base_from_run(root: Path, found: list[Found]) -> Path:
    """The base recorded by the run: trajectory.json, else the verl config; else an error."""
    meta = trajectory_json(root)
    if meta and meta.get("base"):
        spec = str(meta["base"])
        rel = root / spec
        if not Path(spec).is_absolute() and rel.exists():
            spec = str(rel)
        listed = [int(s) for s in meta.get("steps") or []]
        have = {f.step for f in discover(root)}
        gone = [s for s in listed if s not in have]
        if gone:
            raise TrajectoryError(f"{where(root / 'trajectory.json')}: lists step(s) {gone} that are not on disk")
        return resolve_model_path(spec, what=f"base model named in {root / 'trajectory.json'}")
    hint = verl_base_hint(root, found)
    if hint:
        return resolve_model_path(hint, what="base model from the verl run's config")
    raise TrajectoryError(f"{where(root)}: missing base model: the trajectory holds no step 0 and no "
                          "trajectory.json; set trajectory.base=PATH_OR_HUB_ID")
