"""Tensor-by-tensor streams of blocks: a reader per tensor chained into one stream, read ahead in
a background thread (`prefetch`) and regrouped per tensor by the consumer (`by_tensor`)."""

from __future__ import annotations

import itertools
import operator
import queue
import threading
from collections.abc import Iterable, Iterator

import torch


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
