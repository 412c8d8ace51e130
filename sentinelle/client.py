"""Send events to Sentinelle the fast way: batched per model, in the contract's batch form.

Most services log one prediction per message, and one message per event is
what costs most on every side of Kafka: the stream processor pays ~200 µs per
message whatever it holds. The contract lets a producer send a **batch** (a
JSON array of events, all with the same key, at most 10,000 events and 1 MB)
that Sentinelle treats exactly as the same events sent one by one. This client
does that for you: it buffers events per key (the ``model``, or ``pipeline``,
``source``), and sends a buffer as one message when it holds ``max_events``
events, or ``max_bytes`` of JSON, or has waited ``linger_s``.

>>> from sentinelle.client import Batcher
>>> b = Batcher(max_events=2, max_bytes=10_000, linger_s=1.0)
>>> b.add({"model": "m", "event_id": "a"}, now=0.0)   # (send before it, send now)
([], [])
>>> b.add({"model": "m", "event_id": "b"}, now=0.1)
([], [(b'm', b'[{"model":"m","event_id":"a"},{"model":"m","event_id":"b"}]', 2)])

Delivery is at least once: a batch is kept until the broker acknowledges it
(``acks="all"``), tried again on failure with a doubling backoff, and
:meth:`Client.flush` / :meth:`Client.close` wait until everything buffered
is acknowledged. Memory is bounded: at most ``max_buffered`` events wait (in
buffers and in flight); past that, :meth:`Client.send` waits for room (the
asyncio API) or blocks (:class:`SyncClient`), up to ``block_s``, then raises
:class:`BufferFull`, so a producer that outruns the broker is slowed down
rather than growing without bound.

Two APIs over the same machinery:

- :class:`Client` for asyncio services::

      async with Client("kafka:9092") as sentinelle:
          await sentinelle.send({"event_id": ..., "ts": ..., "model": "fraud-scorer",
                                 "version": "v7", "latency_ms": 12.5, ...})

- :class:`SyncClient` for threaded code (Flask, Django, a batch job); it runs
  the asyncio client on a background thread, and is safe to share::

      sentinelle = SyncClient("kafka:9092")
      sentinelle.send(event)     # returns at once, unless the buffer is full
      ...
      sentinelle.close()         # flushes

Other languages: the same thing is "send a JSON array of events keyed by
their model, at most 10,000 events and 1 MB, with ``acks=all``" (see the
README, "Speed").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson

__all__ = ["Batcher", "Client", "SyncClient", "BufferFull", "MAX_BATCH_EVENTS",
           "MAX_BATCH_BYTES"]

log = logging.getLogger("sentinelle.client")

MAX_BATCH_EVENTS = 10_000   # the contract's bounds on one batch message
MAX_BATCH_BYTES = 1_000_000

Ready = tuple[bytes, bytes, int]  # (key, JSON array, events in it)


class BufferFull(RuntimeError):
    """More than ``max_buffered`` events wait for the broker, for longer than ``block_s``."""


@dataclass
class _Buffer:
    parts: list[bytes] = field(default_factory=list)
    size: int = 2            # the brackets
    since: float = 0.0       # when its first event arrived


class Batcher:
    """Per-key buffers of encoded events; pure (no I/O), so the batching rules are
    testable alone. :meth:`add` and :meth:`due` return the batches ready to send."""

    def __init__(self, max_events: int = 1000, max_bytes: int = 900_000,
                 linger_s: float = 0.2, key_field: str = "model") -> None:
        if not 1 <= max_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_events must be 1..{MAX_BATCH_EVENTS}")
        if not 64 <= max_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"max_bytes must be 64..{MAX_BATCH_BYTES}")
        self.max_events, self.max_bytes, self.linger_s = max_events, max_bytes, linger_s
        self.key_field = key_field
        self.buffers: dict[bytes, _Buffer] = {}
        self.buffered = 0

    def add(self, event: Mapping[str, Any], now: float) -> tuple[list[Ready], list[Ready]]:
        """Buffer ``event``: (batches to send before it, batches to send now).

        The first list holds the key's buffer when this event would take it past
        ``max_bytes``; the second, the key's buffer once it is full. A ValueError
        says why an event cannot be sent (no key field, not JSON-encodable, or
        larger than ``max_bytes`` alone)."""
        key = event.get(self.key_field) if isinstance(event, Mapping) else None
        if not isinstance(key, str) or not key:
            raise ValueError(f"an event needs a non-empty string {self.key_field!r}: it is "
                             f"the message key that keeps a model's events in one partition")
        data = orjson.dumps(event)
        if len(data) + 2 > self.max_bytes:
            raise ValueError(f"an event of {len(data):,} bytes is larger than max_bytes "
                             f"({self.max_bytes:,})")
        k = key.encode()
        buf = self.buffers.get(k)
        before: list[Ready] = []
        if buf is not None and buf.size + len(data) + 1 > self.max_bytes:
            before.append(self._take(k))
            buf = None
        if buf is None:
            buf = self.buffers[k] = _Buffer(since=now)
        buf.parts.append(data)
        buf.size += len(data) + (1 if len(buf.parts) > 1 else 0)
        self.buffered += 1
        now_ready = [self._take(k)] if len(buf.parts) >= self.max_events else []
        return before, now_ready

    def due(self, now: float, everything: bool = False) -> list[Ready]:
        """The buffers that have waited ``linger_s`` (all of them if ``everything``)."""
        keys = [k for k, b in self.buffers.items()
                if everything or now - b.since >= self.linger_s]
        return [self._take(k) for k in keys]

    def next_due(self) -> float | None:
        """When the oldest buffer is due (None: nothing buffered)."""
        return min((b.since for b in self.buffers.values()), default=None)

    def _take(self, key: bytes) -> Ready:
        buf = self.buffers.pop(key)
        self.buffered -= len(buf.parts)
        return key, b"[" + b",".join(buf.parts) + b"]", len(buf.parts)


class Client:
    """Asyncio producer of Sentinelle events, batched per key (see the module's text).

    ``producer_options`` go to aiokafka's ``AIOKafkaProducer`` (security, for
    instance: ``streams.runtime.kafka.client_options(settings)`` gives them from a
    Sentinelle configuration)."""

    def __init__(self, bootstrap_servers: str, topic: str = "ml.predictions", *,
                 key_field: str = "model", max_events: int = 1000, max_bytes: int = 900_000,
                 linger_s: float = 0.2, max_buffered: int = 100_000, block_s: float = 30.0,
                 producer_options: Mapping[str, Any] | None = None) -> None:
        self.servers, self.topic = bootstrap_servers, topic
        self.batcher = Batcher(max_events, max_bytes, linger_s, key_field)
        self.max_buffered, self.block_s = max_buffered, block_s
        self.producer_options = dict(producer_options or {})
        self.sent_events = self.sent_messages = self.retries = 0
        self._in_flight = 0                       # events sent, not yet acknowledged
        self._room = asyncio.Condition()
        self._lock = threading.Lock()             # the batcher, shared with SyncClient
        self._room_t = threading.Condition()      # SyncClient's callers wait on it
        self._tasks: set[asyncio.Task[None]] = set()
        self._producer: Any = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> Client:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.servers, acks="all", linger_ms=5,
            max_request_size=MAX_BATCH_BYTES + 65_536, **self.producer_options)
        await self._producer.start()
        self._ticker = asyncio.create_task(self._tick())
        return self

    @property
    def waiting(self) -> int:
        """Events buffered or in flight (what ``max_buffered`` bounds)."""
        return self.batcher.buffered + self._in_flight

    async def send(self, event: Mapping[str, Any]) -> None:
        """Buffer one event; waits while ``max_buffered`` events already wait."""
        if self._producer is None:
            raise RuntimeError("Client.start() (or `async with`) first")
        if self.waiting >= self.max_buffered:
            async with self._room:
                try:
                    await asyncio.wait_for(self._room.wait_for(
                        lambda: self.waiting < self.max_buffered), self.block_s)
                except TimeoutError:
                    raise BufferFull(f"{self.waiting:,} events wait for the broker "
                                     f"(max_buffered {self.max_buffered:,})") from None
        with self._lock:
            before, ready = self.batcher.add(event, time.monotonic())
        for batch in (*before, *ready):
            self._launch(batch)

    def _add_threadsafe(self, event: Mapping[str, Any], loop: asyncio.AbstractEventLoop,
                        block_s: float) -> None:
        """:meth:`send` from another thread (SyncClient): buffered in the caller's thread,
        full batches handed to the loop."""
        if self.waiting >= self.max_buffered:
            with self._room_t:
                if not self._room_t.wait_for(lambda: self.waiting < self.max_buffered,
                                             block_s):
                    raise BufferFull(f"{self.waiting:,} events wait for the broker "
                                     f"(max_buffered {self.max_buffered:,})")
        with self._lock:
            before, ready = self.batcher.add(event, time.monotonic())
        for batch in (*before, *ready):
            with self._lock:
                self._in_flight += batch[2]   # counted now, so `waiting` sees it at once
            loop.call_soon_threadsafe(self._launch, batch, False)

    async def flush(self) -> None:
        """Send every buffer now and wait until everything is acknowledged."""
        with self._lock:
            due = self.batcher.due(time.monotonic(), everything=True)
        for batch in due:
            self._launch(batch)
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def close(self) -> None:
        """Flush, then stop the producer."""
        if self._producer is None:
            return
        try:
            await self.flush()
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ticker
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _launch(self, batch: Ready, count: bool = True) -> None:
        if count:
            with self._lock:
                self._in_flight += batch[2]
        task = asyncio.create_task(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, batch: Ready) -> None:
        key, value, n = batch
        backoff = 0.1
        try:
            while True:
                try:
                    await (await self._producer.send(self.topic, value=value, key=key))
                    self.sent_events += n
                    self.sent_messages += 1
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # at least once: keep it, try again
                    self.retries += 1
                    log.warning("a batch of %d events for %r not acknowledged (%s); "
                                "again in %.1f s", n, key.decode(errors="replace"), exc,
                                backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            with self._lock:
                self._in_flight -= n
            async with self._room:
                self._room.notify_all()
            with self._room_t:
                self._room_t.notify_all()

    async def _tick(self) -> None:
        """Send the buffers that have waited ``linger_s``."""
        while True:
            oldest = self.batcher.next_due()
            wait = self.batcher.linger_s if oldest is None else max(
                0.0, oldest + self.batcher.linger_s - time.monotonic())
            await asyncio.sleep(min(wait, self.batcher.linger_s) or 0.001)
            with self._lock:
                due = self.batcher.due(time.monotonic())
            for batch in due:
                self._launch(batch)


class SyncClient:
    """The :class:`Client` for threaded code: an event loop on a daemon thread.

    :meth:`send` returns as soon as the event is buffered (it blocks only while
    ``max_buffered`` events wait, up to ``block_s``); :meth:`flush` and
    :meth:`close` block until the broker has acknowledged everything."""

    def __init__(self, bootstrap_servers: str, topic: str = "ml.predictions",
                 **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="sentinelle-client")
        self._thread.start()
        self._client = Client(bootstrap_servers, topic, **options)
        self._call(self._client.start())

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    @property
    def client(self) -> Client:
        return self._client

    def send(self, event: Mapping[str, Any]) -> None:
        """Buffer one event (a ValueError if it cannot be sent; BufferFull after
        ``block_s`` with ``max_buffered`` events waiting)."""
        self._client._add_threadsafe(event, self._loop, self._client.block_s)

    def flush(self, timeout: float | None = None) -> None:
        self._call(self._client.flush(), timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
