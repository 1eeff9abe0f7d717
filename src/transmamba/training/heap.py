"""Keep freed memory in the process for reuse (glibc), so big tensors stop page-faulting each step.

glibc serves every allocation of >= 32 MiB (its largest mmap threshold) with a fresh mmap and
unmaps it on free. A training step allocates dozens of such tensors (the embedding's gradient,
its bf16 copy, optimizer temporaries, vocabulary-sized logit chunks), so every step touches them
anew: ~550k minor page faults per SmolLM2-student distillation step on this VM, about a quarter
of the step (`transmamba bench distill`). `retain_freed_memory()` turns mmap off for the heap
(M_MMAP_MAX = 0; glibc falls back to it only where the heap cannot grow) and stops trimming
(M_TRIM_THRESHOLD = 1 GiB), so freed blocks are reused: 0 faults per step in steady state.
The cost: the process keeps its peak resident size. No-op off glibc.

`release_freed_memory()` is the opposite, for measuring peak memory (`bench.harness`): inside it,
freed blocks of >= 256 KiB go back to the OS at once, so a later call that peaks inside pages an
earlier call freed does not read as ~0 MiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4  # glibc malloc.h
RETAIN = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
DEFAULTS = ((M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 << 10), (M_TOP_PAD, 128 << 10))  # mallopt(3)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_state = {"retained": False}


def _mallopt(libc, settings) -> bool:
    return all([bool(libc.mallopt(param, value)) for param, value in settings])


def retain_freed_memory(on: bool = True) -> bool:
    """Heap reuse on (see the module docstring) or back to glibc's defaults; True if applied."""
    libc = _libc()
    if libc is None:
        return False
    ok = _mallopt(libc, RETAIN if on else DEFAULTS)
    if not on:
        libc.malloc_trim(0)
    _state["retained"] = ok and on
    return ok


def is_retaining() -> bool:
    return _state["retained"]


@contextlib.contextmanager
def release_freed_memory():
    """Inside: freed blocks >= 256 KiB go back to the OS (trimmed first). After: mmap threshold
    32 MiB and trim threshold 64 MiB, and retention again if it was on."""
    libc = _libc()
    if libc is None:
        yield
        return
    retained = is_retaining()
    if retained:
        retain_freed_memory(False)
    _mallopt(libc, ((M_MMAP_THRESHOLD, 256 << 10), (M_TRIM_THRESHOLD, 256 << 10)))
    libc.malloc_trim(0)
    try:
        yield
    finally:
        _mallopt(libc, ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20)))
        if retained:
            retain_freed_memory(True)
