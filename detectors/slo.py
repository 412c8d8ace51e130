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
from dataclasses import dataclass
from typing import Any, Literal

from detectors.base import Signal
from detectors.contract import Severity, dedup_key
from detectors.windows import WindowStats

__all__ = ["LatencyThreshold", "BurnRate", "BurnRule", "DEFAULT_BURN_RULES"]


class LatencyThreshold:
    """p99 (or another quantile) of a window above ``threshold_ms``.

    Windows with fewer than ``min_events`` requests say nothing: a p99 of five
    requests is noise, and "no data" must not read as "healthy".

    >>> from detectors.windows import WindowStats
    >>> det = LatencyThreshold(threshold_ms=300, min_events=10)
    >>> w = WindowStats("m", "v1", "stable", 0, 60, 100, 0, 0, 80.0, 250.0, 420.0, 500.0)
    >>> s = det.update(w)
    >>> s.active, s.key, s.details["value"]
    (True, 'latency_slo:m:v1:p99', 420.0)
    """

    def __init__(self, threshold_ms: float = 500.0, min_events: int = 20,
                 severity: Severity = "error") -> None:
        if threshold_ms <= 0:
            raise ValueError("threshold_ms must be > 0")
        self.threshold_ms = threshold_ms
        self.min_events = min_events
        self.severity = severity

    def update(self, w: WindowStats) -> Signal | None:
        if w.count < self.min_events:
            return None
        active = w.p99 > self.threshold_ms
        relation = ">" if active else "<="
        return Signal(
            check="latency_slo",
            key=dedup_key("latency_slo", w.model, w.version, w.cohort, "p99"),
            active=active,
            severity=self.severity,
            summary=(f"{w.model} {w.version}: p99 latency {w.p99:.0f} ms {relation} "
                     f"{self.threshold_ms:.0f} ms over {w.count} requests"),
            timestamp=w.end,
            model=w.model,
            version=w.version,
            details={"statistic": "p99_latency_ms", "value": round(w.p99, 3),
                     "threshold": self.threshold_ms, "cohort": w.cohort,
                     "p50": round(w.p50, 3), "p95": round(w.p95, 3),
                     "window": _window(w)},
        )


@dataclass(frozen=True, slots=True)
class BurnRule:
    name: str
    long_s: float
    short_s: float
    factor: float
    severity: Severity


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

    >>> from detectors.windows import WindowStats
    >>> det = BurnRate("latency", objective=0.99, min_events=10)
    >>> w = WindowStats("m", "v1", "stable", 0, 60, 100, 0, 40, 80.0, 900.0, 990.0, 999.0)
    >>> [(s.key, s.active) for s in det.update(w)]
    [('latency_slo:m:v1:burn:page', True), ('latency_slo:m:v1:burn:ticket', True)]
    """

    def __init__(self, sli: Literal["latency", "availability"], objective: float = 0.99,
                 rules: tuple[BurnRule, ...] = DEFAULT_BURN_RULES, min_events: int = 20,
                 min_bad: int = 5) -> None:
        if not 0 < objective < 1:
            raise ValueError("objective must be in (0, 1)")
        if sli not in ("latency", "availability"):
            raise ValueError("sli must be 'latency' or 'availability'")
        if not rules:
            raise ValueError("at least one burn rule is needed")
        self.sli = sli
        self.objective = objective
        self.rules = rules
        self.min_events = min_events
        self.min_bad = min_bad
        self._history: deque[tuple[float, int, int]] = deque()
        self._horizon = max(r.long_s for r in rules)

    @property
    def check(self) -> str:
        return "latency_slo" if self.sli == "latency" else "error_rate"

    def _sums(self, end: float, span: float) -> tuple[int, int]:
        total = bad = 0
        for e, t, b in reversed(self._history):
            if e <= end - span:
                break
            total += t
            bad += b
        return total, bad

    def update(self, w: WindowStats) -> list[Signal]:
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
                key=dedup_key(self.check, w.model, w.version, w.cohort, "burn", rule.name),
                active=active,
                severity=rule.severity,
                summary=(f"{w.model} {w.version}: {what} budget burning {long_burn:.1f}x over "
                         f"{_span(rule.long_s)} and {short_burn:.1f}x over {_span(rule.short_s)} "
                         f"({'>' if active else 'not both >'} {rule.factor}x, SLO "
                         f"{self.objective:.2%})"),
                timestamp=w.end,
                model=w.model,
                version=w.version,
                details={"statistic": "burn_rate", "sli": self.sli, "rule": rule.name,
                         "value": round(long_burn, 3), "short_value": round(short_burn, 3),
                         "threshold": rule.factor, "objective": self.objective,
                         "long_window_s": rule.long_s, "short_window_s": rule.short_s,
                         "cohort": w.cohort, "window": _window(w)},
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
