"""glibc malloc settings for the vehicle lane's low-memory mode (``vehicle.plate_low_memory``).

Why: glibc serves a block of 128 KiB or more with its own mmap, but the first time such a block is
freed it raises that threshold to the block's size (up to 32 MiB). After the plate detector's first
run its activations (one ~13 MB buffer per 640 px pass, and the 3.7 MB input blob) come from the
malloc arenas instead, where they fragment and stay resident between reads. With a fixed threshold
every block of 1 MiB or more has its own mapping, handed back to the system when it is freed; camera
frames (0.9 MB at 640×480) stay below it, so a frame does not cost a fresh mapping. Measured on the
vehicle-lane daemon (bench/vehicle_rss.py; README, *The vehicle lane on the box*): RSS median
168–170 → 162 MB, max 175–189 → 165–168 MB (0.1 s samples: 188–202 → 175–180 MB), a plate read's
peak 21 → 13 MB above its start; no per-frame cost the bench can see.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache
from typing import Any

log = logging.getLogger("station.ops.malloc")

LARGE_ALLOCATION_BYTES = 1 << 20  # 1 MiB: above a 640×480 BGR frame, below the detector's buffers
_M_MMAP_THRESHOLD = -3  # <malloc.h>


@lru_cache(maxsize=1)
def _mallopt() -> Any:
    """Return glibc's ``mallopt`` (None where the C library has none, e.g. musl)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def mmap_large_allocations(threshold: int = LARGE_ALLOCATION_BYTES) -> bool:
    """Serve every malloc of ``threshold`` bytes or more from its own mapping, for the process's life; False where unsupported."""
    fn = _mallopt()
    if fn is None:
        log.warning("mallopt unavailable: large allocations follow the C library's own policy")
        return False
    ok = bool(fn(_M_MMAP_THRESHOLD, int(threshold)))
    if ok:
        log.info("malloc large allocations mmapped threshold_bytes=%d", threshold)
    return ok
