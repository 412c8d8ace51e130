"""The worker's thread pools: numpy's BLAS pool kept to what a worker process needs."""

from __future__ import annotations

__all__ = ["limit_threads"]


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
