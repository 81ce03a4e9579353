"""Process resources the streaming reads manage: torch's thread count around memory-bound block
copies, and freed heap handed back to the OS after large blocks."""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager

import torch


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
