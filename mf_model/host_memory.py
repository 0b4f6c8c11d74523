"""Host memory the process gives back between the sampler's phases.

glibc's malloc keeps freed heap blocks mapped for reuse. A CPU edit frees gigabytes of activations after every
UNet call and guidance backward; without a trim those fragments stay in the process's RSS (2-3 GiB above the
resident weights at sd15 256² on a CPU) and add to the next phase's peak, which is what a Ray node's memory monitor
sees. ``malloc_trim(0)`` hands them back; it costs tens of milliseconds against calls of seconds to minutes.

Within a phase the opposite holds: glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on free, so each large activation tensor is faulted in and zeroed page by page, again and
again. :func:`reuse_freed_blocks` serves them from the heap instead and keeps freed blocks for the next tensor until
the phase's trim (the reason PyTorch's CPU tuning guide suggests jemalloc or tcmalloc): at sd15 256²/8 frames on one
thread a guidance call in an edit takes 33-34 s instead of 37 s (a batch-2 UNet forward alone: 29.8 s instead of
34.2 s), for a 0.1 GiB higher peak. Elsewhere (not glibc) both are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Optional

log = logging.getLogger(__name__)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def _glibc(symbol: str) -> Optional[Callable[..., int]]:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), symbol) if name else None
    except (OSError, AttributeError):
        return None


@lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    fn = _glibc("malloc_trim")
    if fn is None:
        log.debug("no glibc malloc_trim here: freed host memory stays with the allocator")
    return fn


@lru_cache(maxsize=1)
def reuse_freed_blocks() -> bool:
    """Large blocks from the heap, not one ``mmap`` each, and freed blocks kept until :func:`release_host_memory`
    (process-wide, once; True when set). For processes that run the model on the CPU."""
    mallopt = _glibc("mallopt")
    if mallopt is None or not mallopt(M_MMAP_MAX, 0):
        return False
    mallopt(M_TRIM_THRESHOLD, _INT_MAX)  # no trim on every free at the top of the heap: the phases trim
    log.debug("glibc malloc: large blocks from the heap, trimmed after each phase")
    return True


def release_host_memory() -> bool:
    """Return the allocator's free heap memory to the OS; True when that was possible."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
