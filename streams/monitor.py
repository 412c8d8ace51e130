"""Everything Sentinelle knows about one model, and what it does with a micro-batch.

:class:`ModelMonitor` is pure (no Faust, no Kafka): the agent hands it the
model's rows of a micro-batch and the wall-clock time, and gets back closed
window statistics, alert events and the mask of late rows to dead-letter. Its
whole state is plain JSON (:meth:`to_dict`), checkpointed once per micro-batch
into the changelog-backed state table, so the worker that takes over a
partition restores it.

State expiry keeps memory bounded: a (version, cohort) series that sent nothing
for ``worker.series_ttl_s`` is dropped (its firing alerts resolved, saying so),
and a model quiet for ``worker.model_ttl_s`` is forgotten altogether.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from alerting.lifecycle import AlertBook
from detectors.base import Signal
from detectors.errors import ErrorRateSpike
from detectors.outage import OutageDetector
from detectors.slo import BurnRate, BurnRule, LatencyThreshold
from detectors.windows import TumblingWindows, WindowStats
from streams.config import Settings

__all__ = ["ModelMonitor", "Output"]


@dataclass(slots=True)
class Output:
    """What one call produced: closed windows, alert events, late rows."""

    stats: list[WindowStats] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    late: np.ndarray | None = None

    def extend(self, other: Output) -> None:
        self.stats.extend(other.stats)
        self.alerts.extend(other.alerts)


class _Series:
    """Detectors of one (version, cohort) series."""

    def __init__(self, s: Settings) -> None:
        b = s.burn_rate
        rules = tuple(BurnRule(r.name, r.long_s, r.short_s, r.factor, r.severity)
                      for r in b.rules)
        self.latency = LatencyThreshold(s.latency.p99_threshold_ms, s.latency.min_events,
                                        s.latency.severity)
        self.errors = ErrorRateSpike(s.error_rate.threshold, s.error_rate.baseline_factor,
                                     s.error_rate.min_events, severity=s.error_rate.severity)
        self.burns = [
            BurnRate("latency", b.latency_objective, rules, b.min_events, b.min_bad),
            BurnRate("availability", b.availability_objective, rules, b.min_events, b.min_bad),
        ] if b.enabled else []
        self.last_arrival = 0.0

    def evaluate(self, w: WindowStats) -> list[Signal]:
        out = [s for s in (self.latency.update(w), self.errors.update(w)) if s is not None]
        for burn in self.burns:
            out.extend(burn.update(w))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"errors": self.errors.to_dict(), "burns": [b.to_dict() for b in self.burns],
                "last_arrival": self.last_arrival}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.errors.load_dict(data["errors"])
        for burn, d in zip(self.burns, data["burns"], strict=False):
            burn.load_dict(d)
        self.last_arrival = data["last_arrival"]


class ModelMonitor:
    """Windows, detectors and alert state of one model.

    Parameters
    ----------
    model
        Model name (the partition key).
    settings
        Window and detector settings.
    partition
        The input partition this model's events arrive on; state is
        checkpointed to the same changelog partition.
    """

    def __init__(self, model: str, settings: Settings, partition: int = 0) -> None:
        self.model = model
        self.settings = settings
        self.partition = partition
        w = settings.windows
        self.windows = TumblingWindows(model, w.size_s, w.allowed_lateness_s,
                                       settings.burn_rate.slow_ms, w.percentile_accuracy)
        o = settings.outage
        self.outage = OutageDetector(model, o.k, o.floor_s, o.min_arrivals, severity=o.severity)
        self.book = AlertBook()
        self.series: dict[tuple[str, str], _Series] = {}
        self.offsets: dict[int, int] = {}  # input partition -> last offset folded in
        self.last_arrival = 0.0

    # -- processing -------------------------------------------------------

    def ingest(self, frame: pl.DataFrame, now: float) -> Output:
        """Fold this model's rows of a micro-batch in (columns of ``BATCH_SCHEMA``)."""
        out = Output()
        self.last_arrival = now
        self._emit(out, self.outage.observe(now))
        for version, cohort in frame.select("version", "cohort").unique().iter_rows():
            self._series(version, cohort).last_arrival = now
        out.late = self.windows.add(frame)
        self._evaluate(out, self.windows.close_ready())
        return out

    def tick(self, now: float) -> Output:
        """Wall-clock checks: outage, idle windows, quiet series."""
        out = Output()
        signal = self.outage.check(now)
        if signal is not None:
            self._emit(out, signal)
        idle = now - self.last_arrival > self.settings.worker.idle_close_s
        if self.windows.open_windows and idle:
            self._evaluate(out, self.windows.flush())
        ttl = self.settings.worker.series_ttl_s
        for (version, cohort), series in list(self.series.items()):
            if now - series.last_arrival > ttl:
                del self.series[(version, cohort)]
                out.alerts.extend(self.book.resolve_where(
                    f"version went quiet for {ttl:.0f} s; its state expired", now, self.model,
                    version))
        return out

    def expired(self, now: float) -> bool:
        return now - self.last_arrival > self.settings.worker.model_ttl_s

    def retire(self, now: float) -> list[dict[str, Any]]:
        """Resolve everything still firing: the model's state is being dropped."""
        ttl = self.settings.worker.model_ttl_s
        return self.book.resolve_where(f"model quiet for {ttl:.0f} s; its state expired", now,
                                       self.model)

    def _series(self, version: str, cohort: str) -> _Series:
        s = self.series.get((version, cohort))
        if s is None:
            s = self.series[(version, cohort)] = _Series(self.settings)
        return s

    def _evaluate(self, out: Output, closed: list[WindowStats]) -> None:
        for w in closed:
            out.stats.append(w)
            for signal in self._series(w.version, w.cohort).evaluate(w):
                self._emit(out, signal)

    def _emit(self, out: Output, signal: Signal) -> None:
        event = self.book.apply(signal)
        if event is not None:
            out.alerts.append(event)

    # -- checkpoint -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "partition": self.partition,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "last_arrival": self.last_arrival,
            "windows": self.windows.to_dict(),
            "outage": self.outage.to_dict(),
            "alerts": self.book.to_dict(),
            "series": [{"version": v, "cohort": c, **s.to_dict()}
                       for (v, c), s in self.series.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], settings: Settings, now: float) -> ModelMonitor:
        """Restore a checkpoint; ``now`` restarts the silence clock (we were away)."""
        mon = cls(data["model"], settings, data["partition"])
        mon.offsets = {int(p): int(o) for p, o in data["offsets"].items()}
        mon.last_arrival = max(data["last_arrival"], now)
        mon.windows.load_dict(data["windows"])
        mon.outage.load_dict(data["outage"])
        mon.outage.grace(now)
        mon.book.load_dict(data["alerts"])
        for s in data["series"]:
            series = mon._series(s["version"], s["cohort"])
            series.load_dict(s)
            series.last_arrival = max(series.last_arrival, now)
        return mon
