"""Everything Sentinelle knows about one model, and what it does with a micro-batch.

:class:`ModelMonitor` is pure (no Faust, no Kafka): the agent hands it the
model's rows of a micro-batch and the wall-clock time, and gets back closed
window statistics, alert events and the mask of late rows to dead-letter. Its
whole state is plain JSON (:meth:`to_dict`), checkpointed once per micro-batch
into the changelog-backed state table, so the worker that takes over a
partition restores it.

It keeps the model's event-time windows, its outage clock, its alert manager
and its label join, and delegates the rest: each (version, cohort) series'
detectors and reference checks to a :class:`~streams.core.series.Series`, the
canary rollouts to a :class:`~streams.core.canary.CanaryWatch`.

State expiry keeps memory bounded: a (version, cohort) series that sent nothing
for ``worker.series_ttl_s`` is dropped (its firing alerts resolved, saying so),
and a model quiet for ``worker.model_ttl_s`` is forgotten altogether.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from alerting.manager import AlertManager, ManagerSettings
from alerting.rollout import TrackerOutput
from detectors.base import Signal
from detectors.canary import Verdict
from detectors.contract import dedup_key
from detectors.outage import OutageDetector
from detectors.profile import FeatureBins
from detectors.quality import as_rows, pick, take
from detectors.windows import TumblingWindows, WindowStats
from streams.config import Settings
from streams.core.canary import CANARY_CHECKS, CanaryWatch
from streams.core.labels import LabelTracker
from streams.core.series import ReferenceLookup, Series, SeriesRows, series_columns, series_rows

__all__ = ["ModelMonitor", "Output", "READING_CHECKS", "Reading"]

#: The checks whose latest statistic and calibrated threshold the monitor keeps for
#: the worker's metrics (``sentinelle_feature_statistic``), per feature.
READING_CHECKS = frozenset({"training_serving_skew", "feature_drift", "prediction_drift"})


@dataclass(frozen=True, slots=True)
class Reading:
    """The latest value of one feature's skew or drift statistic, and its threshold."""

    statistic: str
    value: float
    threshold: float


