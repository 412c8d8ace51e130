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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from alerting.manager import AlertManager, ManagerSettings
from alerting.rollout import RolloutPolicy, RolloutTracker, TrackerOutput
from detectors.base import Batch, Signal
from detectors.canary import CanaryAnalysis, PredictionHistograms, Verdict
from detectors.contract import dedup_key
from detectors.drift import DriftDetector
from detectors.errors import ErrorRateSpike
from detectors.outage import OutageDetector
from detectors.profile import build_profile, category_key
from detectors.quality import FeatureColumns, QualityDetector
from detectors.skew import SkewDetector
from detectors.slo import BurnRate, BurnRule, LatencyThreshold
from detectors.windows import TumblingWindows, WindowStats
from streams.config import Settings
from streams.core.labels import LabelTracker
from streams.core.references import Reference

ReferenceLookup = Callable[[str], "Reference | None"]
_NUMBER = (int, float)
#: Alerts on a canary version that fail its canary analysis.
CANARY_CHECKS = frozenset({"feature_drift", "training_serving_skew", "prediction_drift",
                           "label_drift", "performance_degradation", "data_quality"})

__all__ = ["ModelMonitor", "Output"]


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


class _Series:
    """Detectors of one (version, cohort) series."""

    def __init__(self, model: str, version: str, cohort: str, s: Settings) -> None:
        b, lat, err = s.burn_rate, s.latency, s.error_rate
        rules = tuple(BurnRule(r.name, r.long_s, r.short_s, r.factor, r.severity)
                      for r in b.rules)
        self.latency = LatencyThreshold(model, version, cohort, threshold_ms=lat.p99_threshold_ms,
                                        min_events=lat.min_events, severity=lat.severity)
        self.errors = ErrorRateSpike(model, version, cohort, threshold=err.threshold,
                                     factor=err.baseline_factor, min_events=err.min_events,
                                     severity=err.severity)
        self.burns = [
            BurnRate(model, version, cohort, sli="latency", objective=b.latency_objective,
                     rules=rules, min_events=b.min_events, min_bad=b.min_bad),
            BurnRate(model, version, cohort, sli="availability",
                     objective=b.availability_objective, rules=rules, min_events=b.min_events,
                     min_bad=b.min_bad),
        ] if b.enabled else []
        self.last_arrival = 0.0
        self.skew: dict[str, list[SkewDetector | DriftDetector]] = {}
        self.quality: QualityDetector | None = None
        # Without a published profile: the first events' rows, then their profile.
        self.first_rows: list[dict[str, Any]] = []
        self.first_profile: dict[str, Any] | None = None
        self.profile_just_built = False
        self.first_ref: Reference | None = None
        self.skew_reference: float | None = None  # created_at of the profile in use
        self.saved_skew: dict[str, Any] = {}       # restored state, until the profile is back

    def reference_detectors(self, model: str, version: str, cohort: str, ref: Reference,
                            s: Settings) -> dict[str, list[SkewDetector | DriftDetector]]:
        """Skew and drift detectors per feature of ``ref``; rebuilt when a new profile
        arrives (their windows are on the profile's bins)."""
        if self.skew_reference != ref.created_at or not self.skew:
            self.skew = {}
            for name, fr in ref.features.items():
                dets: list[SkewDetector | DriftDetector] = []
                if s.skew.enabled:
                    dets.append(SkewDetector(model, version, name, cohort=cohort, bins=fr.bins,
                                             calibration=fr.skew, severity=s.skew.severity))
                if s.drift.enabled:
                    dets.append(DriftDetector(model, version, name, cohort=cohort,
                                              bins=fr.bins, calibration=fr.drift,
                                              baseline_factor=s.drift.baseline_factor,
                                              severity=s.drift.severity))
                self.skew[name] = dets
            q = s.quality
            self.quality = QualityDetector(
                model, version, cohort=cohort, specs=ref.specs, window=q.window_events,
                run_length=s.skew.run_length_events, min_excess=q.min_excess,
                max_unknown=s.limits.max_unknown_features, severity=q.severity,
            ) if q.enabled and ref.specs else None
            if self.saved_skew.get("reference") == ref.created_at:
                if self.quality is not None and self.saved_skew.get("quality"):
                    self.quality.load_dict(self.saved_skew["quality"])
                for name, states in self.saved_skew.get("features", {}).items():
                    for det, state in zip(self.skew.get(name, []), states, strict=False):
                        det.load_dict(state)
            self.saved_skew = {}
            self.skew_reference = ref.created_at
        return self.skew

    def evaluate(self, w: WindowStats) -> list[Signal]:
        batch: Batch = {"windows": [w]}
        out = self.latency.update(batch) + self.errors.update(batch)
        for burn in self.burns:
            out.extend(burn.update(batch))
        return out

    def first_events_reference(self, model: str, version: str,
                               feats: list[dict[str, Any] | None], preds: list[Any],
                               s: Settings) -> Reference | None:
        """A profile of this version's first ``skew.first_events`` events (0: never).

        The rows collected are not checkpointed (a takeover starts collecting
        again); the profile, once built, is.
        """
        self.profile_just_built = False
        n = s.skew.first_events
        if n == 0:
            return None
        if self.first_profile is None:
            for f, p in zip(feats, preds, strict=True):
                if len(self.first_rows) >= n:
                    break
                row = dict(f or {})
                if p is not None:
                    row["prediction"] = p
                self.first_rows.append(row)
            if len(self.first_rows) < n:
                return None
            try:
                frame = pl.from_dicts(self.first_rows, infer_schema_length=None, strict=False)
                cap = s.limits.max_profile_features
                if frame.width > cap:  # the most often present features, and the prediction
                    present = frame.select(pl.all().count()).row(0)
                    ranked = sorted(zip(present, frame.columns, strict=True), reverse=True)
                    keep = {c for _, c in ranked[:cap]} | {"prediction"}
                    frame = frame.select([c for c in frame.columns if c in keep])
                self.first_profile = build_profile(frame.lazy(), model, version, created_at=0.0)
            except (pl.exceptions.PolarsError, TypeError, ValueError):
                self.first_profile = {"model": model, "version": version, "created_at": 0.0,
                                      "rows": 0, "features": {}}  # nothing usable to learn
            self.first_rows = []
            self.profile_just_built = True
        if self.first_ref is None:
            self.first_ref = Reference.from_profile(self.first_profile, s.skew,
                                                     s.drift.baseline_factor, "first_events")
        return self.first_ref

    def to_dict(self) -> dict[str, Any]:
        skew = ({"reference": self.skew_reference,
                 "features": {n: [d.to_dict() for d in ds] for n, ds in self.skew.items()},
                 "quality": self.quality.to_dict() if self.quality else None}
                if self.skew else self.saved_skew)
        return {"errors": self.errors.to_dict(), "burns": [b.to_dict() for b in self.burns],
                "last_arrival": self.last_arrival, "skew": skew,
                "first_profile": self.first_profile}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.errors.load_dict(data["errors"])
        for burn, d in zip(self.burns, data["burns"], strict=False):
            burn.load_dict(d)
        self.last_arrival = data["last_arrival"]
        self.saved_skew = data.get("skew") or {}
        self.first_profile = data.get("first_profile")


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
        self.outage = OutageDetector(model, k=o.k, floor_s=o.floor_s,
                                     min_arrivals=o.min_arrivals, severity=o.severity)
        self.book = AlertManager(ManagerSettings(**settings.alerts.model_dump()))
        self.series: dict[tuple[str, str], _Series] = {}
        self.offsets: dict[int, int] = {}  # input partition -> last offset folded in
        self.feedback_offsets: dict[int, int] = {}  # the same, for ml.feedback
        self.last_arrival = 0.0
        self.labels = LabelTracker(model, settings)
        self.rollouts = _tracker(model, settings)
        self.canary_hist = PredictionHistograms()  # the rollout's prediction histograms
        self.control_offsets: dict[str, int] = {}  # "topic:partition" -> last offset
        self._wall = 0.0  # the wall clock of the call in progress (silences go by it)
        self._late = [0, 0]  # events late, and all events, since the last window closed

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
        self.labels.forget(version, cohort)
        if any((v, c) != (version, cohort) for v, c in self.series if v == version):
            return []  # the other cohort of this version still serves: keep its alerts
        return self.book.resolve_where(reason, now, self.model, version)

    # -- processing -------------------------------------------------------

    def ingest(self, frame: pl.DataFrame, now: float,
               features: Sequence[dict[str, Any] | None] | None = None,
               predictions: Sequence[Any] | None = None,
               references: ReferenceLookup | None = None,
               event_ids: Sequence[str] | None = None) -> Output:
        """Fold this model's rows of a micro-batch in (columns of ``BATCH_SCHEMA``).

        ``features``, ``predictions`` and ``event_ids`` are the rows' raw values,
        in frame order; with ``references`` (version -> profile) they feed the
        skew, drift and quality checks, and the label join.
        """
        out = Output()
        self.last_arrival = self._wall = now
        for signal in self.outage.update({"ts": np.array([now])}):
            self._emit(out, signal)
        pairs = frame.select("version", "cohort").unique().rows()
        for version, cohort in pairs:
            self._series(version, cohort).last_arrival = now
        out.late = self.windows.add(frame)
        self._late[0] += int(out.late.sum())
        self._late[1] += frame.height
        if self.rollouts is not None and predictions is not None and (
                self.rollouts.watching() or any(c == "canary" for _, c in pairs)):
            self._histogram(frame, out.late, predictions, references)
        self._evaluate(out, self.windows.close_ready())
        st = self.settings
        checks_on = st.skew.enabled or st.drift.enabled or st.quality.enabled
        if references is not None and features is not None and checks_on:
            self._skew(out, frame, out.late, features, predictions or [None] * frame.height,
                       references)
        if st.labels.enabled and predictions is not None and event_ids is not None:
            for signal in self.labels.on_predictions(
                    event_ids, frame["ts"].to_numpy(), frame["version"].to_list(),
                    frame["cohort"].to_list(), predictions, self.windows.watermark):
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
        if self.rollouts is None:
            return out
        for rec in records:
            wm = self.windows.watermark
            clock = wm if wm > -np.inf else rec["ts"]
            res = (self.rollouts.on_deployment(rec, clock) if kind == "deployment"
                   else self.rollouts.on_approval(rec, clock))
            self._take(out, res)
        return out

    def _take(self, out: Output, res: TrackerOutput) -> None:
        out.commands.extend(res.commands)
        out.verdicts.extend(res.verdicts)
        for signal in res.signals:
            self._emit(out, signal)

    def _histogram(self, frame: pl.DataFrame, late: np.ndarray, predictions: Sequence[Any],
                   references: ReferenceLookup | None) -> None:
        """Bin the stable and canary predictions of the rollout under way, per window."""
        assert self.rollouts is not None
        pair = self.rollouts.watching() or _traffic_pair(frame, self.rollouts.done)
        if pair is None:
            return
        bins = self._prediction_bins(pair[0], references)
        if bins is None:
            return
        size = self.settings.windows.size_s
        ts_all = frame["ts"].to_numpy()
        for (version, cohort), rows in _series_rows(frame):
            if (cohort, version) not in (("stable", pair[0]), ("canary", pair[1])):
                continue
            rows = rows[~late[rows]]
            preds = [predictions[i] for i in rows]
            if bins.kind == "numeric":
                x = _numbers(preds)
                ok = np.isfinite(x)
                idx = bins.bin_numeric(x[ok])
            else:
                ok, cats = _categories(preds)
                idx = bins.bin_categories(cats)
            starts = np.floor(ts_all[rows][ok] / size) * size
            self.canary_hist.add(cohort, starts, idx, bins.size)

    def _prediction_bins(self, stable: str, references: ReferenceLookup | None) -> Any:
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

    def _skew(self, out: Output, frame: pl.DataFrame, late: np.ndarray,
              features: Sequence[dict[str, Any] | None], predictions: Sequence[Any],
              references: ReferenceLookup) -> None:
        on_time = ~late
        ts_all = frame["ts"].to_numpy()
        for (version, cohort), rows in _series_rows(frame):
            rows = rows[on_time[rows]]
            if rows.size == 0:
                continue
            series = self._series(str(version), str(cohort))
            feats = [features[i] for i in rows]
            ref = references(str(version))
            if ref is None:  # no training profile: learn one from the first events
                ref = series.first_events_reference(
                    self.model, str(version), feats, [predictions[i] for i in rows],
                    self.settings)
                if ref is None or series.profile_just_built:
                    continue
            detectors = series.reference_detectors(self.model, str(version), str(cohort), ref,
                                                   self.settings)
            ts = ts_all[rows]
            cols = _columns(ref, feats)
            signals: list[Signal] = []
            if series.quality is not None:
                signals.extend(series.quality.update({"ts": ts, "features": cols}))
            for name, dets in detectors.items():
                if name == "prediction":
                    preds = [predictions[i] for i in rows]
                    x = (_numbers(preds)
                         if dets and dets[0].bins.kind == "numeric" else None)
                    signals.extend(_compare(dets, preds, x, ts))
                else:
                    signals.extend(_compare(dets, cols.values[name], cols.numbers.get(name), ts))
            for signal in signals:
                if ref.source != "published":
                    signal = _note_source(signal, ref)
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
        if self.rollouts is not None and self.rollouts.holds(now):
            return False  # a rollout announced on ml.deployments waits for its traffic
        return now - self.last_arrival > self.settings.worker.model_ttl_s

    def retire(self, now: float, reason: str | None = None) -> list[dict[str, Any]]:
        """Resolve everything still firing: the model's state is being dropped."""
        if reason is None:
            reason = f"model quiet for {self.settings.worker.model_ttl_s:.0f} s; its state expired"
        return self.book.resolve_where(reason, now, self.model)

    def _series(self, version: str, cohort: str) -> _Series:
        s = self.series.get((version, cohort))
        if s is None:
            s = self.series[(version, cohort)] = _Series(self.model, version, cohort,
                                                         self.settings)
        return s

    def _evaluate(self, out: Output, closed: list[WindowStats]) -> None:
        for w in closed:
            out.stats.append(w)
            for signal in self._series(w.version, w.cohort).evaluate(w):
                self._emit(out, signal)
        if closed:
            self._late_share(out, closed[-1].end)
        if self.rollouts is not None and closed:
            firing = {w.version: self._firing_on(w.version) for w in closed
                      if w.cohort == "canary"}
            self._take(out, self.rollouts.on_windows(closed, firing, self.canary_hist))

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
            "rollouts": None if self.rollouts is None else self.rollouts.to_dict(),
            "canary_hist": self.canary_hist.to_dict(),
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
        if mon.rollouts is not None and data.get("rollouts"):
            mon.rollouts.load_dict(data["rollouts"])
        # (checkpoints written before the histograms moved here kept them with the rollouts)
        mon.canary_hist.load_dict(data.get("canary_hist")
                                  or (data.get("rollouts") or {}).get("hist") or {})
        mon.control_offsets = {str(k): int(v)
                               for k, v in (data.get("control_offsets") or {}).items()}
        return mon


