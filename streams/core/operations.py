"""Pipelines, quotas and metrics: the micro-batch path of ``ml.pipeline`` and ``ml.metrics``.

Like :mod:`streams.core.predictions` for predictions, everything here is pure: the
agents hand over a micro-batch of messages and the wall clock, and publish
what comes back (:class:`OpsOutbox`). State belongs to the message key:

- :class:`PipelineState`, per pipeline (the key of ``ml.pipeline``): runs in
  flight, failure streak, stall limit, duration model, validation history;
- :class:`MetricState`, per (source, metric) series of ``ml.metrics`` (keyed by
  source): its anomaly detector, each series under its own state key so a
  source with many metrics never makes one large record;
- :class:`PoolState`, per quota pool: usage rate, forecast, consumers. Pipeline
  events are keyed by pipeline, but a pool is shared by pipelines on every
  partition, so each pipeline's worker forwards what it learns about a pool
  (:class:`~detectors.quota.UsagePoint`) to an internal topic keyed by pool,
  ``<app_id>-pool-usage``, one message per pool per micro-batch: the worker that
  owns the pool sees all of its pipelines (a repartition, as Kafka Streams
  would do it).

Each state has its own :class:`~alerting.manager.AlertManager` and is
checkpointed as JSON, once per micro-batch, with the offsets folded in. A
micro-batch's inputs are grouped by state key and each key folds its inputs
all or nothing (:mod:`streams.core.isolation`): an input that fails is
dead-lettered alone. Caps bound what one worker holds: ``worker.max_operations``
keys in all (a new key evicts the least recently seen idle one, else is
refused), ``metric_anomaly.max_metrics_per_source`` series per source and
``pipelines.max_runs`` runs in flight per pipeline.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from alerting.manager import WALL_CLOCK_CHECKS, AlertManager, ManagerSettings, Silence
from alerting.rollout import make_command
from detectors.anomaly import MetricAnomalyDetector
from detectors.base import Batch, Signal
from detectors.pipelines import DurationAnomaly, FailureStreak, RunInfo, StallWatch, ValidationGate
from detectors.quota import QuotaForecast, UsagePoint, usage_batch
from streams.config import Settings
from streams.core.isolation import fold_isolated, one_by_one
from streams.core.parse import (
    DeadLetter,
    MetricColumns,
    internal_error,
    is_batch,
    parse_metrics,
    parse_pipeline,
    raw_text,
)
from streams.core.predictions import InMessage, parse_limits
from streams.core.references import ReferenceStore
from streams.core.state import SEP, InputMarks
from streams.core.validation_skew import profile_skew

__all__ = ["OperationsProcessor", "OpsOutbox", "PipelineState", "MetricState", "PoolState",
           "PIPELINE_PREFIX", "METRIC_PREFIX", "POOL_PREFIX"]

log = logging.getLogger("sentinelle.ops")

Record = dict[str, Any]
Saved = Callable[[str], "Record | None"]

# state-table keys: one namespace per kind of state; a metric series is
# ``metric:<source>\x1f<metric>``
PIPELINE_PREFIX, METRIC_PREFIX, POOL_PREFIX = "pipeline:", "metric:", "pool:"


@dataclass(slots=True)
class OpsOutbox:
    """What to publish after a micro-batch of operational events."""

    deadletters: list[Record] = field(default_factory=list)
    alerts: list[tuple[str, Record]] = field(default_factory=list)
    commands: list[tuple[str, Record]] = field(default_factory=list)
    pool_usage: list[tuple[str, list[Record]]] = field(default_factory=list)  # (pool, points)
    checkpoints: list[tuple[int, str, Record | None]] = field(default_factory=list)
    events: int = 0
    events_by_topic: Counter[str] = field(default_factory=Counter)  # for the metrics

    def merge(self, other: OpsOutbox) -> None:
        self.deadletters += other.deadletters
        self.alerts += other.alerts
        self.commands += other.commands
        self.pool_usage += other.pool_usage
        self.checkpoints += other.checkpoints
        self.events += other.events
        self.events_by_topic.update(other.events_by_topic)


class _Keyed:
    """State of one key: its alert manager, offsets and partition."""

    def __init__(self, name: str, settings: Settings, partition: int) -> None:
        self.name = name
        self.settings = settings
        self.partition = partition
        self.book = AlertManager(ManagerSettings(**settings.alerts.model_dump()))
        self.offsets: dict[str, int] = {}  # "topic:partition" -> last offset folded in
        self.last_seen = 0.0               # wall clock
        self.watermark = float("-inf")     # largest event time seen: the event-time clock

    def fresh(self, topic: str, partition: int, offset: int) -> bool:
        """Not folded in before (a replay after a crash is)."""
        return offset > self.offsets.get(f"{topic}:{partition}", -1)

    def folded(self, topic: str, partition: int, offset: int) -> None:
        where = f"{topic}:{partition}"
        self.offsets[where] = max(offset, self.offsets.get(where, -1))

    def emit(self, signals: Sequence[Signal], wall: float) -> list[Record]:
        for s in signals:
            if s.check not in WALL_CLOCK_CHECKS:
                self.watermark = max(self.watermark, s.timestamp)
        return self.book.process(list(signals), wall)

    def tick_alerts(self, wall: float) -> list[Record]:
        """Repeats and releases: event-time alerts go by the watermark, stalls by the wall."""
        return self.book.tick(wall, self.watermark if self.watermark > float("-inf") else None)

    def base_dict(self) -> Record:
        return {"name": self.name, "partition": self.partition, "offsets": dict(self.offsets),
                "last_seen": self.last_seen, "alerts": self.book.to_dict(),
                "watermark": self.watermark if self.watermark > float("-inf") else None}

    def load_base(self, d: Record, now: float) -> None:
        self.offsets = {str(k): int(v) for k, v in d.get("offsets", {}).items()}
        self.last_seen = max(float(d.get("last_seen", 0.0)), now)
        self.book.load_dict(d.get("alerts", {}))
        wm = d.get("watermark")
        self.watermark = float(wm) if wm is not None else float("-inf")


class PipelineState(_Keyed):
    """Runs of one pipeline and the detectors that judge them."""

    def __init__(self, name: str, settings: Settings, partition: int = 0) -> None:
        super().__init__(name, settings, partition)
        p, v = settings.pipelines, settings.validation
        self.runs: dict[str, RunInfo] = {}
        self.pools: dict[str, tuple[str, str]] = {}  # run -> (pool, resource) it reported
        self.failures = FailureStreak(name, critical_after=p.failure_critical_after,
                                      severity=p.failure_severity)
        self.stall = StallWatch(name, floor_s=p.stall_floor_s, ceiling_s=p.stall_ceiling_s,
                                factor=p.stall_factor, min_runs=p.stall_min_runs,
                                severity=p.stall_severity)
        self.duration = DurationAnomaly(name, min_runs=p.duration_min_runs,
                                        threshold=p.duration_threshold,
                                        accept_after=p.duration_accept_after,
                                        severity=p.duration_severity)
        self.gate = ValidationGate(name, tolerance=v.tolerance,
                                   lower_is_better=v.lower_is_better, ignore=v.ignore,
                                   severity=v.severity)

    def ingest(self, rec: Record, wall: float, references: ReferenceStore | None,
               box: OpsOutbox) -> list[tuple[str, str, UsagePoint]]:
        """One run event; alerts and commands go to ``box``; pool news is returned."""
        self.last_seen = wall
        run_id, status, ts = rec["run_id"], rec["status"], rec["ts"]
        signals: list[Signal] = []
        run = self.runs.get(run_id)
        if run is None and status in ("started", "heartbeat"):
            run = self.runs[run_id] = RunInfo(run_id, rec["kind"], ts, wall, rec["model"],
                                              rec["version"])
            while len(self.runs) > self.settings.pipelines.max_runs:
                del self.runs[min(self.runs, key=lambda r: self.runs[r].last_wall)]
        if run is not None:
            run.last_wall = wall
        row: Batch = {"ts": np.array([ts]), "run_id": [run_id], "status": [status],
                      "error": [rec["error"]], "duration_s": [None]}
        if status in ("started", "heartbeat"):
            signals.extend(self.stall.update(row))
        else:
            self.runs.pop(run_id, None)
            duration = rec.get("duration_s")
            if duration is None and run is not None:
                duration = ts - run.started_ts
            row["duration_s"] = [duration]
            signals.extend(self.stall.update(row))  # resolves its stall; learns a success
            signals.extend(self.failures.update(row))
            signals.extend(self.duration.update(row))
            if rec["kind"] == "validation" and status == "succeeded" and \
                    self.settings.validation.enabled:
                signals.extend(self._validate(rec, references, box))
        for a in self.emit(signals, wall):
            box.alerts.append((a["dedup_key"], a))
        return self._pool_points(rec)

    def _validate(self, rec: Record, references: ReferenceStore | None,
                  box: OpsOutbox) -> list[Signal]:
        model, version = rec["model"], rec["version"]
        if not model or not version:
            return []
        out: list[Signal] = []
        if rec["metrics"]:
            out.extend(self.gate.update({"ts": np.array([rec["ts"]]), "model": [model],
                                         "version": [version], "metrics": [rec["metrics"]]}))
        if rec.get("profile") and references is not None:
            ref = references.get(model, version)
            if ref is not None:
                out.append(profile_skew(rec["profile"], ref, self.name, rec["ts"],
                                        self.settings.validation.severity))
        if self.settings.validation.pause:
            for s in out:
                if s.active:
                    box.commands.append((model, self._pause(s, model, version, rec["ts"])))
        return out

    def _pause(self, s: Signal, model: str, version: str, ts: float) -> Record:
        previous = s.details.get("previous_version") or "-"
        # one pause per version and reason, whatever replays: pause:M:V:validation[-skew]
        what = "validation" if s.key == self.gate.key_for(model, version) else "validation-skew"
        return make_command("pause", model, previous, version, what, s.summary, ts,
                            alert_dedup_keys=[s.key], evidence=s.details)

    def _pool_points(self, rec: Record) -> list[tuple[str, str, UsagePoint]]:
        q = rec.get("quota")
        run_id = rec["run_id"]
        if q is not None:
            self.pools[run_id] = (q["pool"], q["resource"])
        where = self.pools.get(run_id)
        if rec["status"] in ("succeeded", "failed"):
            self.pools.pop(run_id, None)
        if where is None:
            return []
        pool, resource = where
        used = (rec.get("resources") or {}).get(resource)
        point = UsagePoint(rec["ts"], self.name, run_id, rec["status"], used,
                           q["used"] if q else None, q["limit"] if q else None)
        return [(pool, resource, point)]

    def tick(self, wall: float) -> list[Record]:
        """Stalls, and runs silent past ``run_ttl_s`` forgotten."""
        alerts = self.emit(self.stall.check(list(self.runs.values()), wall), wall)
        ttl = self.settings.pipelines.run_ttl_s
        for run_id, run in list(self.runs.items()):
            if wall - run.last_wall > ttl:
                del self.runs[run_id]
                self.pools.pop(run_id, None)
                self.stall.stalled.discard(run_id)
                alerts += self._forget(run_id, wall, ttl)
        return alerts

    def _forget(self, run_id: str, wall: float, ttl: float) -> list[Record]:
        key = self.stall.key_for(run_id)
        lc = self.book.alerts.get(key)
        if lc is None:
            return []
        sig = Signal("pipeline_stalled", key, False, self.settings.pipelines.stall_severity,
                     f"{self.name}: run {run_id} silent for {ttl:.0f} s; forgotten", wall,
                     self.name)
        return self.emit([sig], wall)

    def to_dict(self) -> Record:
        return {**self.base_dict(), "kind": "pipeline",
                "runs": {r: [i.kind, i.started_ts, i.last_wall, i.model, i.version]
                         for r, i in self.runs.items()},
                "pools": {r: list(v) for r, v in self.pools.items()},
                "failures": self.failures.to_dict(), "stall": self.stall.to_dict(),
                "duration": self.duration.to_dict(), "gate": self.gate.to_dict()}

    @classmethod
    def from_dict(cls, d: Record, settings: Settings, now: float) -> PipelineState:
        st = cls(d["name"], settings, d["partition"])
        st.load_base(d, now)
        # the worker was away: every run in flight gets a fresh grace period
        st.runs = {r: RunInfo(r, v[0], v[1], max(v[2], now), v[3], v[4])
                   for r, v in d.get("runs", {}).items()}
        st.pools = {r: (v[0], v[1]) for r, v in d.get("pools", {}).items()}
        st.failures.load_dict(d.get("failures", {}))
        st.stall.load_dict(d.get("stall", {}))
        st.duration.load_dict(d.get("duration", {}))
        st.gate.load_dict(d.get("gate", {}))
        return st


class MetricState(_Keyed):
    """One metric series of one source (``name``): its anomaly detector."""

    def __init__(self, name: str, settings: Settings, partition: int = 0,
                 metric: str = "") -> None:
        super().__init__(name, settings, partition)
        self.metric = metric
        m = settings.metric_anomaly
        self.detector = MetricAnomalyDetector(
            name, metric, warmup_points=m.warmup_points, threshold=m.threshold,
            season_s=m.season_s, severity=m.severity)

    def ingest(self, ts: np.ndarray, values: np.ndarray, wall: float) -> list[Record]:
        self.last_seen = wall
        order = np.argsort(ts, kind="stable")
        return self.emit(self.detector.update({"ts": ts[order], "value": values[order]}), wall)

    def to_dict(self) -> Record:
        return {**self.base_dict(), "kind": "metric", "metric": self.metric,
                "detector": self.detector.to_dict()}

    @classmethod
    def from_dict(cls, d: Record, settings: Settings, now: float) -> MetricState:
        st = cls(d["name"], settings, d["partition"], d["metric"])
        st.load_base(d, now)
        st.detector.load_dict(d["detector"])
        return st


class PoolState(_Keyed):
    """One quota pool: a forecast per resource."""

    def __init__(self, name: str, settings: Settings, partition: int = 0) -> None:
        super().__init__(name, settings, partition)
        self.forecasts: dict[str, QuotaForecast] = {}

    def forecast(self, resource: str) -> QuotaForecast:
        f = self.forecasts.get(resource)
        if f is None:
            q = self.settings.quota
            f = self.forecasts[resource] = QuotaForecast(
                self.name, resource, window_s=q.window_s, horizon_s=q.horizon_s,
                critical_share=q.critical_share, errant_share=q.errant_share,
                min_points=q.min_points)
        return f

    def ingest(self, points: list[Record], wall: float) -> list[Record]:
        self.last_seen = wall
        by_resource: dict[str, list[UsagePoint]] = {}
        for p in sorted(points, key=lambda p: p["ts"]):
            by_resource.setdefault(p["resource"], []).append(UsagePoint(
                p["ts"], p["pipeline"], p["run_id"], p["status"], p.get("run_used"),
                p.get("used"), p.get("limit")))
        signals: list[Signal] = []
        for resource, pts in by_resource.items():
            signals.extend(self.forecast(resource).update(usage_batch(pts)))
        return self.emit(signals, wall)

    def to_dict(self) -> Record:
        return {**self.base_dict(), "kind": "pool",
                "forecasts": {r: f.to_dict() for r, f in self.forecasts.items()}}

    @classmethod
    def from_dict(cls, d: Record, settings: Settings, now: float) -> PoolState:
        st = cls(d["name"], settings, d["partition"])
        st.load_base(d, now)
        for resource, data in d.get("forecasts", {}).items():
            st.forecast(resource).load_dict(data)
        return st


State = PipelineState | MetricState | PoolState
Item = tuple[int, Any]  # (index of its message in the micro-batch, what to fold)


class OperationsProcessor:
    """Parse, track and alert for the pipelines, metric series and pools this worker owns.

    ``counts`` (monotonic) says what went wrong or was bounded, for the worker's
    metrics, as :class:`~streams.core.predictions.PredictionProcessor`'s does.
    """

    def __init__(self, settings: Settings, pool_topic: str,
                 references: ReferenceStore | None = None,
                 silences: dict[str, Silence] | None = None) -> None:
        self.settings = settings
        self.pool_topic = pool_topic
        self.references = references
        self.silences = silences if silences is not None else {}
        self.states: dict[str, State] = {}  # least recently used first
        self.counts: Counter[str] = Counter()
        self._per_source: Counter[str] = Counter()  # metric series held, per source
        self.marks = InputMarks()

    # -- the state of one key ---------------------------------------------------------

    def _restore(self, key: str, data: Record | None, now: float) -> State | None:
        if data is None:
            return None
        try:
            st = _restore(data, self.settings, now)
        except Exception:
            log.exception("%s: its checkpoint cannot be restored; starting afresh", key[:120])
            self.counts["state_reset"] += 1
            return None
        if st is not None:
            st.book.silences = self.silences
        return st

    def _new(self, key: str, partition: int) -> State:
        prefix, name = key.split(":", 1)
        st: State
        if prefix + ":" == METRIC_PREFIX:
            source, metric = name.split(SEP, 1)
            st = MetricState(source, self.settings, partition, metric)
        elif prefix + ":" == PIPELINE_PREFIX:
            st = PipelineState(name, self.settings, partition)
        else:
            st = PoolState(name, self.settings, partition)
        st.book.silences = self.silences
        return st

    def _state(self, key: str, partition: int, now: float, saved: Saved,
               box: OpsOutbox) -> State | str:
        """The key's state, restored or new; or why there is no room for it."""
        st = self.states.pop(key, None)
        if st is None:
            source = key[len(METRIC_PREFIX):].split(SEP, 1)[0] \
                if key.startswith(METRIC_PREFIX) else None
            cap = self.settings.metric_anomaly.max_metrics_per_source
            if source is not None and self._per_source[source] >= cap:
                self.counts["refused_metrics"] += 1
                return (f"over_capacity: source {source[:64]!r} has "
                        f"metric_anomaly.max_metrics_per_source ({cap}) metrics")
            if len(self.states) >= self.settings.worker.max_operations and \
                    not self._evict_one(now, box):
                self.counts["refused_operations"] += 1
                return (f"over_capacity: this worker holds worker.max_operations "
                        f"({self.settings.worker.max_operations}) pipelines, metric series "
                        f"and pools, none idle")
            st = self._restore(key, saved(key), now) or self._new(key, partition)
            if source is not None:
                self._per_source[source] += 1
        self.states[key] = st
        st.partition = partition
        return st

    def _evict_one(self, now: float, box: OpsOutbox) -> bool:
        key, oldest = next(iter(self.states.items()))
        if now - oldest.last_seen < self.settings.worker.idle_close_s:
            return False
        self._drop(key, f"evicted: the worker holds worker.max_operations "
                        f"({self.settings.worker.max_operations}) keys and this one was the "
                        f"least recently seen", now, box)
        self.counts["evicted_operations"] += 1
        return True

    def _drop(self, key: str, reason: str, now: float, box: OpsOutbox) -> None:
        st = self.states.pop(key)
        if isinstance(st, MetricState):
            self._per_source[st.name] -= 1
            if self._per_source[st.name] <= 0:
                del self._per_source[st.name]
        box.alerts.extend((a["dedup_key"], a) for a in st.book.resolve_where(reason, now,
                                                                             st.name))
        box.checkpoints.append((st.partition, key, None))

    # -- a micro-batch ------------------------------------------------------------------

    def process_safely(self, messages: Sequence[InMessage], now: float,
                       saved: Saved = lambda k: None) -> OpsOutbox:
        """:meth:`process`, with a last guard around what per-key isolation does not
        cover: if the micro-batch raises anyway, its messages are processed one at a
        time and any message that raises again is dead-lettered (``internal_error``)."""
        def dead(box: OpsOutbox, msg: InMessage, exc: Exception) -> None:
            box.deadletters.append(internal_error(msg.value, msg.topic or "", msg.partition,
                                                  msg.offset, exc))
            # dead-lettered once: marked read, so that a replay does not send it again
            self.marks.fresh(msg.topic or "", msg.partition, msg.offset, saved)
            box.checkpoints += self.marks.checkpoints()

        return one_by_one(lambda part: self.process(part, now, saved), messages, OpsOutbox,
                          dead, "operations")

    def process(self, messages: Sequence[InMessage], now: float,
                saved: Saved = lambda k: None) -> OpsOutbox:
        """Parse every message, group what they hold by state key, fold each key."""
        with self.marks.undone_on_error():  # read again one by one (process_safely)
            return self._process(messages, now, saved)

    def _process(self, messages: Sequence[InMessage], now: float, saved: Saved) -> OpsOutbox:
        box = OpsOutbox()
        limits = parse_limits(self.settings, now)
        messages = [m for m in messages
                    if self.marks.fresh(m.topic or "", m.partition, m.offset, saved)]
        work: dict[str, list[Item]] = {}
        t = self.settings.topics
        for i, msg in enumerate(messages):
            topic = msg.topic or ""
            dead: list[DeadLetter] = []
            if topic == t.pipeline:
                recs: list[Record] = []
                dead = parse_pipeline(msg.value, recs, limits, msg.key)
                if self.settings.pipelines.enabled:
                    for rec in sorted(recs, key=lambda r: r["ts"]):
                        work.setdefault(PIPELINE_PREFIX + rec["pipeline"], []).append((i, rec))
            elif topic == t.metrics:
                cols = MetricColumns()
                dead = parse_metrics(msg.value, cols, limits, msg.key)
                if self.settings.metric_anomaly.enabled:
                    for j, (src, metric) in enumerate(zip(cols.source, cols.metric, strict=True)):
                        work.setdefault(METRIC_PREFIX + src + SEP + metric, []).append(
                            (i, (cols.ts[j], cols.value[j], cols.element[j], cols.raw[j])))
            elif topic == self.pool_topic:
                pool, wrong = _pool_of(msg.value)
                if pool is None:
                    dead = [DeadLetter(wrong, raw_text(msg.value or b""))]
                else:
                    work.setdefault(POOL_PREFIX + pool, []).append((i, msg.value))
            box.deadletters += [d.to_record(topic, msg.partition, msg.offset) for d in dead]
        for key, items in work.items():
            self._fold_key(key, items, messages, now, saved, box)
        pools: dict[str, list[Record]] = {}
        for pool, points in box.pool_usage:
            pools.setdefault(pool, []).extend(points)
        box.pool_usage = list(pools.items()) if self.settings.quota.enabled else []
        box.checkpoints += self.marks.checkpoints()  # last: see streams.core.state.InputMarks
        return box

    def _fold_key(self, key: str, items: list[Item], messages: Sequence[InMessage],
                  now: float, saved: Saved, box: OpsOutbox) -> None:
        first = messages[items[0][0]]
        st = self._state(key, first.partition, now, saved, box)
        if isinstance(st, str):
            box.deadletters += [self._dead(messages[i], what, st) for i, what in items]
            return
        fresh = [k for k, (i, _) in enumerate(items) if st.fresh(
            messages[i].topic or "", messages[i].partition, messages[i].offset)]
        if fresh:
            def fold(state: State, picked: Sequence[int], sub: OpsOutbox) -> None:
                self._fold(state, [items[k][1] for k in picked], now, sub)

            def dead(k: int, exc: Exception) -> None:
                i, what = items[k]
                box.deadletters.append(self._dead(
                    messages[i], what, f"internal_error: {type(exc).__name__}: {exc}"[:500]))

            def before(broken: State) -> State:
                self.counts["fold_errors"] += 1
                return self._restore(key, saved(key), now) or self._new(key, broken.partition)

            def copy(state: State) -> State:
                back = _restore(orjson.loads(orjson.dumps(state.to_dict())), self.settings,
                                state.last_seen)
                back.book.silences = self.silences
                return back

            try:
                st = fold_isolated(st, fresh, fold, OpsOutbox, box, dead, before, copy, key[:120])
            except Exception:
                log.exception("%s: its state cannot be recovered; starting afresh", key[:120])
                self.counts["state_reset"] += 1
                st = self._new(key, st.partition)
            self.states[key] = st
        for i, _ in items:
            msg = messages[i]
            st.folded(msg.topic or "", msg.partition, msg.offset)
        self.counts["refused_alerts"] += st.book.refused  # past alerts.max_alerts
        st.book.refused = 0
        try:
            box.checkpoints.append((st.partition, key, st.to_dict()))
        except Exception:
            log.exception("%s: its state cannot be written; starting afresh", key[:120])
            self.counts["state_reset"] += 1
            st = self.states[key] = self._new(key, st.partition)
            box.checkpoints.append((st.partition, key, st.to_dict()))

    def _fold(self, st: State, whats: list[Any], now: float, box: OpsOutbox) -> None:
        """Fold one key's inputs in (all of them, or raise)."""
        if isinstance(st, PipelineState):
            for rec in whats:
                for pool, resource, point in st.ingest(rec, now, self.references, box):
                    box.pool_usage.append((pool, [{
                        "pool": pool, "resource": resource, "ts": point.ts,
                        "pipeline": point.pipeline, "run_id": point.run_id,
                        "status": point.status, "run_used": point.run_used, "used": point.used,
                        "limit": point.limit}]))
            box.events += len(whats)
            box.events_by_topic[self.settings.topics.pipeline] += len(whats)
        elif isinstance(st, MetricState):
            ts = np.fromiter((w[0] for w in whats), dtype=float, count=len(whats))
            values = np.fromiter((w[1] for w in whats), dtype=float, count=len(whats))
            for a in st.ingest(ts, values, now):
                box.alerts.append((a["dedup_key"], a))
            box.events += len(whats)
            box.events_by_topic[self.settings.topics.metrics] += len(whats)
        else:
            for value in whats:
                for a in st.ingest(orjson.loads(value), now):
                    box.alerts.append((a["dedup_key"], a))

    @staticmethod
    def _dead(msg: InMessage, what: Any, reason: str) -> Record:
        if isinstance(what, bytes):  # a whole pool message
            return DeadLetter(reason, raw_text(what)).to_record(msg.topic or "", msg.partition,
                                                                msg.offset)
        raw, index = (what["raw"], what["element"]) if isinstance(what, dict) \
            else (what[3], what[2])
        return DeadLetter(reason, orjson.dumps(raw).decode(), index if is_batch(msg.value) else None
                          ).to_record(msg.topic or "", msg.partition, msg.offset)

    # -- the wall clock -----------------------------------------------------------------

    def tick(self, now: float, saved_items: Sequence[tuple[str, Any]],
             saved: Saved | None = None, behind: Collection[int] = ()) -> OpsOutbox:
        """Wall-clock checks: stalls, expiry of quiet series, runs and pipelines.

        ``saved_items`` are the state table's items: keys restored there (a
        partition taken over) and not yet loaded are loaded, within the cap
        (``saved`` reads a record split in chunks). One key's failure is logged
        and counted, and the others go on. On ``behind`` partitions (a backlog)
        silence is the worker's: no stall, no expiry there.
        """
        box = OpsOutbox()
        cap = self.settings.worker.max_operations
        for key, data in saved_items:
            if key in self.states or not isinstance(data, dict) or len(self.states) >= cap or \
                    data.get("kind") not in ("pipeline", "metric", "pool", "chunked"):
                continue
            if data["kind"] == "chunked":
                data = saved(key) if saved is not None else None
            st = self._restore(key, data, now)
            if st is not None:
                self.states[key] = st
                if isinstance(st, MetricState):
                    self._per_source[st.name] += 1
        for key, st in list(self.states.items()):
            try:
                ttl = (self.settings.metric_anomaly.series_ttl_s if isinstance(st, MetricState)
                       else self.settings.pipelines.pipeline_ttl_s)
                waiting = st.partition in behind
                if waiting:
                    st.last_seen = max(st.last_seen, now - self.settings.worker.idle_close_s)
                alerts = st.tick(now) if isinstance(st, PipelineState) and not waiting else []
                alerts += st.tick_alerts(now)
                box.alerts.extend((a["dedup_key"], a) for a in alerts)
                if now - st.last_seen > ttl:
                    self._drop(key, f"quiet for {ttl:.0f} s; its state expired", now, box)
                elif alerts:
                    box.checkpoints.append((st.partition, key, st.to_dict()))
            except Exception:
                self.counts["tick_errors"] += 1
                log.exception("%s: its wall-clock checks failed; the others go on", key[:120])
        return box

    def revoke(self, partitions: set[int]) -> None:
        self.marks.revoke(partitions)
        for key in [k for k, st in self.states.items() if st.partition in partitions]:
            st = self.states.pop(key)
            if isinstance(st, MetricState):
                self._per_source[st.name] -= 1


