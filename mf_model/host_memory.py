"""Host memory the process gives back between the sampler's phases.

glibc's malloc keeps freed heap blocks mapped for reuse. A CPU edit frees gigabytes of activations after every
UNet call and guidance backward; without a trim those fragments stay in the process's RSS (2-3 GiB above the
resident weights at sd15 256² on a CPU) and add to the next phase's peak, which is what a Ray node's memory monitor
sees. ``malloc_trim(0)`` hands them back; it costs tens of milliseconds against calls of seconds to minutes.
Elsewhere (not glibc) it is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Optional

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        fn = None
    if fn is None:
        log.debug("no glibc malloc_trim here: freed host memory stays with the allocator")
    return fn


def release_host_memory() -> bool:
    """Return the allocator's free heap memory to the OS; True when that was possible."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