@dataclass(slots=True)
class Output:
    """What one call produced: closed windows, alert events, late rows."""

    stats: list[WindowStats] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    late: np.ndarray | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[tuple[str, Verdict]] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.stats.extend(other.stats)
        self.alerts.extend(other.alerts)
        self.commands.extend(other.commands)
        self.verdicts.extend(other.verdicts)


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
                                       settings.burn_rate.slow_ms, w.percentile_accuracy,
                                       w.max_lead_s)
        o = settings.outage
        self.outage = OutageDetector(model, k=o.k, floor_s=o.floor_s,
                                     min_arrivals=o.min_arrivals, severity=o.severity)
        self.book = AlertManager(ManagerSettings(**settings.alerts.model_dump()))
        self.series: dict[tuple[str, str], Series] = {}
        self.offsets: dict[int, int] = {}  # input partition -> last offset folded in
        self.feedback_offsets: dict[int, int] = {}  # the same, for ml.feedback
        self.last_arrival = 0.0
        self.labels = LabelTracker(model, settings)
        self.canary = CanaryWatch(model, settings) if settings.canary.enabled else None
        self.control_offsets: dict[str, int] = {}  # "topic:partition" -> last offset
        self._wall = 0.0  # the wall clock of the call in progress (silences go by it)
        self._late = [0, 0]  # events late, and all events, since the last window closed
        # What the worker's metrics show, not checkpointed (refilled by the next windows):
        # each series' latest closed window; each (version, cohort, feature, check)'s
        # latest statistic; each canary's latest verdict. Dropped with their series.
        self.latest: dict[tuple[str, str], WindowStats] = {}
        self.readings: dict[tuple[str, str, str, str], Reading] = {}
        self.verdicts: dict[str, str] = {}

    def admit(self, pairs: Sequence[tuple[str, str]], now: float) -> tuple[
            set[tuple[str, str]], list[dict[str, Any]]]:
        """Which new (version, cohort) series fit under ``worker.max_series``.

        A new series past the cap takes the place of the least recently seen one
        if that one has been idle for ``worker.idle_close_s`` (its alerts are
        resolved, saying why); otherwise the new series is refused and its
        events are dead-lettered by the caller. Returns the refused series and
        the resolve events of the evicted ones.
        """
        w = self.settings.worker
        refused: set[tuple[str, str]] = set()
        alerts: list[dict[str, Any]] = []
        for pair in pairs:
            if pair in self.series:
                continue
            if len(self.series) >= w.max_series:
                pair_old, oldest = min(self.series.items(), key=lambda kv: kv[1].last_arrival)
                if now - oldest.last_arrival < w.idle_close_s:
                    refused.add(pair)
                    continue
                alerts += self._drop_series(
                    *pair_old, f"evicted: the model is at worker.max_series "
                               f"({w.max_series}) and this series was the least recently seen",
                    now)
            self._series(*pair).last_arrival = now
        return refused, alerts

    def _drop_series(self, version: str, cohort: str, reason: str,
                     now: float) -> list[dict[str, Any]]:
        del self.series[(version, cohort)]
        self.windows.drop_series(version, cohort)
        self.latest.pop((version, cohort), None)
        for k in [k for k in self.readings if k[:2] == (version, cohort)]:
            del self.readings[k]
        if not any(v == version for v, _ in self.series):
            self.verdicts.pop(version, None)
        self.labels.forget(version, cohort)
        if any((v, c) != (version, cohort) for v, c in self.series if v == version):
            return []  # the other cohort of this version still serves: keep its alerts
        return self.book.resolve_where(reason, now, self.model, version)

    # -- processing -------------------------------------------------------

    def ingest(self, frame: pl.DataFrame, now: float,
               features: Sequence[dict[str, Any] | None] | None = None,
               predictions: Sequence[Any] | None = None,
               references: ReferenceLookup | None = None,
               event_ids: Sequence[str] | None = None,
               groups: SeriesRows | None = None) -> Output:
        """Fold this model's rows of a micro-batch in (columns of ``BATCH_SCHEMA``).

        ``features``, ``predictions`` and ``event_ids`` are the rows' raw values,
        in frame order; with ``references`` (version -> profile) they feed the
        skew, drift and quality checks, and the label join. ``groups``: the
        frame's :func:`~streams.core.series.series_rows`, if the caller has them.
        """
        out = Output()
        self.last_arrival = self._wall = now
        for signal in self.outage.update({"ts": np.array([now])}):
            self._emit(out, signal)
        if groups is None:  # once: every check below splits by series
            groups = series_rows(frame)
        pairs = [pair for pair, _ in groups]
        for version, cohort in pairs:
            self._series(version, cohort).last_arrival = now
        out.late = self.windows.add(frame, now)
        self._late[0] += int(out.late.sum())
        self._late[1] += frame.height
        if self.canary is not None and predictions is not None:
            self.canary.observe(frame, out.late, predictions, groups,
                                lambda stable: self._prediction_bins(stable, references))
        self._evaluate(out, self.windows.close_ready())
        st = self.settings
        checks_on = st.skew.enabled or st.drift.enabled or st.quality.enabled
        if references is not None and features is not None and checks_on:
            self._skew(out, frame, groups, out.late, features,
                       predictions or [None] * frame.height, references)
        if st.labels.enabled and predictions is not None and event_ids is not None:
            for signal in self.labels.on_predictions(
                    event_ids, frame["ts"].to_numpy(), *series_columns(groups, frame.height),
                    predictions, self.windows.watermark,
                    references, groups):
                self._emit(out, signal)
        return out

    def ingest_labels(self, event_ids: Sequence[str], ts: Sequence[float],
                      labels: Sequence[Any], now: float,
                      references: ReferenceLookup | None = None) -> Output:
        """Fold labels from ``ml.feedback`` in (joined to predictions by ``event_id``)."""
        out = Output()
        self._wall = now
        if self.settings.labels.enabled:
            for signal in self.labels.on_labels(event_ids, ts, labels, references):
                self._emit(out, signal)
        return out

    def ingest_control(self, kind: str, records: Sequence[dict[str, Any]],
                       now: float) -> Output:
        """``ml.deployments`` (``kind="deployment"``) or ``ml.deploy.approvals`` records.

        They take effect at the model's watermark (the event time its traffic has
        reached; the record's ``ts`` when no traffic was seen yet).
        """
        out = Output()
        self._wall = now
        if self.canary is None:
            return out
        for rec in records:
            wm = self.windows.watermark
            self._take(out, self.canary.on_control(kind, rec, wm if wm > -np.inf else rec["ts"]))
        return out

    def _take(self, out: Output, res: TrackerOutput) -> None:
        out.commands.extend(res.commands)
        out.verdicts.extend(res.verdicts)
        for canary, verdict in res.verdicts:
            self.verdicts[canary] = verdict.outcome
        for signal in res.signals:
            self._emit(out, signal)

    def _prediction_bins(self, stable: str,
                         references: ReferenceLookup | None) -> FeatureBins | None:
        """Bins of the stable version's prediction profile (published, or learned)."""
        ref = references(stable) if references is not None else None
        if ref is None:
            series = self.series.get((stable, "stable"))
            ref = series.first_ref if series is not None else None
        fr = ref.features.get("prediction") if ref is not None else None
        return fr.bins if fr is not None else None

    def _firing_on(self, version: str) -> tuple[str, ...]:
        return tuple(sorted(k for k, lc in self.book.active.items()
                            if lc.last is not None and lc.last.version == version
                            and lc.last.check in CANARY_CHECKS))

    def _skew(self, out: Output, frame: pl.DataFrame, groups: SeriesRows, late: np.ndarray,
              features: Sequence[dict[str, Any] | None], predictions: Sequence[Any],
              references: ReferenceLookup) -> None:
        """Each series' on-time rows (``groups``: :func:`series_rows` of ``frame``)
        against its reference profile."""
        on_time = ~late
        ts_all = frame["ts"].to_numpy()
        for (version, cohort), rows in groups:
            rows = rows[on_time[rows]]
            if rows.size == 0:
                continue
            picked = as_rows(rows)  # a range when the series' rows are one run
            signals = self._series(version, cohort).compare(
                self.model, version, cohort,
                take(features, picked if isinstance(picked, range) else rows),
                pick(predictions, picked), ts_all[rows], references, self.settings)
            for signal in signals:
                self._emit(out, signal)

    def tick(self, now: float, behind: bool = False) -> Output:
        """Wall-clock checks: outage, idle windows, quiet series.

        ``behind``: the worker has a backlog on this model's partition, so its
        silence is the worker's, not the producer's: no outage, no idle flush
        (its next events may belong to the open windows), no expiry.
        """
        out = Output()
        self._wall = now
        watermark = self.windows.watermark
        out.alerts.extend(self.book.tick(now, watermark if watermark > -np.inf else None))
        if behind:
            self.last_arrival = max(self.last_arrival, now - self.settings.worker.idle_close_s)
            self.outage.grace(now)
            return out
        for signal in self.outage.check(now):
            self._emit(out, signal)
        idle = now - self.last_arrival > self.settings.worker.idle_close_s
        if self.windows.open_windows and idle:
            self._evaluate(out, self.windows.flush())
        ttl = self.settings.worker.series_ttl_s
        for (version, cohort), series in list(self.series.items()):
            if now - series.last_arrival > ttl:
                out.alerts.extend(self._drop_series(
                    version, cohort, f"version went quiet for {ttl:.0f} s; its state expired",
                    now))
        return out

    def expired(self, now: float) -> bool:
        if self.canary is not None and self.canary.holds(now):
            return False  # a rollout announced on ml.deployments waits for its traffic
        return now - self.last_arrival > self.settings.worker.model_ttl_s

    def retire(self, now: float, reason: str | None = None) -> list[dict[str, Any]]:
        """Resolve everything still firing: the model's state is being dropped."""
        if reason is None:
            reason = f"model quiet for {self.settings.worker.model_ttl_s:.0f} s; its state expired"
        return self.book.resolve_where(reason, now, self.model)

    def _series(self, version: str, cohort: str) -> Series:
        s = self.series.get((version, cohort))
        if s is None:
            s = self.series[(version, cohort)] = Series(self.model, version, cohort,
                                                        self.settings)
        return s

    def _evaluate(self, out: Output, closed: list[WindowStats]) -> None:
        for w in closed:
            out.stats.append(w)
            last = self.latest.get((w.version, w.cohort))
            if last is None or w.end >= last.end:
                self.latest[(w.version, w.cohort)] = w
            for signal in self._series(w.version, w.cohort).evaluate(w):
                self._emit(out, signal)
        if closed:
            self._late_share(out, closed[-1].end)
        if self.canary is not None and closed:
            firing = {w.version: self._firing_on(w.version) for w in closed
                      if w.cohort == "canary"}
            self._take(out, self.canary.on_windows(closed, firing))

    def _late_share(self, out: Output, ts: float) -> None:
        """``data_quality`` when too many events arrive after their window closed.

        Late events are dead-lettered one by one (``late``); this says, once,
        that it is happening: a producer's clock running behind, or a queue
        that held events back.
        """
        late, total = self._late
        if total < self.settings.latency.min_events:
            return
        self._late = [0, 0]
        share, limit = late / total, self.settings.windows.late_alert_share
        active = share > limit
        self._emit(out, Signal(
            check="data_quality", key=dedup_key("data_quality", self.model, None, "stable",
                                                "late_events"),
            active=active, severity=self.settings.quality.severity,
            summary=(f"{self.model}: {share:.1%} of events arrived after their window closed "
                     f"({late} of {total}; allowed lateness "
                     f"{self.settings.windows.allowed_lateness_s:g} s): check the producers' "
                     f"clocks" if active else f"{self.model}: late events {share:.1%}"),
            timestamp=ts, model=self.model,
            details={"issue": "late_events", "statistic": "late_share", "value": round(share, 5),
                     "threshold": limit, "count": late, "events": total}))

    def _emit(self, out: Output, signal: Signal) -> None:
        if signal.check in READING_CHECKS and signal.version is not None:
            d = signal.details
            value, threshold = d.get("value"), d.get("threshold")
            if isinstance(value, int | float) and isinstance(threshold, int | float):
                self.readings[(signal.version, str(d.get("cohort", "stable")),
                               str(d.get("feature", "")), signal.check)] = Reading(
                    str(d.get("statistic", "")), float(value), float(threshold))
        out.alerts.extend(self.book.process([signal], self._wall))

    # -- checkpoint -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "model",
            "model": self.model,
            "partition": self.partition,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "feedback_offsets": {str(p): o for p, o in self.feedback_offsets.items()},
            "last_arrival": self.last_arrival,
            "windows": self.windows.to_dict(),
            "outage": self.outage.to_dict(),
            "alerts": self.book.to_dict(),
            "series": [{"version": v, "cohort": c, **s.to_dict()}
                       for (v, c), s in self.series.items()],
            "labels": self.labels.to_dict(),
            **({"rollouts": None} if self.canary is None else self.canary.to_dict()),
            "control_offsets": self.control_offsets,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], settings: Settings, now: float) -> ModelMonitor:
        """Restore a checkpoint; ``now`` restarts the silence clock (we were away)."""
        mon = cls(data["model"], settings, data["partition"])
        mon.offsets = {int(p): int(o) for p, o in data["offsets"].items()}
        mon.feedback_offsets = {int(p): int(o)
                                for p, o in (data.get("feedback_offsets") or {}).items()}
        mon.last_arrival = max(data["last_arrival"], now)
        mon.windows.load_dict(data["windows"])
        mon.outage.load_dict(data["outage"])
        mon.outage.grace(now)
        mon.book.load_dict(data["alerts"])
        for s in data["series"]:
            series = mon._series(s["version"], s["cohort"])
            series.load_dict(s)
            series.last_arrival = max(series.last_arrival, now)
        mon.labels.load_dict(data.get("labels") or {})
        if mon.canary is not None:
            mon.canary.load_dict(data)
        mon.control_offsets = {str(k): int(v)
                               for k, v in (data.get("control_offsets") or {}).items()}
        return mon
