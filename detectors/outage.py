"""Outage: a model that was serving stopped sending events.

"No data" is not "healthy": window checks say nothing about a model that sends
nothing, so this check runs on the wall clock. It learns the model's typical
gap between arrivals (an exponentially weighted mean, ignoring gaps that were
themselves outages) and calls an outage when the silence lasts longer than
``max(k x typical gap, floor_s)``. It arms only after ``min_arrivals`` arrivals,
so a model seen once is not "down" forever after.
"""

from __future__ import annotations

from typing import Any

from detectors.base import Signal
from detectors.contract import Severity, dedup_key

__all__ = ["OutageDetector"]


class OutageDetector:
    """Silence longer than the learned typical inter-arrival time.

    >>> det = OutageDetector("m", k=5, floor_s=10, min_arrivals=3)
    >>> for t in (0.0, 1.0, 2.0, 3.0):
    ...     _ = det.observe(t)
    >>> det.check(8.0) is None        # 5 s of silence < floor of 10 s
    True
    >>> det.check(14.0).active
    True
    >>> det.observe(15.0).active      # traffic is back
    False
    """

    def __init__(self, model: str, k: float = 10.0, floor_s: float = 60.0,
                 min_arrivals: int = 10, alpha: float = 0.1,
                 severity: Severity = "critical") -> None:
        if k <= 0 or floor_s <= 0:
            raise ValueError("k and floor_s must be > 0")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.model = model
        self.k = k
        self.floor_s = floor_s
        self.min_arrivals = min_arrivals
        self.alpha = alpha
        self.severity = severity
        self._last: float | None = None
        self._gap: float | None = None
        self._arrivals = 0

    @property
    def limit_s(self) -> float:
        return max(self.k * (self._gap or 0.0), self.floor_s)

    @property
    def armed(self) -> bool:
        return self._arrivals >= self.min_arrivals

    def observe(self, now: float) -> Signal:
        """Record an arrival at wall-clock ``now``; the outage, if any, is over."""
        if self._last is not None:
            gap = max(0.0, now - self._last)
            if gap <= self.limit_s:  # an outage's gap is not a typical gap
                g = self._gap
                self._gap = gap if g is None else (1 - self.alpha) * g + self.alpha * gap
        silence = 0.0 if self._last is None else now - self._last
        self._last = now
        self._arrivals += 1
        return self._signal(now, False, silence)

    def check(self, now: float) -> Signal | None:
        """An active signal when the model has been silent too long, else None."""
        if not self.armed or self._last is None:
            return None
        silence = now - self._last
        if silence <= self.limit_s:
            return None
        return self._signal(now, True, silence)

    def grace(self, now: float) -> None:
        """Restart the silence clock (after a takeover: we were not listening)."""
        if self._last is not None:
            self._last = max(self._last, now)

    def _signal(self, now: float, active: bool, silence: float) -> Signal:
        summary = (f"{self.model}: no predictions for {silence:.0f} s "
                   f"(limit {self.limit_s:.0f} s)" if active
                   else f"{self.model}: predictions flowing again after {silence:.0f} s")
        return Signal(
            check="outage", key=dedup_key("outage", self.model), active=active,
            severity=self.severity, summary=summary, timestamp=now, model=self.model,
            details={"statistic": "silence_s", "value": round(silence, 3),
                     "threshold": round(self.limit_s, 3),
                     "typical_gap_s": None if self._gap is None else round(self._gap, 4),
                     "k": self.k, "floor_s": self.floor_s},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"last": self._last, "gap": self._gap, "arrivals": self._arrivals}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._last, self._gap, self._arrivals = data["last"], data["gap"], data["arrivals"]
