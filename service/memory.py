"""Process-wide memory allocator settings, applied once at gateway start-up.

glibc's malloc gives each thread that contends for the heap an arena of its own (up to 8 per
core), and memory freed in an arena mostly stays with the process. The gateway's worker threads
(crops, heatmap decoding, the inference pool) allocate tens of megabytes per request, so under
load every thread's arena grows to its own peak and RSS keeps most of it. Capping the arenas
(glibc's ``mallopt(M_ARENA_MAX, n)``, the in-process form of ``MALLOC_ARENA_MAX``) makes the
threads share them: measured with 200 clients on the photo set (PP-TinyPose, one run, both
gateways side by side), peak RSS 373 / 423 MiB with 2 arenas vs 421 / 515 MiB without (flip
off / on), the same requests per second; two more runs: 1.43x / 1.42x the idle RSS with 2 arenas,
1.67x / 1.75x without. The price: threads sharing arenas fault in their per-request arrays more
often, 1-2 points more of a one-client request's time outside inference (benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("service")

#: glibc's ``M_ARENA_MAX`` parameter number for ``mallopt`` (malloc.h)
M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc malloc's arenas at ``arenas`` for this process (call before the worker threads
    start: arenas already made stay). ``arenas`` 0 leaves glibc's default (nothing is called).
    Returns True when the cap was set; False where the C library is not glibc (musl, macOS) or
    refuses it, which is logged and otherwise harmless. Raises ValueError for a negative count."""
    if arenas < 0:
        raise ValueError(f"malloc arenas must be >= 0 (0: the C library's default), got {arenas}")
    if arenas == 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("malloc arenas not capped: no glibc mallopt in %s", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.info("malloc arenas not capped: mallopt(M_ARENA_MAX, %d) refused", arenas)
    return ok
