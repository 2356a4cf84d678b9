"""Process-level performance settings that are not model code.

glibc returns freed blocks above ~32 MB to the OS at once and maps them again on the next step; the
activations of a VSR training step are exactly such blocks. Measured on a 2-core CPU (see
docs/performance.md) keeping them in the heap made training steps markedly faster. ``tune_allocator``
does this with ``mallopt`` at run time; it is a no-op off glibc or on failure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_done = False


def tune_allocator() -> bool:
    """Disable mmap for large blocks and raise the trim threshold (glibc only). Returns success."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
