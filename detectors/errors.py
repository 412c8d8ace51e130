"""Error-rate spike on closed windows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from detectors.base import Batch, Signal, check_severity
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
    model, version, cohort
        The series (its closed windows are the input).
    threshold
        Absolute floor of the alerting error rate.
    factor
        Multiple of the learned baseline that counts as a spike.
    min_events
        Windows with fewer requests say nothing.
    alpha
        Weight of the newest window in the baseline.
    severity
        Of the alert.

    Examples
    --------
    A model that always fails about 3 % of its requests (above 3 x 1 % it would
    be judged by the floor alone), then 15 % from window 50 to 54.

    >>> import numpy as np
    >>> from detectors.windows import WindowStats
    >>> rng = np.random.default_rng(42)
    >>> det = ErrorRateSpike("recommender", "v3", threshold=0.05)
    >>> firing = False
    >>> for i in range(60):
    ...     p = 0.15 if 50 <= i < 55 else 0.03
    ...     w = WindowStats("recommender", "v3", "stable", 60.0 * i, 60.0 * (i + 1), 400,
    ...                     int(rng.binomial(400, p)), 0, 10.0, 20.0, 30.0, 40.0)
    ...     for s in det.update({"windows": [w]}):
    ...         if s.active != firing:
    ...             firing = s.active
    ...             print(f"window {i}: {s.summary}")
    window 50: recommender v3: error rate 16.2% > 8.8% (65 of 400 requests)
    window 55: recommender v3: error rate 2.2% <= 8.8% (9 of 400 requests)
    """

    inputs = ("windows",)

    def __init__(self, model: str, version: str, cohort: str = "stable", *,
                 threshold: float = 0.05, factor: float = 3.0, min_events: int = 20,
                 alpha: float = 0.1, severity: Severity = "error") -> None:
        if not 0 < threshold < 1:
            raise ValueError("threshold must be in (0, 1)")
        if not factor >= 1:
            raise ValueError("factor must be >= 1")
        if not min_events >= 1:
            raise ValueError("min_events must be >= 1")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        check_severity(severity)
        self.model, self.version, self.cohort = model, version, cohort
        self.threshold = threshold
        self.factor = factor
        self.min_events = min_events
        self.alpha = alpha
        self.severity = severity
        self._baseline: float | None = None

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"model": "m", "version": "v1"}
        yield {"model": "m", "version": "v1", "cohort": "canary", "threshold": 0.1,
               "factor": 2.0, "alpha": 0.5, "min_events": 10, "severity": "warning"}

    @property
    def key(self) -> str:
        return dedup_key("error_rate", self.model, self.version, self.cohort, "spike")

    def update(self, batch: Batch) -> list[Signal]:
        """One signal per window of at least ``min_events`` requests."""
        return [self._judge(w) for w in batch["windows"] if w.count >= self.min_events]

    def _judge(self, w: WindowStats) -> Signal:
        rate = w.error_rate
        limit = max(self.threshold, self.factor * (self._baseline or 0.0))
        active = rate > limit
        if not active:
            b = self._baseline
            self._baseline = rate if b is None else (1 - self.alpha) * b + self.alpha * rate
        return Signal(
            check="error_rate",
            key=self.key,
            active=active,
            severity=self.severity,
            summary=(f"{self.model} {self.version}: error rate {rate:.1%} "
                     f"{'>' if active else '<='} {limit:.1%} ({w.errors} of {w.count} requests)"),
            timestamp=w.end,
            model=self.model,
            version=self.version,
            details={"statistic": "error_rate", "value": round(rate, 5),
                     "threshold": round(limit, 5), "baseline": self._baseline,
                     "errors": w.errors, "cohort": self.cohort, "window": _window(w)},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self._baseline}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._baseline = data["baseline"]
