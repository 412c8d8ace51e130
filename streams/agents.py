"""Faust agents: move bytes between Kafka and :class:`~streams.pipeline.PredictionPipeline`.

Per micro-batch (``worker.batch_max`` messages or ``worker.batch_within_s``):
parse and process everything at once, publish dead letters, window statistics
and alerts, then write one checkpoint per model touched into the
changelog-backed state table, on the partition the model's events came from.
A timer runs the wall-clock checks (outage, idle windows, expiry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import faust
import orjson
from faust.types import TP, EventT
from prometheus_client import CollectorRegistry, generate_latest

from alerting.manager import Silence
from streams.app import Sentinelle
from streams.follow import follow_topic
from streams.metrics import make_metrics
from streams.operations import OpsOutbox, OpsPipeline
from streams.parse import DeadLetter, raw_text
from streams.pipeline import InMessage, Outbox, PredictionPipeline
from streams.references import InvalidProfile, ReferenceStore

__all__ = ["register"]

log = logging.getLogger("sentinelle.worker")


def register(s: Sentinelle, registry: CollectorRegistry | None = None) -> PredictionPipeline:
    """Attach Sentinelle's agents, timer and web pages to ``s.app``."""
    app, settings = s.app, s.settings
    registry = registry or CollectorRegistry()
    metrics = make_metrics(registry)
    references = ReferenceStore(settings.skew, settings.drift.baseline_factor)
    references_loaded = asyncio.Event()
    silences: dict[str, Silence] = {}  # shared by every model's alert manager
    servers = settings.kafka.bootstrap_servers or "127.0.0.1:9092"
    pipeline = PredictionPipeline(settings, s.predictions.get_topic_name(), references,
                                  silences=silences)
    topic_name = s.predictions.get_topic_name()
    ops = OpsPipeline(settings, s.pool_usage.get_topic_name(), references, silences)

    def saved(model: str) -> dict[str, Any] | None:
        value = s.state.data.get(model)
        return value if isinstance(value, dict) else None

    def checkpoint(partition: int, model: str, value: dict[str, Any] | None,
                   table: Any = None) -> None:
        # One changelog write per model per micro-batch, on the model's own
        # partition. (Faust's ``table[key] = value`` would take the partition from
        # the current event, which a micro-batch of many events does not have.)
        table = s.state if table is None else table
        if value is None:
            table.data.pop(model, None)
            table.send_changelog(partition, model, None, value_serializer="raw")
        else:
            table.data[model] = value
            table.send_changelog(partition, model, value)

    async def publish(box: Outbox) -> None:
        for rec in box.deadletters:
            metrics.deadletters.labels(rec["topic"], rec["reason"].split(":", 1)[0]).inc()
            await s.deadletter.send(key=None, value=orjson.dumps(rec))
        for model, rec in box.stats:
            metrics.windows.inc()
            await s.stats.send(key=model.encode(), value=orjson.dumps(rec))
        for key, alert in box.alerts:
            metrics.alerts.labels(alert["payload"]["class"], alert["event_action"]).inc()
            log.info("alert %s %s: %s", alert["event_action"], key, alert["payload"]["summary"])
            await s.alerts.send(key=alert["payload"]["component"].encode(),
                                value=orjson.dumps(alert))
        for model, command in box.commands:
            metrics.commands.labels(command["action"]).inc()
            log.info("command %s: %s", command["command_id"], command["reason"])
            await s.commands.send(key=model.encode(), value=orjson.dumps(command))
        for partition, model, value in box.checkpoints:
            checkpoint(partition, model, value)
        metrics.models.set(len(pipeline.monitors))

    @app.agent(s.inputs, name="sentinelle.watch_predictions")
    async def watch_predictions(stream: faust.StreamT) -> None:
        # take_events (faust-streaming) is missing from the StreamT interface.
        batches = stream.take_events  # type: ignore[attr-defined]
        async for events in batches(settings.worker.batch_max,
                                    within=settings.worker.batch_within_s):
            await references_loaded.wait()  # never judge serving data before its profile
            await handle(events)

    @app.task
    async def follow_references() -> None:
        """Every profile, before any prediction is judged (see streams/follow.py)."""
        await follow_topic(servers, settings.topics.references, load_reference,
                           references_loaded)

    @app.task
    async def follow_silences() -> None:
        """Every silence, shared by the alert managers of all the models."""
        await follow_topic(servers, settings.topics.silences, load_silence, asyncio.Event())

    async def load_silence(key: bytes | None, value: bytes | None, partition: int,
                           offset: int) -> None:
        sid = (key or b"").decode(errors="replace")
        if value is None:
            silences.pop(sid, None)
            return
        try:
            silence = Silence.from_dict(orjson.loads(value))
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            rec = DeadLetter(f"bad_value: not a silence: {exc}", raw_text(value)).to_record(
                settings.topics.silences, partition, offset)
            await publish(Outbox(deadletters=[rec]))
            return
        silences[silence.id] = silence
        log.info("silence %s: %s until %s", silence.id, silence.matchers, silence.ends_at)

    async def load_reference(key: bytes | None, value: bytes | None, partition: int,
                             offset: int) -> None:
        if value is None:  # a tombstone: the profile was withdrawn
            model, _, version = (key or b"").decode(errors="replace").partition(":")
            references.remove(model, version)
            return
        try:
            references.add(orjson.loads(value))
        except (orjson.JSONDecodeError, InvalidProfile) as exc:
            reason = str(exc) if isinstance(exc, InvalidProfile) else f"not_json: {exc}"
            rec = DeadLetter(reason, raw_text(value)).to_record(
                settings.topics.references, partition, offset)
            await publish(Outbox(deadletters=[rec]))

    async def handle(events: Sequence[EventT]) -> None:
        messages = [InMessage(e.message.value, e.message.partition, e.message.offset,
                              e.message.topic) for e in events]
        metrics.messages.labels("inputs").inc(len(messages))
        box = pipeline.process_safely(messages, time.time(), saved)
        metrics.events.labels(topic_name).inc(box.events)
        await publish(box)

    def saved_ops(key: str) -> dict[str, Any] | None:
        value = s.ops_state.data.get(key)
        return value if isinstance(value, dict) else None

    async def publish_ops(box: OpsOutbox) -> None:
        await publish(Outbox(deadletters=box.deadletters, alerts=box.alerts,
                             commands=box.commands))
        for pool, points in box.pool_usage:  # re-keyed by pool: one message per pool
            await s.pool_usage.send(key=pool.encode(), value=orjson.dumps(points))
        for partition, key, value in box.checkpoints:
            checkpoint(partition, key, value, s.ops_state)

    @app.agent(s.operations, name="sentinelle.watch_operations")
    async def watch_operations(stream: faust.StreamT) -> None:
        batches = stream.take_events  # type: ignore[attr-defined]
        async for events in batches(settings.worker.batch_max,
                                    within=settings.worker.batch_within_s):
            await references_loaded.wait()  # validation skew needs the training profiles
            messages = [InMessage(e.message.value, e.message.partition, e.message.offset,
                                  e.message.topic) for e in events]
            metrics.messages.labels("operations").inc(len(messages))
            box = ops.process(messages, time.time(), saved_ops)
            metrics.events.labels("operations").inc(box.events)
            await publish_ops(box)

    @app.timer(settings.worker.tick_s, name="sentinelle.ops_wall_clock_checks")
    async def ops_wall_clock_checks() -> None:
        await publish_ops(ops.tick(time.time(), list(s.ops_state.data.items())))

    @app.timer(settings.worker.tick_s, name="sentinelle.wall_clock_checks")
    async def wall_clock_checks() -> None:
        items: Iterable[tuple[str, Any]] = list(s.state.data.items())
        await publish(pipeline.tick(time.time(), items))
        for model, mon in pipeline.monitors.items():
            for outcome, n in mon.labels.stats().items():
                metrics.labels.labels(model, outcome).set(n)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # The memory store keeps revoked partitions' keys; drop them, or this
        # worker would keep checking models another worker now owns.
        ours = {topic_name, *s.operations.topics}
        parts = {tp.partition for tp in revoked if tp.topic in ours}
        pipeline.revoke(parts)
        ops.revoke(parts)
        for table in (s.state, s.ops_state):
            for key, value in list(table.data.items()):
                if isinstance(value, dict) and value.get("partition") in parts:
                    table.data.pop(key, None)

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    return pipeline
