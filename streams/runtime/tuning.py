"""The worker process's tuning: the garbage collector's pace, numpy's BLAS thread pool.

The worker applies both (and ``bench/throughput.py`` too, so that it measures
the worker's arithmetic).
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "limit_threads", "tune_gc"]


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
