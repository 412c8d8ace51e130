"""Faust agents: move bytes between Kafka and the processors of :mod:`streams.core`.

Per micro-batch (``worker.batch_max`` messages or ``worker.batch_within_s``),
in slices of about ``worker.slice_bytes`` of input (yielding to timers, the
web page and rebalances between slices): parse and process everything at
once, publish dead letters, window statistics and alerts, then write the state
changed into the changelog-backed state table, on the partition the model's
events came from (:mod:`streams.core.state`: size-checked, split when large, only
when changed). A timer runs the wall-clock checks (outage, idle windows,
expiry).

Nothing here lets one input, one model or one record stop the worker: every
output is encoded and size-checked before it is sent (an output that cannot be
is logged and counted, ``sentinelle_outputs_dropped_total``), timers and
followers catch and count their errors, and no prediction is judged, nor any
alert released, before the reference profiles and the silences have been read
to their end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import faust
import orjson
from faust.types import TP, EventT
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter

from alerting.manager import Silence
from streams.core.operations import OperationsProcessor, OpsOutbox
from streams.core.parse import DeadLetter, raw_text
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import InvalidProfile, ReferenceStore
from streams.core.state import Checkpointer, read
from streams.runtime.app import Sentinelle
from streams.runtime.follow import follow_topic
from streams.runtime.metrics import Metrics, make_metrics

__all__ = ["register"]

log = logging.getLogger("sentinelle.worker")

MAX_ALERT_BYTES = 512 * 1024  # the contract's bound on one ml.alerts message


def slices(events: Sequence[EventT], max_bytes: int) -> Iterator[Sequence[EventT]]:
    """Consecutive runs of ``events`` of about ``max_bytes`` of input each."""
    start, size = 0, 0
    for i, e in enumerate(events):
        size += len(e.message.value or b"")
        if size >= max_bytes:
            yield events[start:i + 1]
            start, size = i + 1, 0
    if start < len(events):
        yield events[start:]


def export_counts(counter: PromCounter, counts: Counter[str], last: dict[str, int]) -> None:
    """Add what a plain counter gained since the last call to a Prometheus counter."""
    for name, n in counts.items():
        if n > last.get(name, 0):
            counter.labels(name).inc(n - last.get(name, 0))
            last[name] = n


class _StateWriter:
    """Writes one state table's records through a :class:`Checkpointer`."""

    def __init__(self, table: Any, name: str, metrics: Metrics, chunk_bytes: int) -> None:
        self.table, self.name, self.metrics = table, name, metrics
        self.checkpointer = Checkpointer(chunk_bytes)

    def saved(self, key: str) -> dict[str, Any] | None:
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


