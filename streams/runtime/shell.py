"""The pieces of the Faust shell, each with its dependencies given: testable without a broker.

:mod:`streams.runtime.agents` wires them to Faust (agents, timers, tasks); here
they are plain classes, so a test hands them mocked topics and tables (Faust's
testing guide) and sees what would be published:

- :class:`Publisher` sends an outbox's outputs (dead letters, window statistics,
  alerts, commands, pool usage), each encoded and size-checked first, and its
  state through a :class:`StateWriter`;
- :class:`StateWriter` writes one state table's records through a
  :class:`~streams.core.state.Checkpointer` (size-checked, split when large,
  only when changed);
- :class:`ReferenceLoader` and :class:`SilenceLoader` take the records of the
  followed topics (``ml.references``, ``ml.silences``), dead-lettering what
  cannot be used;
- :class:`Lag` tells which input partitions the worker is catching up on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from faust.types import TP, EventT
from prometheus_client import Counter as PromCounter

from alerting.manager import Silence
from detectors.contract import MAX_ALERT_BYTES
from streams.config import Settings
from streams.core.operations import OpsOutbox
from streams.core.parse import DeadLetter, raw_text
from streams.core.predictions import Outbox
from streams.core.references import InvalidProfile, ReferenceStore
from streams.core.state import Checkpointer, read
from streams.runtime.metrics import Metrics

__all__ = ["Publisher", "StateWriter", "ReferenceLoader", "SilenceLoader", "Lag",
           "export_counts"]

log = logging.getLogger("sentinelle.worker")


class Sender(Protocol):
    """What the publisher needs of a Faust topic."""

    async def send(self, *, key: bytes | None, value: bytes) -> Any: ...


class Table(Protocol):
    """What the state writer needs of a Faust table."""

    data: Any

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> Any: ...


def export_counts(counter: PromCounter, counts: Counter[str], last: dict[str, int]) -> None:
    """Add what a plain counter gained since the last call to a Prometheus counter."""
    for name, n in counts.items():
        if n > last.get(name, 0):
            counter.labels(name).inc(n - last.get(name, 0))
            last[name] = n


class StateWriter:
    """Writes one state table's records through a :class:`Checkpointer`."""

    def __init__(self, table: Table, name: str, metrics: Metrics, chunk_bytes: int) -> None:
        self.table, self.name, self.metrics = table, name, metrics
        self.checkpointer = Checkpointer(chunk_bytes)

    def saved(self, key: str) -> dict[str, Any] | None:
        """The state stored under ``key`` (chunks put together), or None."""
        return read(self.table.data, key)

    def write(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        # One changelog record per key changed, on the key's own partition, sent
        # as encoded bytes. (Faust's ``table[key] = value`` would take the
        # partition from the current event, which a micro-batch does not have.)
        try:
            writes = self.checkpointer.writes(partition, key, value, self.table.data)
        except Exception:
            log.exception("state %r cannot be encoded; not written", key[:120])
            self.metrics.guards.labels("state_unencodable").inc()
            return
        if not writes:
            self.metrics.state_writes.labels(self.name, "unchanged").inc()
            return
        for w in writes:
            if w.data is None:
                self.table.data.pop(w.key, None)
            else:
                self.table.data[w.key] = w.data
            self.table.send_changelog(w.partition, w.key, w.value, value_serializer="raw")
        self.metrics.state_writes.labels(self.name, "written").inc(len(writes))
        if len(writes) > 2:
            self.metrics.state_writes.labels(self.name, "chunked").inc()
        self.metrics.state_largest.set(self.checkpointer.largest)

    def forget(self, keys: list[str]) -> None:
        self.checkpointer.forget(keys)


@dataclass(frozen=True)
class Topics:
    """Where each kind of output goes."""

    deadletter: Sender
    stats: Sender
    alerts: Sender
    commands: Sender
    pool_usage: Sender


class Publisher:
    """Sends outboxes: outputs encoded and size-checked, then state.

    An output that cannot be encoded (never one built from a parsed input; a
    safety net) or is larger than its bound (``limits.max_record_bytes``; 512 kB
    for an alert, the contract's) is logged, counted
    (``sentinelle_outputs_dropped_total{kind,reason}``) and skipped, as is one
    whose send fails: none of them stops the worker.
    """

    def __init__(self, topics: Topics, models: StateWriter, operations: StateWriter,
                 metrics: Metrics, max_record_bytes: int) -> None:
        self.topics, self.models, self.operations = topics, models, operations
        self.metrics = metrics
        self.max_record_bytes = max_record_bytes

    def encode(self, kind: str, rec: Any, limit: int) -> bytes | None:
        try:
            data = orjson.dumps(rec)
        except TypeError as exc:
            log.error("%s not published: it cannot be encoded (%s)", kind, exc)
            self.metrics.outputs_dropped.labels(kind, "unencodable").inc()
            return None
        if len(data) > limit:
            log.error("%s not published: %d bytes > %d", kind, len(data), limit)
            self.metrics.outputs_dropped.labels(kind, "oversized").inc()
            return None
        return data

    async def send(self, topic: Sender, kind: str, key: bytes | None, rec: Any,
                   limit: int | None = None) -> None:
        data = self.encode(kind, rec, self.max_record_bytes if limit is None else limit)
        if data is None:
            return
        try:
            await topic.send(key=key, value=data)
        except Exception:
            log.exception("%s not published: the send failed", kind)
            self.metrics.outputs_dropped.labels(kind, "send_failed").inc()

    async def publish(self, box: Outbox | OpsOutbox) -> None:
        t, m = self.topics, self.metrics
        for rec in box.deadletters:
            m.deadletters.labels(rec["topic"], rec["reason"].split(":", 1)[0]).inc()
            await self.send(t.deadletter, "deadletter", None, rec)
        for model, rec in getattr(box, "stats", ()):
            m.windows.inc()
            await self.send(t.stats, "stats", model.encode(), rec)
        for key, alert in box.alerts:
            m.alerts.labels(alert["payload"]["class"], alert["event_action"]).inc()
            log.info("alert %s %s: %s", alert["event_action"], key, alert["payload"]["summary"])
            await self.send(t.alerts, "alert", alert["payload"]["component"].encode(), alert,
                            min(MAX_ALERT_BYTES, self.max_record_bytes))
        for model, command in box.commands:
            m.commands.labels(command["action"]).inc()
            log.info("command %s: %s", command["command_id"], command["reason"])
            await self.send(t.commands, "command", model.encode(), command)
        writer = self.models if isinstance(box, Outbox) else self.operations
        for partition, key, value in box.checkpoints:
            writer.write(partition, key, value)
        if isinstance(box, OpsOutbox):
            for pool, points in box.pool_usage:  # re-keyed by pool: one message per pool
                await self.send(t.pool_usage, "pool_usage", pool.encode(), points)

    async def dead(self, topic: str, partition: int, offset: int, reason: str,
                   value: bytes | None) -> None:
        """Dead-letter one record of a followed topic."""
        rec = DeadLetter(reason, raw_text(value or b"")).to_record(topic, partition, offset)
        await self.publish(Outbox(deadletters=[rec]))


class ReferenceLoader:
    """``ml.references`` records into the reference store (calibrated off the event loop)."""

    def __init__(self, references: ReferenceStore, publisher: Publisher, topic: str,
                 metrics: Metrics) -> None:
        self.references, self.publisher, self.topic = references, publisher, topic
        self.metrics = metrics

    async def __call__(self, key: bytes | None, value: bytes | None, partition: int,
                       offset: int) -> None:
        if value is None:  # a tombstone: the profile was withdrawn
            model, _, version = (key or b"").decode(errors="replace").partition(":")
            self.references.remove(model, version)
            return
        try:
            doc = orjson.loads(value)
            # Calibration is CPU work (a bootstrap per feature): off the event loop.
            ref = await asyncio.to_thread(self.references.prepare, doc)
        except (orjson.JSONDecodeError, InvalidProfile) as exc:
            reason = str(exc) if isinstance(exc, InvalidProfile) else f"not_json: {exc}"
            await self.publisher.dead(self.topic, partition, offset, reason, value)
            return
        except Exception as exc:
            log.exception("reference %d/%d cannot be used", partition, offset)
            self.metrics.guards.labels("follower_errors").inc()
            await self.publisher.dead(self.topic, partition, offset,
                                      f"internal_error: {type(exc).__name__}: {exc}"[:500], value)
            return
        self.references.put(ref)


class SilenceLoader:
    """``ml.silences`` records into the silences every alert manager consults, within
    ``limits.max_silences`` (expired ones make room first)."""

    def __init__(self, silences: dict[str, Silence], publisher: Publisher, topic: str,
                 max_silences: int, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.silences, self.publisher, self.topic = silences, publisher, topic
        self.max_silences, self.metrics, self.clock = max_silences, metrics, clock

    async def __call__(self, key: bytes | None, value: bytes | None, partition: int,
                       offset: int) -> None:
        sid = (key or b"").decode(errors="replace")
        if value is None:
            self.silences.pop(sid, None)
            return
        try:
            silence = Silence.from_dict(orjson.loads(value))
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            await self.publisher.dead(self.topic, partition, offset,
                                      f"bad_value: not a silence: {exc}", value)
            return
        held = self.silences
        if silence.id not in held and len(held) >= self.max_silences:
            now = self.clock()
            for old in [k for k, v in held.items() if v.ends_at <= now]:
                del held[old]  # expired: no longer holds anything back
            if len(held) >= self.max_silences:
                self.metrics.guards.labels("refused_silences").inc()
                await self.publisher.dead(self.topic, partition, offset,
                                          f"over_capacity: limits.max_silences "
                                          f"({self.max_silences}) silences are active", value)
                return
        held[silence.id] = silence
        log.info("silence %s: %s until %s", silence.id, silence.matchers, silence.ends_at)


class Lag:
    """Which input partitions the worker is catching up on.

    A partition is behind when messages wait unread there and the last one read
    was produced more than a few seconds ago (a backlog, or a partition the
    consumer has not fetched from lately): its models' silence is not theirs, so
    no outage, no idle flush, no expiry there (see
    :meth:`streams.core.monitor.ModelMonitor.tick`).
    """

    def __init__(self, settings: Settings) -> None:
        self.read: dict[TP, tuple[int, float | None]] = {}  # last (offset, Kafka timestamp)
        self.late_by = max(2.0, 2 * settings.worker.batch_within_s)

    def seen(self, events: Sequence[EventT]) -> None:
        for e in events:
            self.read[e.message.tp] = (e.message.offset, e.message.timestamp)

    async def behind(self, consumer: Any, topics: set[str], now: float) -> set[int]:
        out = set()
        try:
            for tp in consumer.assignment():
                if tp.topic not in topics:
                    continue
                high = consumer.highwater(tp)
                done, stamp = self.read.get(tp, (None, None))
                position = done + 1 if done is not None else await consumer.position(tp)
                if high is None or position is None or high <= position:
                    continue  # caught up
                if stamp is None or now - stamp > self.late_by:
                    out.add(tp.partition)
        except Exception:  # no consumer yet (starting, rebalancing): nobody is behind
            log.debug("no highwater marks yet", exc_info=True)
        return out
