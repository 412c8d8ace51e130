"""Small async helpers to talk to the test broker: produce, and collect until."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata


async def produce(servers: str, topic: str, values: Sequence[bytes | Any],
                  key: bytes | None = None) -> list[RecordMetadata]:
    """Send each value (bytes as is, anything else as JSON) and wait for the acks."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, max_request_size=3_000_000)
    await producer.start()
    try:
        out = []
        for v in values:
            data = v if isinstance(v, bytes) else orjson.dumps(v)
            out.append(await producer.send_and_wait(topic, data, key=key))
        return out
    finally:
        await producer.stop()


class Collector:
    """Reads a topic from the beginning in the background; tests await conditions."""

    def __init__(self, servers: str, topic: str) -> None:
        self.servers, self.topic = servers, topic
        self.records: list[Any] = []
        self.keys: list[bytes | None] = []  # each record's key
        self._arrived = asyncio.Condition()  # notified on every record
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Collector:
        self._consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.servers,
                                          group_id=None, auto_offset_reset="earliest")
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        async for msg in self._consumer:
            async with self._arrived:
                self.records.append(orjson.loads(msg.value or b"null"))
                self.keys.append(msg.key)
                self._arrived.notify_all()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._consumer is not None:
            await self._consumer.stop()

    async def until(self, condition: Callable[[list[Any]], bool], timeout: float = 60.0,
                    what: str = "condition") -> list[Any]:
        """Wait until ``condition(records)`` holds; fail with the records seen."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: condition(self.records))
        except TimeoutError:
            raise AssertionError(f"{what} not met on {self.topic} within {timeout} s; "
                                 f"saw {len(self.records)}: {self.records[-10:]}") from None
        return self.records