def register(s: Sentinelle, registry: CollectorRegistry | None = None) -> PredictionProcessor:
    """Attach Sentinelle's agents, timers, followers and web pages to ``s.app``."""
    app, settings = s.app, s.settings
    lim = settings.limits
    registry = registry or CollectorRegistry()
    metrics = make_metrics(registry)
    references = ReferenceStore(settings.skew, settings.drift.baseline_factor,
                                lim.max_profile_features, lim.max_profile_bins)
    references_loaded, silences_loaded = asyncio.Event(), asyncio.Event()
    silences: dict[str, Silence] = {}  # shared by every model's alert manager
    servers = settings.kafka.servers
    topic_name = s.predictions.get_topic_name()
    pipeline = PredictionProcessor(settings, topic_name, references, silences=silences)
    ops = OperationsProcessor(settings, s.pool_usage.get_topic_name(), references, silences)
    chunk = int(lim.max_record_bytes * 0.6)  # base64 makes a chunk 4/3 larger
    models = _StateWriter(s.state, "model-state", metrics, chunk)
    operations = _StateWriter(s.ops_state, "ops-state", metrics, chunk)
    exported: tuple[dict[str, int], dict[str, int]] = ({}, {})  # what was already counted
    # the last message handed to a pipeline, per input partition: (offset, Kafka timestamp)
    read: dict[TP, tuple[int, float | None]] = {}
    late_by = max(2.0, 2 * settings.worker.batch_within_s)

    async def behind(topics: set[str]) -> set[int]:
        """Input partitions the worker is catching up on: messages wait unread there, and
        the last one read was produced more than a few seconds ago (a backlog, or a
        partition the consumer has not fetched from lately). Their models' silence is not
        theirs: no outage, no idle flush (see :meth:`ModelMonitor.tick`)."""
        out = set()
        now = time.time()
        try:
            for tp in app.consumer.assignment():
                if tp.topic not in topics:
                    continue
                high = app.consumer.highwater(tp)
                done, stamp = read.get(tp, (None, None))
                position = done + 1 if done is not None else await app.consumer.position(tp)
                if high is None or position is None or high <= position:
                    continue  # caught up
                if stamp is None or now - stamp > late_by:
                    out.add(tp.partition)
        except Exception:  # no consumer yet (starting, rebalancing): nobody is behind
            log.debug("no highwater marks yet", exc_info=True)
        return out

    def encode(kind: str, rec: Any, limit: int) -> bytes | None:
        try:
            data = orjson.dumps(rec)
        except TypeError as exc:  # cannot be JSON (never from a parsed input; a safety net)
            log.error("%s not published: it cannot be encoded (%s)", kind, exc)
            metrics.outputs_dropped.labels(kind, "unencodable").inc()
            return None
        if len(data) > limit:
            log.error("%s not published: %d bytes > %d", kind, len(data), limit)
            metrics.outputs_dropped.labels(kind, "oversized").inc()
            return None
        return data

    async def send(topic: faust.TopicT, kind: str, key: bytes | None, rec: Any,
                   limit: int = lim.max_record_bytes) -> None:
        data = encode(kind, rec, limit)
        if data is None:
            return
        try:
            await topic.send(key=key, value=data)
        except Exception:
            log.exception("%s not published: the send failed", kind)
            metrics.outputs_dropped.labels(kind, "send_failed").inc()

    async def publish(box: Outbox | OpsOutbox) -> None:
        for rec in box.deadletters:
            metrics.deadletters.labels(rec["topic"], rec["reason"].split(":", 1)[0]).inc()
            await send(s.deadletter, "deadletter", None, rec)
        for model, rec in getattr(box, "stats", ()):
            metrics.windows.inc()
            await send(s.stats, "stats", model.encode(), rec)
        for key, alert in box.alerts:
            metrics.alerts.labels(alert["payload"]["class"], alert["event_action"]).inc()
            log.info("alert %s %s: %s", alert["event_action"], key, alert["payload"]["summary"])
            await send(s.alerts, "alert", alert["payload"]["component"].encode(), alert,
                       min(MAX_ALERT_BYTES, lim.max_record_bytes))
        for model, command in box.commands:
            metrics.commands.labels(command["action"]).inc()
            log.info("command %s: %s", command["command_id"], command["reason"])
            await send(s.commands, "command", model.encode(), command)
        writer = models if isinstance(box, Outbox) else operations
        for partition, key, value in box.checkpoints:
            writer.write(partition, key, value)
        if isinstance(box, OpsOutbox):
            for pool, points in box.pool_usage:  # re-keyed by pool: one message per pool
                await send(s.pool_usage, "pool_usage", pool.encode(), points)
        export_counts(metrics.guards, pipeline.counts, exported[0])
        export_counts(metrics.guards, ops.counts, exported[1])
        metrics.models.set(len(pipeline.monitors))

    async def ready() -> None:
        """Never judge serving data before its profile, nor alert before the silences."""
        await references_loaded.wait()
        await silences_loaded.wait()

    def loaded() -> bool:
        """The timers wait too: a restored alert held by a silence must stay held."""
        return references_loaded.is_set() and silences_loaded.is_set()

    def messages_of(events: Sequence[EventT]) -> list[InMessage]:
        for e in events:
            read[e.message.tp] = (e.message.offset, e.message.timestamp)
        return [InMessage(e.message.value, e.message.partition, e.message.offset,
                          e.message.topic, e.message.key) for e in events]

    # A slice is processed and its outputs and state handed to the producer as one
    # unit, even when the worker is told to stop half-way: Faust stops the consumer
    # (committing what was acknowledged: earlier micro-batches only), then flushes
    # the producer, then cancels the agents. ``finish_slices`` makes the flush wait
    # for the slice in flight, and no slice starts after it; the rest of the
    # micro-batch is read again by the next owner, and skipped where it was folded.
    stopping = asyncio.Event()
    in_flight: set[asyncio.Future[None]] = set()

    async def as_a_unit(work: Any) -> None:
        task = asyncio.ensure_future(work)
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        await asyncio.shield(task)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def finish_slices(sender: Any, **kwargs: Any) -> None:
        stopping.set()
        if in_flight:
            log.info("stopping: finishing the micro-batch slice in flight")
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def handle(part: Sequence[EventT], kind: str) -> None:
        messages = messages_of(part)
        metrics.messages.labels(kind).inc(len(messages))
        if kind == "inputs":
            box: Outbox | OpsOutbox = pipeline.process_safely(messages, time.time(),
                                                              models.saved)
            metrics.events.labels(topic_name).inc(box.events)
        else:
            box = ops.process(messages, time.time(), operations.saved)
            metrics.events.labels("operations").inc(box.events)
        await publish(box)

    async def consume(stream: faust.StreamT, kind: str) -> None:
        # take_events (faust-streaming) is missing from the StreamT interface.
        batches = stream.take_events  # type: ignore[attr-defined]
        async for events in batches(settings.worker.batch_max,
                                    within=settings.worker.batch_within_s):
            await ready()  # profiles (skew, validation) and silences first
            for part in slices(events, settings.worker.slice_bytes):
                if stopping.is_set():
                    return
                await as_a_unit(handle(part, kind))
                await asyncio.sleep(0)  # let timers, the web page and rebalances in

    @app.agent(s.inputs, name="sentinelle.watch_predictions")
    async def watch_predictions(stream: faust.StreamT) -> None:
        await consume(stream, "inputs")

    @app.agent(s.operations, name="sentinelle.watch_operations")
    async def watch_operations(stream: faust.StreamT) -> None:
        await consume(stream, "operations")

    @app.task
    async def follow_references() -> None:
        """Every profile, before any prediction is judged (see streams/runtime/follow.py)."""
        await follow_topic(servers, settings.topics.references, load_reference,
                           references_loaded)

    @app.task
    async def follow_silences() -> None:
        """Every silence, shared by the alert managers of all the models."""
        await follow_topic(servers, settings.topics.silences, load_silence, silences_loaded)

    async def dead(topic: str, partition: int, offset: int, reason: str,
                   value: bytes | None) -> None:
        rec = DeadLetter(reason, raw_text(value or b"")).to_record(topic, partition, offset)
        await publish(Outbox(deadletters=[rec]))

    async def load_silence(key: bytes | None, value: bytes | None, partition: int,
                           offset: int) -> None:
        topic = settings.topics.silences
        sid = (key or b"").decode(errors="replace")
        if value is None:
            silences.pop(sid, None)
            return
        try:
            silence = Silence.from_dict(orjson.loads(value))
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            await dead(topic, partition, offset, f"bad_value: not a silence: {exc}", value)
            return
        if silence.id not in silences and len(silences) >= lim.max_silences:
            now = time.time()
            for old in [k for k, v in silences.items() if v.ends_at <= now]:
                del silences[old]  # expired: no longer holds anything back
            if len(silences) >= lim.max_silences:
                metrics.guards.labels("refused_silences").inc()
                await dead(topic, partition, offset, f"over_capacity: limits.max_silences "
                           f"({lim.max_silences}) silences are active", value)
                return
        silences[silence.id] = silence
        log.info("silence %s: %s until %s", silence.id, silence.matchers, silence.ends_at)

    async def load_reference(key: bytes | None, value: bytes | None, partition: int,
                             offset: int) -> None:
        topic = settings.topics.references
        if value is None:  # a tombstone: the profile was withdrawn
            model, _, version = (key or b"").decode(errors="replace").partition(":")
            references.remove(model, version)
            return
        try:
            doc = orjson.loads(value)
            # Calibration is CPU work (a bootstrap per feature): off the event loop.
            ref = await asyncio.to_thread(references.prepare, doc)
        except (orjson.JSONDecodeError, InvalidProfile) as exc:
            reason = str(exc) if isinstance(exc, InvalidProfile) else f"not_json: {exc}"
            await dead(topic, partition, offset, reason, value)
            return
        except Exception as exc:
            log.exception("reference %d/%d cannot be used", partition, offset)
            metrics.guards.labels("follower_errors").inc()
            await dead(topic, partition, offset,
                       f"internal_error: {type(exc).__name__}: {exc}"[:500], value)
            return
        references.put(ref)

    @app.timer(settings.worker.tick_s, name="sentinelle.ops_wall_clock_checks")
    async def ops_wall_clock_checks() -> None:
        if not loaded():
            return
        try:
            await publish(ops.tick(time.time(), list(s.ops_state.data.items()),
                                   operations.saved, await behind(set(s.operations.topics))))
        except Exception:
            log.exception("the operations' wall-clock checks failed; trying again next tick")
            metrics.guards.labels("tick_errors").inc()

    @app.timer(settings.worker.tick_s, name="sentinelle.wall_clock_checks")
    async def wall_clock_checks() -> None:
        if not loaded():
            return
        try:
            await publish(pipeline.tick(time.time(), list(s.state.data.items()), models.saved,
                                        await behind({topic_name})))
            metrics.labels.clear()  # models no longer held leave the page
            for model, mon in pipeline.monitors.items():
                for outcome, n in mon.labels.stats().items():
                    metrics.labels.labels(model, outcome).set(n)
        except Exception:
            log.exception("the wall-clock checks failed; trying again next tick")
            metrics.guards.labels("tick_errors").inc()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # The memory store keeps revoked partitions' keys; drop them, or this
        # worker would keep checking models another worker now owns.
        ours = {topic_name, *s.operations.topics}
        parts = {tp.partition for tp in revoked if tp.topic in ours}
        pipeline.revoke(parts)
        ops.revoke(parts)
        for table, writer in ((s.state, models), (s.ops_state, operations)):
            gone = [key for key, value in list(table.data.items())
                    if isinstance(value, dict) and value.get("partition") in parts]
            for key in gone:
                table.data.pop(key, None)
            writer.forget(gone)

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    return pipeline
