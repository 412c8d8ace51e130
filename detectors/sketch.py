"""A mergeable, bounded quantile sketch for latencies.

Exact percentiles need every value of a window kept until the window closes:
at 10,000 events/s and a 60 s window that is 600,000 floats per model version,
rewritten to the state changelog on every checkpoint. The sketch below keeps
counts in logarithmic buckets instead (the DDSketch construction): every
quantile it returns is within a relative error ``alpha`` of a true value of the
data, its size is bounded by the dynamic range of the values (about 1,400
buckets from 1 µs to 1 hour at 1 %), and two sketches merge by adding counts,
so micro-batches fold into a window in any order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["LatencySketch"]


class LatencySketch:
    """Log-bucketed quantile sketch with relative accuracy ``alpha``.

    Parameters
    ----------
    alpha
        Relative accuracy of every quantile, in (0, 1).
    min_value
        Values at or below this go to a single "zero" bucket.

    Examples
    --------
    >>> import numpy as np
    >>> sk = LatencySketch(alpha=0.01)
    >>> sk.add_many(np.arange(1, 1001, dtype=float))
    >>> abs(sk.quantile(0.99) - 990) / 990 <= 0.01   # the exact p99 is 990
    True
    >>> sk.count
    1000
    """

    def __init__(self, alpha: float = 0.01, min_value: float = 1e-3) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if min_value <= 0:
            raise ValueError("min_value must be > 0")
        self.alpha = alpha
        self.min_value = min_value
        self._gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zero = 0
        self._max = -math.inf

    @property
    def count(self) -> int:
        return self._zero + sum(self._buckets.values())

    def bucket_index(self, values: np.ndarray) -> np.ndarray:
        """Bucket of each value; values at or below ``min_value`` get -2**31."""
        safe = np.maximum(values, self.min_value)
        idx = np.ceil(np.log(safe) / self._log_gamma).astype(np.int64)
        return np.where(values <= self.min_value, np.iinfo(np.int32).min, idx)

    def add_many(self, values: np.ndarray) -> None:
        """Fold an array of non-negative values into the sketch."""
        if values.size == 0:
            return
        idx, counts = np.unique(self.bucket_index(values), return_counts=True)
        self.add_counts(idx.tolist(), counts.tolist(), float(values.max()))

    def add_counts(self, buckets: list[int], counts: list[int], max_value: float) -> None:
        """Fold pre-bucketed counts (from :meth:`bucket_index`) into the sketch."""
        zero_bucket = np.iinfo(np.int32).min
        for b, c in zip(buckets, counts, strict=True):
            if b == zero_bucket:
                self._zero += c
            else:
                self._buckets[b] = self._buckets.get(b, 0) + c
        self._max = max(self._max, max_value)

    def merge(self, other: LatencySketch) -> None:
        if other._gamma != self._gamma:
            raise ValueError("cannot merge sketches of different accuracy")
        for b, c in other._buckets.items():
            self._buckets[b] = self._buckets.get(b, 0) + c
        self._zero += other._zero
        self._max = max(self._max, other._max)

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` (nearest rank), NaN for an empty sketch."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        n = self.count
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q * n))
        seen = self._zero
        if seen >= rank:
            return 0.0
        for b in sorted(self._buckets):
            seen += self._buckets[b]
            if seen >= rank:
                # The bucket covers (gamma**(b-1), gamma**b]; this point is within
                # alpha of every value in it. Never report above the true maximum.
                return min(2 * self._gamma**b / (self._gamma + 1), self._max)
        return self._max  # pragma: no cover - unreachable: ranks sum to n

    @property
    def max(self) -> float:
        return self._max if self.count else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "min_value": self.min_value,
            "zero": self._zero,
            "max": self._max if self.count else None,
            "buckets": [[b, c] for b, c in sorted(self._buckets.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySketch:
        sk = cls(alpha=data["alpha"], min_value=data["min_value"])
        sk._zero = int(data["zero"])
        sk._buckets = {int(b): int(c) for b, c in data["buckets"]}
        sk._max = -math.inf if data["max"] is None else float(data["max"])
        return sk
