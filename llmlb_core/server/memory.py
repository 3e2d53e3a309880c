"""Give large freed buffers back to the operating system (glibc malloc).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and
unmaps it on ``free``. The threshold starts at 128 KiB but rises, up to 32 MiB, each time such a
block is freed, so after the first decoded image (Pillow allocates pixels in 16 MiB blocks) every
later one comes from the heap arenas, and freed arena memory mostly stays resident. Measured
with the router at d01a649 (bench/upload_memory.py): a second edit with four 4096x4096 PNGs left
258 MB resident for good.

Fixing the threshold at 1 MiB keeps every image buffer and large body an ``mmap`` of its own,
returned on free; smaller allocations are unchanged. The price is fresh pages for each large
buffer: a 4096x4096 PNG decode takes ~20% more CPU (the router no longer decodes PNGs, the node
decodes one image per edit); copying 1.5 MB bodies measured the same. Elsewhere than glibc this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("llmlb.memory")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1024 * 1024


def release_large_frees() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where that is not possible."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; freed image memory may stay resident")
    return ok
