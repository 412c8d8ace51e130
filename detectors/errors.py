"""Error-rate spike on closed windows."""

from __future__ import annotations

from typing import Any

from detectors.base import Signal
from detectors.contract import Severity, dedup_key
from detectors.slo import _window
from detectors.windows import WindowStats

__all__ = ["ErrorRateSpike"]


class ErrorRateSpike:
    """A window's error rate above ``max(threshold, factor x baseline)``.

    The baseline is an exponentially weighted mean of the series' error rate,
    learned only from windows that were not spiking, so a model that always fails
    2 % of requests is judged against 2 %, and the absolute ``threshold`` keeps a
    near-zero baseline from making one error an incident. The floor is also an
    absolute bound: a series that fails more than ``threshold`` from its very first
    window is firing from the start (there is no healthy baseline to learn) and
    resolves once a window is back under it.

    Parameters
    ----------
    threshold
        Absolute floor of the alerting error rate.
    factor
        Multiple of the learned baseline that counts as a spike.
    min_events
        Windows with fewer requests say nothing.
    alpha
        Weight of the newest window in the baseline.

    Examples
    --------
    >>> from detectors.windows import WindowStats
    >>> det = ErrorRateSpike(threshold=0.05, min_events=10)
    >>> ok = WindowStats("m", "v1", "stable", 0, 60, 100, 1, 0, 1, 1, 1, 1)
    >>> bad = WindowStats("m", "v1", "stable", 60, 120, 100, 30, 0, 1, 1, 1, 1)
    >>> det.update(ok).active, det.update(bad).active
    (False, True)
    """

    def __init__(self, threshold: float = 0.05, factor: float = 3.0, min_events: int = 20,
                 alpha: float = 0.1, severity: Severity = "error") -> None:
        if not 0 < threshold < 1:
            raise ValueError("threshold must be in (0, 1)")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.threshold = threshold
        self.factor = factor
        self.min_events = min_events
        self.alpha = alpha
        self.severity = severity
        self._baseline: float | None = None

    def update(self, w: WindowStats) -> Signal | None:
        if w.count < self.min_events:
            return None
        rate = w.error_rate
        limit = max(self.threshold, self.factor * (self._baseline or 0.0))
        active = rate > limit
        if not active:
            b = self._baseline
            self._baseline = rate if b is None else (1 - self.alpha) * b + self.alpha * rate
        return Signal(
            check="error_rate",
            key=dedup_key("error_rate", w.model, w.version, w.cohort, "spike"),
            active=active,
            severity=self.severity,
            summary=(f"{w.model} {w.version}: error rate {rate:.1%} "
                     f"{'>' if active else '<='} {limit:.1%} ({w.errors} of {w.count} requests)"),
            timestamp=w.end,
            model=w.model,
            version=w.version,
            details={"statistic": "error_rate", "value": round(rate, 5),
                     "threshold": round(limit, 5), "baseline": self._baseline,
                     "errors": w.errors, "cohort": w.cohort, "window": _window(w)},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self._baseline}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._baseline = data["baseline"]
