"""The worker process's tuning: the garbage collector's pace, numpy's BLAS thread pool,
glibc's malloc arenas.

The worker applies the first two (and ``bench/throughput.py`` too, so that it
measures the worker's arithmetic); the ``sentinelle`` command caps the arenas
before it imports anything else (:func:`cap_malloc_arenas`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform

__all__ = ["GC_THRESHOLDS", "MALLOC_ARENAS", "cap_malloc_arenas", "limit_threads", "tune_gc"]

#: glibc's malloc arenas in a ``sentinelle`` process, unless ``MALLOC_ARENA_MAX`` says
#: otherwise. glibc gives each thread that allocates its own arena, up to 8 per core,
#: and memory freed in one arena serves only that arena's threads: Faust reads Kafka in
#: a thread of its own, whose records (tens of kB each in the batch form) are freed by
#: the main thread. Measured with ``bench/e2e.py --only batch`` (2026-12-04, this 2-core
#: machine, one worker): peak RSS 286, 290, 295, 297, 301 and 309 MB with glibc's
#: default against 275, 276 and 287 MB with two arenas, at the same speed (the Faust
#: pass-through's, in the same runs, did not change either).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (``mallopt(M_ARENA_MAX)``), as the
    ``MALLOC_ARENA_MAX`` environment variable would; True if done.

    Nothing when that variable is set (glibc already honours it) or the C library is
    not glibc. It binds only threads that have not allocated yet: the ``sentinelle``
    command calls it first thing, before numpy and Polars start theirs (called later,
    a process measured 4 arenas instead of 2).
    """
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def limit_threads(blas: int) -> None:
    """numpy's BLAS pool down to ``blas`` threads (``worker.blas_threads``), for the
    process's lifetime. OpenBLAS starts a thread per core and spreads any product past
    a small size over them; a worker's products are small (a micro-batch's block counts
    times a bank of alternatives), so the threads mostly spin waiting for work, on
    cores that the broker and the other workers need. Measured without Kafka
    (``bench/throughput.py``, batch form, 30,000 events per call, 2 cores): the
    reference checks cost 10.7 us of CPU per event with OpenBLAS's default pool, 3.7
    with one thread; no worse at smaller micro-batches."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=blas, user_api="blas")


#: The cyclic garbage collector's thresholds while the worker runs (Python's defaults:
#: 700, 10, 10). A micro-batch allocates hundreds of thousands of short-lived containers
#: (every event's dicts and columns), freed by reference counting, not by the collector;
#: at the defaults the collector still ran every 700 of them, scanning the live state
#: each time. Measured on the e2e workload (bench/e2e.py's, without Kafka): 14.8 ->
#: 12.4 us of CPU per prediction event.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Once, when the first micro-batch arrives: what was built at start (modules, the
    app, the profiles) is moved out of the collector's sight (``gc.freeze``), and the
    collector runs less often (:data:`GC_THRESHOLDS`). Objects are still freed when
    their last reference goes; only cycles wait longer to be collected."""
    if gc.get_threshold() != GC_THRESHOLDS:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
