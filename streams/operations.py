"""Pipelines, quotas and metrics: the micro-batch path of ``ml.pipeline`` and ``ml.metrics``.

Like :mod:`streams.pipeline` for predictions, everything here is pure: the
agents hand over a micro-batch of messages and the wall clock, and publish
what comes back (:class:`OpsOutbox`). State belongs to the message key:

- :class:`PipelineState`, per pipeline (the key of ``ml.pipeline``): runs in
  flight, failure streak, stall limit, duration model, validation history;
- :class:`SourceState`, per metrics source (the key of ``ml.metrics``): one
  anomaly detector per metric;
- :class:`PoolState`, per quota pool: usage rate, forecast, consumers. Pipeline
  events are keyed by pipeline, but a pool is shared by pipelines on every
  partition, so each pipeline's worker forwards what it learns about a pool
  (:class:`~detectors.quota.UsagePoint`) to an internal topic keyed by pool,
  ``<app_id>-pool-usage``, one message per pool per micro-batch: the worker that
  owns the pool sees all of its pipelines (a repartition, as Kafka Streams
  would do it).

Each state has its own :class:`~alerting.manager.AlertManager` and is
checkpointed as JSON, once per micro-batch, with the offsets folded in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from alerting.manager import WALL_CLOCK_CHECKS, AlertManager, ManagerSettings, Silence
from alerting.rollout import make_command
from detectors.anomaly import MetricAnomalyDetector
from detectors.base import Signal
from detectors.pipelines import DurationAnomaly, FailureStreak, RunInfo, StallWatch, ValidationGate
from detectors.quota import QuotaForecast, UsagePoint
from streams.config import Settings
from streams.parse import DeadLetter, MetricColumns, parse_metrics, parse_pipeline
from streams.pipeline import InMessage
from streams.references import ReferenceStore
from streams.validation_skew import profile_skew

__all__ = ["OpsPipeline", "OpsOutbox", "PipelineState", "SourceState", "PoolState",
           "PIPELINE_PREFIX", "SOURCE_PREFIX", "POOL_PREFIX"]

log = logging.getLogger("sentinelle.ops")

Record = dict[str, Any]
Saved = Callable[[str], "Record | None"]

# state-table keys: one namespace per kind of state
PIPELINE_PREFIX, SOURCE_PREFIX, POOL_PREFIX = "pipeline:", "source:", "pool:"
_MAX_RUNS = 1000  # runs in flight remembered per pipeline


@dataclass(slots=True)
class OpsOutbox:
    """What to publish after a micro-batch of operational events."""

    deadletters: list[Record] = field(default_factory=list)
    alerts: list[tuple[str, Record]] = field(default_factory=list)
    commands: list[tuple[str, Record]] = field(default_factory=list)
    pool_usage: list[tuple[str, list[Record]]] = field(default_factory=list)  # (pool, points)
    checkpoints: list[tuple[int, str, Record | None]] = field(default_factory=list)
    events: int = 0


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
        where = f"{topic}:{partition}"
        if offset <= self.offsets.get(where, -1):
            return False
        self.offsets[where] = offset
        return True

    def emit(self, signals: Sequence[Signal], wall: float) -> list[Record]:
        for s in signals:
            if s.check not in WALL_CLOCK_CHECKS:
                self.watermark = max(self.watermark, s.timestamp)
        return self.book.process(list(signals), wall)

    def tick_alerts(self, wall: float) -> list[Record]:
        """Repeats and releases: event-time alerts go by the watermark, stalls by the wall."""
        return self.book.tick(wall, self.watermark if self.watermark > float("-inf") else None)

    def base_dict(self) -> Record:
        return {"name": self.name, "partition": self.partition, "offsets": self.offsets,
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
        self.failures = FailureStreak(name, p.failure_critical_after)
        self.stall = StallWatch(name, p.stall_floor_s, p.stall_ceiling_s, p.stall_factor,
                                p.stall_min_runs, p.stall_severity)
        self.duration = DurationAnomaly(name, p.duration_min_runs, p.duration_threshold,
                                        p.duration_accept_after, p.duration_severity)
        self.gate = ValidationGate(name, v.tolerance, v.lower_is_better, v.ignore, v.severity)

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
            while len(self.runs) > _MAX_RUNS:
                del self.runs[min(self.runs, key=lambda r: self.runs[r].last_wall)]
        if run is not None:
            run.last_wall = wall
        if status in ("started", "heartbeat"):
            back = self.stall.alive(run_id, ts)
            if back is not None:
                signals.append(back)
        else:
            self.runs.pop(run_id, None)
            back = self.stall.alive(run_id, ts, ended=True)
            if back is not None:
                signals.append(back)
            signals.append(self.failures.on_end(run_id, status == "failed", ts, rec["error"]))
            duration = rec.get("duration_s")
            if duration is None and run is not None:
                duration = ts - run.started_ts
            if duration is not None and duration > 0:
                if status == "succeeded":
                    self.stall.learn(duration)
                judged = self.duration.observe(run_id, duration, ts)
                if judged is not None:
                    signals.append(judged)
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
            out.extend(self.gate.observe(model, version, rec["metrics"], rec["ts"]))
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
        cmd = make_command("pause", model, previous, version, 0, s.summary, ts,
                           alert_dedup_keys=[s.key], evidence=s.details)
        # one pause per version and reason, whatever replays
        what = "validation" if s.key == self.gate.key(model, version) else "validation-skew"
        cmd["command_id"] = f"pause:{model}:{version}:{what}"
        return cmd

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
        key = self.stall.key(run_id)
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


class SourceState(_Keyed):
    """The metrics of one source, one anomaly detector per metric."""

    def __init__(self, name: str, settings: Settings, partition: int = 0) -> None:
        super().__init__(name, settings, partition)
        self.detectors: dict[str, MetricAnomalyDetector] = {}
        self.metric_seen: dict[str, float] = {}

    def detector(self, metric: str) -> MetricAnomalyDetector:
        det = self.detectors.get(metric)
        if det is None:
            m = self.settings.metric_anomaly
            det = self.detectors[metric] = MetricAnomalyDetector(
                self.name, metric, warmup_points=m.warmup_points, threshold=m.threshold,
                season_s=m.season_s, cooldown_s=m.cooldown_s,
                resolve_after_s=m.resolve_after_s, severity=m.severity)
        return det

    def ingest(self, metric: str, ts: np.ndarray, values: np.ndarray, wall: float) -> list[Record]:
        self.last_seen = self.metric_seen[metric] = wall
        order = np.argsort(ts, kind="stable")
        return self.emit(self.detector(metric).update(ts[order], values[order]), wall)

    def tick(self, wall: float) -> list[Record]:
        ttl = self.settings.metric_anomaly.series_ttl_s
        out: list[Record] = []
        for metric, seen in list(self.metric_seen.items()):
            if wall - seen > ttl:
                del self.metric_seen[metric]
                self.detectors.pop(metric, None)
                key = f"metric_anomaly:{self.name}:{metric}"
                if key in self.book.alerts:
                    out += self.emit([Signal("metric_anomaly", key, False, "warning",
                                             f"{key}: series quiet for {ttl:.0f} s; forgotten",
                                             wall, self.name)], wall)
        return out

    def to_dict(self) -> Record:
        return {**self.base_dict(), "kind": "source", "seen": self.metric_seen,
                "detectors": {m: d.to_dict() for m, d in self.detectors.items()}}

    @classmethod
    def from_dict(cls, d: Record, settings: Settings, now: float) -> SourceState:
        st = cls(d["name"], settings, d["partition"])
        st.load_base(d, now)
        st.metric_seen = {m: max(float(t), now) for m, t in d.get("seen", {}).items()}
        for metric, data in d.get("detectors", {}).items():
            st.detector(metric).load_dict(data)
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
                self.name, resource, q.window_s, q.horizon_s, q.critical_share,
                q.errant_share, q.min_points)
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
            signals.extend(self.forecast(resource).update(pts))
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


class OpsPipeline:
    """Parse, track and alert for the pipelines, metric sources and pools this worker owns."""

    def __init__(self, settings: Settings, pool_topic: str,
                 references: ReferenceStore | None = None,
                 silences: dict[str, Silence] | None = None) -> None:
        self.settings = settings
        self.pool_topic = pool_topic
        self.references = references
        self.silences = silences if silences is not None else {}
        self.states: dict[str, PipelineState | SourceState | PoolState] = {}

    def _state(self, key: str, partition: int, now: float, saved: Saved) -> Any:
        st: Any = self.states.get(key)
        if st is None:
            data = saved(key)
            st = _restore(data, self.settings, now) if data is not None else None
            if st is None:
                kind = {PIPELINE_PREFIX: PipelineState, SOURCE_PREFIX: SourceState,
                        POOL_PREFIX: PoolState}[key[:key.index(":") + 1]]
                st = kind(key.split(":", 1)[1], self.settings, partition)
            st.book.silences = self.silences
            self.states[key] = st
        st.partition = partition
        return st

    def process(self, messages: Sequence[InMessage], now: float,
                saved: Saved = lambda k: None) -> OpsOutbox:
        box = OpsOutbox()
        touched: dict[str, Any] = {}
        pools: dict[str, list[Record]] = {}  # pool news of the whole micro-batch
        t = self.settings.topics
        for msg in messages:
            try:
                if msg.topic == t.pipeline:
                    self._pipeline(msg, now, saved, box, touched, pools)
                elif msg.topic == t.metrics:
                    self._metrics(msg, now, saved, box, touched)
                elif msg.topic == self.pool_topic:
                    self._pools(msg, now, saved, box, touched)
            except Exception as exc:  # a bug met on one input costs only that input
                log.exception("message %s/%s failed; dead-lettered", msg.partition, msg.offset)
                raw = (msg.value or b"").decode("utf-8", errors="replace")
                box.deadletters.append(DeadLetter(
                    f"internal_error: {type(exc).__name__}: {exc}"[:500], raw).to_record(
                    msg.topic or "", msg.partition, msg.offset))
        for key, st in touched.items():
            box.checkpoints.append((st.partition, key, st.to_dict()))
        if self.settings.quota.enabled:
            box.pool_usage.extend(pools.items())
        return box

    def _pipeline(self, msg: InMessage, now: float, saved: Saved, box: OpsOutbox,
                  touched: dict[str, Any], pools: dict[str, list[Record]]) -> None:
        recs: list[Record] = []
        lim = self.settings.limits
        for dl in parse_pipeline(msg.value, recs, lim.max_message_bytes, lim.max_batch_events):
            box.deadletters.append(dl.to_record(msg.topic or "", msg.partition, msg.offset))
        if not self.settings.pipelines.enabled:
            return
        fresh: dict[str, bool] = {}  # per pipeline: this message not folded in before
        for rec in sorted(recs, key=lambda r: r["ts"]):
            key = PIPELINE_PREFIX + rec["pipeline"]
            st = self._state(key, msg.partition, now, saved)
            if key not in fresh:
                fresh[key] = st.fresh(msg.topic or "", msg.partition, msg.offset)
            if not fresh[key]:
                continue
            touched[key] = st
            box.events += 1
            for pool, resource, point in st.ingest(rec, now, self.references, box):
                pools.setdefault(pool, []).append({
                    "pool": pool, "resource": resource, "ts": point.ts,
                    "pipeline": point.pipeline, "run_id": point.run_id,
                    "status": point.status, "run_used": point.run_used, "used": point.used,
                    "limit": point.limit})

    def _metrics(self, msg: InMessage, now: float, saved: Saved, box: OpsOutbox,
                 touched: dict[str, Any]) -> None:
        cols = MetricColumns()
        lim = self.settings.limits
        for dl in parse_metrics(msg.value, cols, lim.max_message_bytes, lim.max_batch_events):
            box.deadletters.append(dl.to_record(msg.topic or "", msg.partition, msg.offset))
        if not len(cols) or not self.settings.metric_anomaly.enabled:
            return
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (src, metric) in enumerate(zip(cols.source, cols.metric, strict=True)):
            groups.setdefault((src, metric), []).append(i)
        ts, values = np.asarray(cols.ts), np.asarray(cols.value)
        fresh: dict[str, bool] = {}
        for (src, metric), rows in groups.items():
            key = SOURCE_PREFIX + src
            st = self._state(key, msg.partition, now, saved)
            if key not in fresh:
                fresh[key] = st.fresh(msg.topic or "", msg.partition, msg.offset)
            if not fresh[key]:
                continue
            touched[key] = st
            box.events += len(rows)
            for a in st.ingest(metric, ts[rows], values[rows], now):
                box.alerts.append((a["dedup_key"], a))

    def _pools(self, msg: InMessage, now: float, saved: Saved, box: OpsOutbox,
               touched: dict[str, Any]) -> None:
        points = orjson.loads(msg.value or b"[]")
        if not isinstance(points, list) or not points:
            return
        key = POOL_PREFIX + str(points[0]["pool"])
        st = self._state(key, msg.partition, now, saved)
        if not st.fresh(msg.topic or "", msg.partition, msg.offset):
            return
        touched[key] = st
        for a in st.ingest(points, now):
            box.alerts.append((a["dedup_key"], a))

    def tick(self, now: float, saved_items: Sequence[tuple[str, Record]]) -> OpsOutbox:
        """Wall-clock checks: stalls, expiry of quiet series, runs and pipelines."""
        box = OpsOutbox()
        for key, data in saved_items:
            if key not in self.states and isinstance(data, dict):
                st = _restore(data, self.settings, now)
                if st is not None:
                    st.book.silences = self.silences
                    self.states[key] = st
        ttl = self.settings.pipelines.pipeline_ttl_s
        for key, st in list(self.states.items()):
            alerts = st.tick(now) if isinstance(st, (PipelineState, SourceState)) else []
            alerts += st.tick_alerts(now)
            if now - st.last_seen > ttl:
                alerts += st.book.resolve_where(f"quiet for {ttl:.0f} s; its state expired",
                                                now, st.name)
                del self.states[key]
                box.checkpoints.append((st.partition, key, None))
            elif alerts:
                box.checkpoints.append((st.partition, key, st.to_dict()))
            box.alerts.extend((a["dedup_key"], a) for a in alerts)
        return box

    def revoke(self, partitions: set[int]) -> None:
        for key in [k for k, st in self.states.items() if st.partition in partitions]:
            del self.states[key]


def _restore(data: Record, settings: Settings, now: float) -> Any:
    kind = data.get("kind")
    if kind == "pipeline":
        return PipelineState.from_dict(data, settings, now)
    if kind == "source":
        return SourceState.from_dict(data, settings, now)
    if kind == "pool":
        return PoolState.from_dict(data, settings, now)
    return None

