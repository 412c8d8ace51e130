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
from aiokafka import AIOKafkaConsumer
from faust.types import TP, EventT
from prometheus_client import CollectorRegistry, generate_latest

from streams.app import Sentinelle
from streams.metrics import make_metrics
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
    pipeline = PredictionPipeline(settings, s.predictions.get_topic_name(), references)
    topic_name = s.predictions.get_topic_name()

    def saved(model: str) -> dict[str, Any] | None:
        value = s.state.data.get(model)
        return value if isinstance(value, dict) else None

    def checkpoint(partition: int, model: str, value: dict[str, Any] | None) -> None:
        # One changelog write per model per micro-batch, on the model's own
        # partition. (Faust's ``table[key] = value`` would take the partition from
        # the current event, which a micro-batch of many events does not have.)
        if value is None:
            s.state.data.pop(model, None)
            s.state.send_changelog(partition, model, None, value_serializer="raw")
        else:
            s.state.data[model] = value
            s.state.send_changelog(partition, model, value)

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
        """Read all of ml.references, then keep following it (outside the group).

        Predictions wait until the topic has been read once; if reading fails,
        the worker says so, goes on without the profiles it could not read (an
        unreferenced version learns from its first events), and tries again.
        """
        while True:
            try:
                await read_references()
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker or the topic: log, keep serving, retry
                log.exception("cannot read %s; retrying in 5 s", settings.topics.references)
                references_loaded.set()
                await asyncio.sleep(5)

    async def read_references() -> None:
        topic = settings.topics.references
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                                    group_id=None, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        await consumer.start()
        try:
            parts = consumer.assignment()
            while not parts:
                await consumer.getmany(timeout_ms=100)
                parts = consumer.assignment()
            ends = await consumer.end_offsets(list(parts))
            if all(ends[tp] == 0 for tp in parts):
                references_loaded.set()
            while True:
                for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                    for msg in msgs:
                        await load_reference(msg.key, msg.value, tp.partition, msg.offset)
                positions = {tp: await consumer.position(tp) for tp in parts}
                if not references_loaded.is_set() and all(
                        positions[tp] >= ends[tp] for tp in parts):
                    log.info("loaded %d reference profiles", len(references))
                    references_loaded.set()
        finally:
            await consumer.stop()

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
        parts = {tp.partition for tp in revoked if tp.topic == topic_name}
        pipeline.revoke(parts)
        for model, value in list(s.state.data.items()):
            if isinstance(value, dict) and value.get("partition") in parts:
                s.state.data.pop(model, None)

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    return pipeline