_POOL_TEXT: Final = ("pool", "resource", "pipeline", "run_id", "status")
_POOL_NUMBERS: Final = ("run_used", "used", "limit")  # each optional


def _pool_of(value: bytes | None) -> tuple[str | None, str]:
    """The pool a pool-usage message (internal, written by a worker) is about, or None
    and what is wrong with it: every point must be as a worker writes it, since its
    fields become state (a ``run_id`` that is not a string would make the pool's
    checkpoint unwritable).

    >>> _pool_of(b'[{"pool": "gpu", "resource": "gpu_hours", "pipeline": "p", '
    ...          b'"run_id": "r1", "status": "running", "ts": 1.5, "used": 2}]')
    ('gpu', '')
    >>> _pool_of(b'[{"pool": "gpu", "resource": "gpu_hours", "pipeline": "p", '
    ...          b'"run_id": null, "status": "running", "ts": 1.5}]')
    (None, "bad_value: pool usage point 0: 'run_id' must be a string")
    """
    try:
        points = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        points = None
    if not isinstance(points, list) or not points:
        return None, "bad_value: not a list of pool usage points"
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            return None, f"bad_value: pool usage point {i} is not an object"
        for name in _POOL_TEXT:
            if not isinstance(p.get(name), str):
                return None, f"bad_value: pool usage point {i}: {name!r} must be a string"
        for name, required in (("ts", True), *((n, False) for n in _POOL_NUMBERS)):
            v = p.get(name)
            if v is None and not required:
                continue
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                continue
            return None, f"bad_value: pool usage point {i}: {name!r} must be a finite number"
        if p["pool"] != points[0]["pool"]:
            return None, f"bad_value: pool usage point {i} is about another pool than point 0"
    return str(points[0]["pool"]), ""


def _restore(data: Record, settings: Settings, now: float) -> Any:
    kind = data.get("kind")
    if kind == "pipeline":
        return PipelineState.from_dict(data, settings, now)
    if kind == "metric":
        return MetricState.from_dict(data, settings, now)
    if kind == "pool":
        return PoolState.from_dict(data, settings, now)
    return None
