"""Latency and availability SLO checks on closed windows.

Two complementary rules:

- :class:`LatencyThreshold`: a window's p99 latency above a fixed bound. Simple,
  fast to explain, and it resolves as soon as one window is back under.
- :class:`BurnRate`: the multi-window, multi-burn-rate rule of the Google SRE
  workbook ("Alerting on SLOs", ch. 5). The SLI is the share of *bad* requests
  (slower than the SLO bound, or not ``ok``); the burn rate is that share over
  the error budget ``1 - objective``. A rule fires when the burn rate exceeds its
  factor over both a long and a short window: the long one proves the budget is
  really being spent, the short one makes the alert resolve soon after the
  problem stops. Defaults are the workbook's: 14.4x over 1 h and 5 min (2 % of a
  30-day budget in an hour: page), 6x over 6 h and 30 min (5 % in 6 hours: ticket).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key
from detectors.windows import WindowStats

__all__ = ["LatencyThreshold", "BurnRate", "BurnRule", "DEFAULT_BURN_RULES"]


class LatencyThreshold:
    """p99 latency of a window above ``threshold_ms``.

    Windows with fewer than ``min_events`` requests say nothing: a p99 of five
    requests is noise, and "no data" must not read as "healthy". Every other
    window gets a signal, active while its p99 is strictly above the bound.

    Parameters
    ----------
    model, version, cohort
        The series (its closed windows are the input).
    threshold_ms
        The p99 bound, in milliseconds.
    min_events
        Windows with fewer requests say nothing.
    severity
        Of the alert.

    Examples
    --------
    One-minute windows of 200 requests; from window 30 to 39 the service is
    three times slower. Printed: where the signal changes.

    >>> import random
    >>> from detectors.windows import WindowStats
    >>> rng = random.Random(42)
    >>> det = LatencyThreshold("fraud-scorer", "v7", threshold_ms=500)
    >>> p99s = [rng.gauss(300, 60) for _ in range(30)] + [rng.gauss(900, 150) for _ in range(10)]
    >>> p99s += [rng.gauss(300, 60) for _ in range(10)]
    >>> firing = False
    >>> for i, p99 in enumerate(p99s):
    ...     w = WindowStats("fraud-scorer", "v7", "stable", 60.0 * i, 60.0 * (i + 1), 200, 0,
    ...                     0, p99 / 3, p99 / 1.5, p99, p99)
    ...     for s in det.update({"windows": [w]}):
    ...         if s.active != firing:
    ...             firing = s.active
    ...             print(f"window {i}: {s.summary}")
    window 30: fraud-scorer v7: p99 latency 985 ms > 500 ms over 200 requests
    window 40: fraud-scorer v7: p99 latency 295 ms <= 500 ms over 200 requests
    >>> det.key
    'latency_slo:fraud-scorer:v7:p99'
    """

    inputs = ("windows",)

    def __init__(self, model: str, version: str, cohort: str = "stable", *,
                 threshold_ms: float = 500.0, min_events: int = 20,
                 severity: Severity = "error") -> None:
        if not threshold_ms > 0:
            raise ValueError("threshold_ms must be > 0")
        if not min_events >= 1:
            raise ValueError("min_events must be >= 1")
        check_severity(severity)
        self.model, self.version, self.cohort = model, version, cohort
        self.threshold_ms = threshold_ms
        self.min_events = min_events
        self.severity = severity

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"model": "m", "version": "v1"}
        yield {"model": "m", "version": "v2", "cohort": "canary", "threshold_ms": 300.0,
               "min_events": 50, "severity": "warning"}

    @property
    def key(self) -> str:
        return dedup_key("latency_slo", self.model, self.version, self.cohort, "p99")

    def update(self, batch: Batch) -> list[Signal]:
        """One signal per window of at least ``min_events`` requests."""
        out = []
        for w in batch["windows"]:
            if w.count < self.min_events:
                continue
            active = w.p99 > self.threshold_ms
            relation = ">" if active else "<="
            out.append(Signal(
                check="latency_slo",
                key=self.key,
                active=active,
                severity=self.severity,
                summary=(f"{self.model} {self.version}: p99 latency {w.p99:.0f} ms {relation} "
                         f"{self.threshold_ms:.0f} ms over {w.count} requests"),
                timestamp=w.end,
                model=self.model,
                version=self.version,
                details={"statistic": "p99_latency_ms", "value": round(w.p99, 3),
                         "threshold": self.threshold_ms, "cohort": self.cohort,
                         "p50": round(w.p50, 3), "p95": round(w.p95, 3),
                         "window": _window(w)},
            ))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {}  # stateless: each window is judged alone

    def load_dict(self, data: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True, slots=True)
class BurnRule:
    """One rule: burn faster than ``factor`` over both ``long_s`` and ``short_s``."""

    name: str
    long_s: float
    short_s: float
    factor: float
    severity: Severity

    def __post_init__(self) -> None:
        if not (self.long_s > 0 and self.short_s > 0 and self.short_s <= self.long_s):
            raise ValueError("a burn rule needs 0 < short_s <= long_s")
        if not self.factor > 0:
            raise ValueError("a burn rule's factor must be > 0")
        check_severity(self.severity)


DEFAULT_BURN_RULES = (
    BurnRule("page", long_s=3600, short_s=300, factor=14.4, severity="critical"),
    BurnRule("ticket", long_s=21600, short_s=1800, factor=6.0, severity="error"),
)


class BurnRate:
    """Multi-window multi-burn-rate SLO rule on one series' closed windows.

    ``sli="latency"`` counts requests slower than the SLO bound as bad and raises
    ``latency_slo``; ``sli="availability"`` counts non-``ok`` requests and raises
    ``error_rate``. Keeps one (end, total, bad) triple per window for the longest
    rule, so memory is bounded by ``max(long_s) / window size``. A rule also needs
    ``min_bad`` bad requests in its long window: with a 99.9 % objective one
    unlucky request among 30 is a "33x burn", which is noise, not an incident.

    Parameters
    ----------
    model, version, cohort
        The series (its closed windows are the input).
    sli
        ``latency`` (slow requests are bad) or ``availability`` (failed ones are).
    objective
        Share of good requests the SLO promises.
    rules
        The burn rules (:data:`DEFAULT_BURN_RULES`: the SRE workbook's page and ticket).
    min_events
        A rule says nothing while its short window has fewer requests.
    min_bad
        Bad requests a rule's long window needs before it fires.

    Examples
    --------
    One-minute windows of 1,000 requests, 0.2 % of them failing; from minute 60
    on, 5 % fail (a 50x burn of a 99.9 % availability budget).

    >>> import numpy as np
    >>> from detectors.windows import WindowStats
    >>> rng = np.random.default_rng(42)
    >>> det = BurnRate("recommender", "v3", sli="availability", objective=0.999)
    >>> fired = {}
    >>> for i in range(90):
    ...     errors = int(rng.binomial(1000, 0.05 if i >= 60 else 0.002))
    ...     w = WindowStats("recommender", "v3", "stable", 60.0 * i, 60.0 * (i + 1), 1000,
    ...                     errors, 0, 10.0, 20.0, 30.0, 40.0)
    ...     for s in det.update({"windows": [w]}):
    ...         if s.active and s.key not in fired:
    ...             fired[s.key] = i
    >>> for key, i in fired.items():
    ...     print(f"{key} fires at window {i}")
    error_rate:recommender:v3:burn:ticket fires at window 65
    error_rate:recommender:v3:burn:page fires at window 76

    The ticket rule (6x over 6 h and 30 min) fires first; the page (14.4x over
    1 h and 5 min) waits until the bad minutes are 14.4 x 0.1 % of the last hour.
    """

    inputs = ("windows",)

    def __init__(self, model: str, version: str, cohort: str = "stable", *,
                 sli: Literal["latency", "availability"], objective: float = 0.99,
                 rules: tuple[BurnRule, ...] = DEFAULT_BURN_RULES, min_events: int = 20,
                 min_bad: int = 5) -> None:
        if not 0 < objective < 1:
            raise ValueError("objective must be in (0, 1)")
        if sli not in ("latency", "availability"):
            raise ValueError("sli must be 'latency' or 'availability'")
        if not rules or not all(isinstance(r, BurnRule) for r in rules):
            raise ValueError("at least one burn rule is needed")
        if not (min_events >= 1 and min_bad >= 1):
            raise ValueError("min_events and min_bad must be >= 1")
        self.model, self.version, self.cohort = model, version, cohort
        self.sli = sli
        self.objective = objective
        self.rules = tuple(rules)
        self.min_events = min_events
        self.min_bad = min_bad
        self._history: deque[tuple[float, int, int]] = deque()
        self._horizon = max(r.long_s for r in rules)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"model": "m", "version": "v1", "sli": "latency"}
        yield {"model": "m", "version": "v1", "sli": "availability", "objective": 0.999,
               "min_bad": 3}
        yield {"model": "m", "version": "v1", "cohort": "canary", "sli": "latency",
               "rules": (BurnRule("fast", 600, 120, 10.0, "critical"),)}

    @property
    def check(self) -> str:
        return "latency_slo" if self.sli == "latency" else "error_rate"

    @property
    def key(self) -> str:
        return dedup_key(self.check, self.model, self.version, self.cohort, "burn")

    def _sums(self, end: float, span: float) -> tuple[int, int]:
        total = bad = 0
        for e, t, b in reversed(self._history):
            if e <= end - span:
                break
            total += t
            bad += b
        return total, bad

    def update(self, batch: Batch) -> list[Signal]:
        """Per window, one signal per rule whose short window has ``min_events`` requests."""
        out = []
        for w in batch["windows"]:
            out.extend(self._judge(w))
        return out

    def _judge(self, w: WindowStats) -> list[Signal]:
        bad = w.slow if self.sli == "latency" else w.errors
        self._history.append((w.end, w.count, bad))
        while self._history and self._history[0][0] <= w.end - self._horizon:
            self._history.popleft()
        budget = 1 - self.objective
        out = []
        for rule in self.rules:
            long_total, long_bad = self._sums(w.end, rule.long_s)
            short_total, short_bad = self._sums(w.end, rule.short_s)
            if short_total < self.min_events:
                continue
            long_burn = long_bad / long_total / budget
            short_burn = short_bad / short_total / budget
            active = (long_burn > rule.factor and short_burn > rule.factor
                      and long_bad >= self.min_bad)
            what = "slow-request" if self.sli == "latency" else "error"
            out.append(Signal(
                check=self.check,
                key=f"{self.key}:{rule.name}",
                active=active,
                severity=rule.severity,
                summary=(f"{self.model} {self.version}: {what} budget burning {long_burn:.1f}x "
                         f"over {_span(rule.long_s)} and {short_burn:.1f}x over "
                         f"{_span(rule.short_s)} ({'>' if active else 'not both >'} "
                         f"{rule.factor}x, SLO {self.objective:.2%})"),
                timestamp=w.end,
                model=self.model,
                version=self.version,
                details={"statistic": "burn_rate", "sli": self.sli, "rule": rule.name,
                         "value": round(long_burn, 3), "short_value": round(short_burn, 3),
                         "threshold": rule.factor, "objective": self.objective,
                         "long_window_s": rule.long_s, "short_window_s": rule.short_s,
                         "cohort": self.cohort, "window": _window(w)},
            ))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self._history]}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._history = deque((float(e), int(t), int(b)) for e, t, b in data["history"])


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _window(w: WindowStats) -> dict[str, Any]:
    """The window part of ``custom_details``; timestamps stay epoch seconds here."""
    return {"start": w.start, "end": w.end, "events": w.count}
