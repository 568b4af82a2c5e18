"""glibc malloc settings for processes that run the same model batches over and over.

By default glibc hands large freed blocks back to the kernel (blocks over its mmap threshold are unmapped
when freed, and free memory at the top of a heap is trimmed), so the next batch's tensors fault their
pages in again, each page zeroed by the kernel. In the geotag job's actors that came to thousands of
page faults per clip for the perception and RFM stages; with these settings, a few hundred at most.
Keeping freed memory in the process trades a resident set that stays at the stage's high-water mark for
that work; `tests/test_allocator.py` shows the mechanism on a 64 MiB block.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
"""mallopt parameter: free memory at the top of the heap above this many bytes is returned to the kernel."""
M_TOP_PAD = -2
"""mallopt parameter: extra bytes requested from the kernel whenever the heap grows."""
M_MMAP_THRESHOLD = -3
"""mallopt parameter: blocks this large or larger get their own mapping, unmapped when freed."""

MMAP_THRESHOLD_BYTES = 1 << 30
"""Model batches' tensors (a perception batch's frames as float32 are ~80 MB) stay on the heap."""
TRIM_THRESHOLD_BYTES = 1 << 30
"""Freed heap memory stays in the process up to this much (mallopt takes a C int: at most 2 GiB - 1)."""
TOP_PAD_BYTES = 256 << 20
"""The heap grows in steps this large, so a batch's first tensors do not grow it page by page."""


def retain_freed_memory() -> bool:
    """Set this process's glibc malloc to keep freed memory for reuse; False (nothing set) where the C
    library is not glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
    )
    return all(libc.mallopt(parameter, ctypes.c_int(value)) == 1 for parameter, value in settings)