def _traffic_pair(frame: pl.DataFrame, done: dict[str, float]) -> tuple[str, str] | None:
    """(stable, canary): the busiest of each cohort, when a canary not yet judged serves."""
    counts = frame.group_by("cohort", "version").len().sort("len", descending=True)
    canary = counts.filter((pl.col("cohort") == "canary") & ~pl.col("version").is_in(list(done)))
    stable = counts.filter(pl.col("cohort") == "stable")
    if canary.height == 0 or stable.height == 0:
        return None
    return str(stable["version"][0]), str(canary["version"][0])


def _tracker(model: str, s: Settings) -> RolloutTracker | None:
    c = s.canary
    if not c.enabled:
        return None
    analysis = CanaryAnalysis(c.min_requests, c.error_alpha, c.error_min_diff, c.latency_ratio,
                              c.prediction_js, c.prediction_alpha)
    policy = RolloutPolicy(c.fail_windows, c.pass_windows, c.ladder, c.approval_above,
                           c.cooldown_s, "pause" if model in c.pause_models else c.on_failure)
    return RolloutTracker(model, analysis, policy, c.severity, c.announced_ttl_s)


def _series_rows(frame: pl.DataFrame) -> list[tuple[tuple[str, str], np.ndarray]]:
    """Row numbers of each (version, cohort) in ``frame``, in order of appearance."""
    versions, cohorts = frame["version"], frame["cohort"]
    if versions.n_unique() == 1 and cohorts.n_unique() == 1:  # the usual case: one series
        return [((str(versions[0]), str(cohorts[0])), np.arange(frame.height))]
    keys = frame.select("version", "cohort").with_row_index("row")
    return [((str(v), str(c)), part["row"].to_numpy())
            for (v, c), part in keys.group_by(["version", "cohort"], maintain_order=True)]


