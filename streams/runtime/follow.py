"""Follow a compacted topic in full on every worker (outside the consumer group).

Reference profiles and silences concern every model, and a model's partition
may land on any worker, so each worker reads these topics whole, from the
beginning, and keeps following them. ``loaded`` is set once the topic has been
read to its end at start (or when reading fails: the worker goes on without it,
says so, and tries again).

The end is where the broker's end offsets are reached *and* a fetch comes back
empty: Tansu (the embedded broker) reports the end of a partition as its last
record batch's base offset + 1, so the end offsets alone would stop short of
the rest of that batch.

A record that its handler cannot use is the handler's to dead-letter; should
the handler raise anyway, the record is logged and skipped. Reading resumes
after a broken connection from the last record handled, never from the start,
so one bad record can neither stop the follower nor make it read the topic
again in a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["follow_topic", "read_all", "read_all_partitions"]

log = logging.getLogger("sentinelle.follow")

OnRecord = Callable[[bytes | None, bytes | None, int, int], Awaitable[None]]


async def follow_topic(servers: str, topic: str, on_record: OnRecord,
                       loaded: asyncio.Event, retry_s: float = 5.0,
                       consumer_options: dict[str, object] | None = None) -> None:
    """Call ``on_record(key, value, partition, offset)`` for every record, forever."""
    positions: dict[int, int] = {}  # partition -> next offset to read
    while True:
        try:
            await _read(servers, topic, on_record, loaded, positions, consumer_options or {})
        except asyncio.CancelledError:
            raise
        except Exception:  # the broker or the topic: log, keep serving, retry
            log.exception("cannot read %s; retrying in %.0f s (from where it stopped)", topic,
                          retry_s)
            loaded.set()
            await asyncio.sleep(retry_s)


async def _start(servers: str, topic: str,
                 options: dict[str, object] | None = None) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * 1024 * 1024, **(options or {}))
    await consumer.start()
    while not consumer.assignment():  # partitions are known once metadata arrives
        await consumer.getmany(timeout_ms=100)
    return consumer


async def _at_end(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


async def read_all(servers: str, topic: str, consumer_options: dict[str, object] | None = None,
                   progress: Callable[[int, int], None] | None = None
                   ) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record now in ``topic``, oldest first per partition.

    ``consumer_options``: more keyword arguments of the consumer, as
    :func:`streams.runtime.kafka.client_options` gives them. ``progress(read,
    total)`` is called after each fetch: records read, and records the topic held
    when reading began."""
    consumer = await _start(servers, topic, consumer_options)
    try:
        parts = list(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        total = sum(max(0, ends[tp] - starts.get(tp, 0)) for tp in parts)
        out: list[tuple[bytes | None, bytes | None]] = []
        while True:
            got = await consumer.getmany(timeout_ms=300)
            for msgs in got.values():
                out.extend((m.key, m.value) for m in msgs)
            if progress is not None:
                progress(len(out), total)
            if not got and await _at_end(consumer, ends):
                return out
    finally:
        await consumer.stop()


async def read_all_partitions(servers: str, topic: str,
                              consumer_options: dict[str, object] | None = None
                              ) -> list[tuple[int, bytes | None]]:
    """(partition, value) of every record now in ``topic``, oldest first per partition."""
    consumer = await _start(servers, topic, consumer_options)
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        out: list[tuple[int, bytes | None]] = []
        while True:
            got = await consumer.getmany(timeout_ms=300)
            for tp, msgs in got.items():
                out.extend((tp.partition, m.value) for m in msgs)
            if not got and await _at_end(consumer, ends):
                return out
    finally:
        await consumer.stop()


async def _read(servers: str, topic: str, on_record: OnRecord, loaded: asyncio.Event,
                positions: dict[int, int], options: dict[str, object]) -> None:
    consumer = await _start(servers, topic, options)
    try:
        parts = consumer.assignment()
        for tp in parts:
            if tp.partition in positions:
                consumer.seek(tp, positions[tp.partition])
        ends = await consumer.end_offsets(list(parts))
        if all(ends[tp] == 0 for tp in parts):
            loaded.set()
        while True:
            got = await consumer.getmany(timeout_ms=300 if not loaded.is_set() else 500)
            for tp, msgs in got.items():
                for msg in msgs:
                    await _handle(on_record, topic, msg.key, msg.value, tp, msg.offset)
                    positions[tp.partition] = msg.offset + 1
            if not loaded.is_set() and not got and await _at_end(consumer, ends):
                log.info("read %s to its end", topic)
                loaded.set()
    finally:
        await consumer.stop()


async def _handle(on_record: OnRecord, topic: str, key: bytes | None, value: bytes | None,
                  tp: TopicPartition, offset: int) -> None:
    try:
        await on_record(key, value, tp.partition, offset)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %d/%d: the record could not be handled; skipped", topic,
                      tp.partition, offset)
