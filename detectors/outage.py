"""Outage: a model that was serving stopped sending events.

"No data" is not "healthy": window checks say nothing about a model that sends
nothing, so this check runs on the wall clock. It learns the model's typical
gap between arrivals (an exponentially weighted mean, ignoring gaps that were
themselves outages) and calls an outage when the silence lasts longer than
``max(k x typical gap, floor_s)``. It arms only after ``min_arrivals`` arrivals,
so a model seen once is not "down" forever after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key

__all__ = ["OutageDetector"]


class OutageDetector:
    """Silence longer than the learned typical inter-arrival time.

    It follows the detector protocol for what arrives (``update`` with the
    arrivals' wall-clock times: the silence, if any, is over), but an outage is
    the *absence* of a batch, so no batch can reveal it: :meth:`check` is called
    on the wall clock instead, by the worker's timer, and says whether the
    silence has lasted too long.

    Parameters
    ----------
    model
        The model (an outage is per model, not per version).
    k
        Multiple of the typical gap that counts as an outage.
    floor_s
        The shortest silence that counts, whatever the typical gap.
    min_arrivals
        Arrivals before the model counts as serving.
    alpha
        Weight of the newest gap in the typical gap.
    severity
        Of the alert.

    Examples
    --------
    About one arrival a second; after the 100th the model goes silent for two
    minutes. The worker's timer checks every second.

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> det = OutageDetector("churn-model", k=10, floor_s=5)
    >>> arrivals = np.cumsum(rng.exponential(1.0, 150))
    >>> arrivals[100:] += 120.0
    >>> now, i, firing = 0.0, 0, False
    >>> while i < arrivals.size:
    ...     if arrivals[i] <= now:
    ...         signals = det.update({"ts": arrivals[i:i + 1]})
    ...         i += 1
    ...     else:
    ...         signals = det.check(now)
    ...         now += 1.0
    ...     for s in signals:
    ...         if s.active != firing:
    ...             firing = s.active
    ...             print(f"{s.timestamp:.0f} s: {s.summary}")
    98 s: churn-model: no predictions for 8 s (limit 8 s)
    211 s: churn-model: predictions flowing again after 121 s
    """

    inputs = ("ts",)

    def __init__(self, model: str, *, k: float = 10.0, floor_s: float = 60.0,
                 min_arrivals: int = 10, alpha: float = 0.1,
                 severity: Severity = "critical") -> None:
        if not (k > 0 and floor_s > 0):
            raise ValueError("k and floor_s must be > 0")
        if not min_arrivals >= 0:
            raise ValueError("min_arrivals must be >= 0")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        check_severity(severity)
        self.model = model
        self.k = k
        self.floor_s = floor_s
        self.min_arrivals = min_arrivals
        self.alpha = alpha
        self.severity = severity
        self._last: float | None = None
        self._gap: float | None = None
        self._arrivals = 0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"model": "m"}
        yield {"model": "m", "k": 5.0, "floor_s": 10.0, "min_arrivals": 3, "alpha": 0.5,
               "severity": "error"}

    @property
    def key(self) -> str:
        return dedup_key("outage", self.model)

    @property
    def limit_s(self) -> float:
        return max(self.k * (self._gap or 0.0), self.floor_s)

    @property
    def armed(self) -> bool:
        return self._arrivals >= self.min_arrivals

    def update(self, batch: Batch) -> list[Signal]:
        """Record arrivals (``ts``: wall clock); an inactive signal at the first one, whose
        silence just ended (the outage, if any, is over)."""
        out: list[Signal] = []
        for now in batch["ts"].tolist():
            if self._last is not None:
                gap = max(0.0, now - self._last)
                if gap <= self.limit_s:  # an outage's gap is not a typical gap
                    g = self._gap
                    self._gap = gap if g is None else (1 - self.alpha) * g + self.alpha * gap
            silence = 0.0 if self._last is None else now - self._last
            self._last = now
            self._arrivals += 1
            if not out:
                out.append(self._signal(now, False, silence))
        return out

    def check(self, now: float) -> list[Signal]:
        """An active signal when the model has been silent too long at wall-clock ``now``."""
        if not self.armed or self._last is None:
            return []
        silence = now - self._last
        if silence <= self.limit_s:
            return []
        return [self._signal(now, True, silence)]

    def grace(self, now: float) -> None:
        """Restart the silence clock (after a takeover: we were not listening)."""
        if self._last is not None:
            self._last = max(self._last, now)

    def _signal(self, now: float, active: bool, silence: float) -> Signal:
        summary = (f"{self.model}: no predictions for {silence:.0f} s "
                   f"(limit {self.limit_s:.0f} s)" if active
                   else f"{self.model}: predictions flowing again after {silence:.0f} s")
        return Signal(
            check="outage", key=self.key, active=active,
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