def _columns(ref: Reference, feats: list[dict[str, Any] | None]) -> FeatureColumns:
    """Every feature the reference knows, extracted once for all the checks."""
    names = [spec.name for spec in ref.specs]
    names += [n for n in ref.features if n != "prediction" and n not in names]
    numeric = {spec.name for spec in ref.specs if spec.kind == "numeric"}
    numeric |= {n for n, fr in ref.features.items() if fr.bins.kind == "numeric"}
    return FeatureColumns.extract(feats, names, numeric)


def _compare(dets: list[SkewDetector | DriftDetector], values: list[Any],
             numbers: np.ndarray | None, ts: np.ndarray) -> list[Signal]:
    """Bin one feature's values of a micro-batch once (vectorised); update its detectors."""
    if not dets:
        return []
    bins = dets[0].bins
    out: list[Signal] = []
    batch: Batch
    if bins.kind == "numeric":
        assert numbers is not None
        ok = np.isfinite(numbers)
        batch = {"ts": ts[ok], "bin": bins.bin_numeric(numbers[ok]), "value": numbers[ok]}
    else:
        present, cats = _categories(values)
        batch = {"ts": ts[present], "bin": bins.bin_categories(cats), "category": cats}
    for det in dets:
        out.extend(det.update(batch))
    return out


def _numbers(values: Sequence[Any]) -> np.ndarray:
    """Numbers as floats; anything else (None, text, bool) as NaN."""
    return np.fromiter((v if type(v) in _NUMBER else np.nan for v in values), dtype=float,
                       count=len(values))


def _categories(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """The mask of present values, and those values as category keys."""
    present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return present, [v if type(v) is str else category_key(v) for v in values if v is not None]


def _note_source(signal: Signal, ref: Reference) -> Signal:
    """Say in the alert that the reference was learned from serving, not training."""
    note = f"the version's first {ref.rows} events (no training profile was published)"
    return replace(signal, summary=f"{signal.summary}; reference: {note}",
                   details={**signal.details, "reference": note})
