"""Follow a compacted topic in full on every worker (outside the consumer group).

Reference profiles and silences concern every model, and a model's partition
may land on any worker, so each worker reads these topics whole, from the
beginning, and keeps following them. ``loaded`` is set once the topic has been
read to its end at start (or when reading fails: the worker goes on without it,
says so, and tries again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

__all__ = ["follow_topic", "read_all"]

log = logging.getLogger("sentinelle.follow")

OnRecord = Callable[[bytes | None, bytes | None, int, int], Awaitable[None]]


async def follow_topic(servers: str, topic: str, on_record: OnRecord,
                       loaded: asyncio.Event, retry_s: float = 5.0) -> None:
    """Call ``on_record(key, value, partition, offset)`` for every record, forever."""
    while True:
        try:
            await _read(servers, topic, on_record, loaded)
        except asyncio.CancelledError:
            raise
        except Exception:  # the broker or the topic: log, keep serving, retry
            log.exception("cannot read %s; retrying in %.0f s", topic, retry_s)
            loaded.set()
            await asyncio.sleep(retry_s)


async def _start(servers: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    while not consumer.assignment():  # partitions are known once metadata arrives
        await consumer.getmany(timeout_ms=100)
    return consumer


async def read_all(servers: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record now in ``topic``, oldest first per partition."""
    consumer = await _start(servers, topic)
    try:
        parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        out: list[tuple[bytes | None, bytes | None]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in parts]):
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((m.key, m.value) for m in msgs)
        return out
    finally:
        await consumer.stop()


async def _read(servers: str, topic: str, on_record: OnRecord, loaded: asyncio.Event) -> None:
    consumer = await _start(servers, topic)
    try:
        parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        if all(ends[tp] == 0 for tp in parts):
            loaded.set()
        while True:
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                for msg in msgs:
                    await on_record(msg.key, msg.value, tp.partition, msg.offset)
            if not loaded.is_set():
                positions = {tp: await consumer.position(tp) for tp in parts}
                if all(positions[tp] >= ends[tp] for tp in parts):
                    log.info("read %s to its end", topic)
                    loaded.set()
    finally:
        await consumer.stop()
