"""sentinelle.client: events batched per model into the contract's batch form.

The batching rules alone (:class:`~sentinelle.client.Batcher`), then the asyncio
and threaded clients through the real broker: every event arrives once, in
arrays of one key each, within the bounds; a broker that stops taking them
slows the producer down (``BufferFull``) instead of growing its memory.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from sentinelle.client import Batcher, BufferFull, Client, SyncClient
from streams.core.parse import PredictionColumns, parse_predictions
from streams.tools.broker import EmbeddedBroker


def event(model: str, i: int, pad: str = "") -> dict[str, Any]:
    return {"event_id": f"{model}-{i}", "ts": 1_795_000_000 + i, "model": model,
            "version": "v1", "latency_ms": 12.5, "features": {"pad": pad}}


def test_a_key_s_events_go_out_together_when_enough_of_them_wait() -> None:
    b = Batcher(max_events=3, max_bytes=100_000, linger_s=1.0)
    out = []
    for i in range(7):
        for m in ("a", "b"):
            before, now = b.add(event(m, i), now=0.0)
            out += before + now
    assert [(k, n) for k, _, n in out] == [(b"a", 3), (b"b", 3), (b"a", 3), (b"b", 3)]
    for key, value, n in out:
        events = orjson.loads(value)
        assert len(events) == n and {e["model"] for e in events} == {key.decode()}
    assert b.buffered == 2  # one of each waits
    assert [e["event_id"] for e in orjson.loads(out[0][1])] == ["a-0", "a-1", "a-2"]


def test_a_batch_never_passes_max_bytes_and_lingers_at_most_linger_s() -> None:
    b = Batcher(max_events=1000, max_bytes=2_000, linger_s=0.5)
    out = []
    for i in range(20):
        before, now = b.add(event("m", i, pad="x" * 300), now=i * 0.01)
        out += before + now
    assert out and all(len(v) <= 2_000 for _, v, _ in out)
    assert sum(n for _, _, n in out) + b.buffered == 20
    assert b.due(now=0.3) == []  # its first event is 0.3 s old at most: not due yet
    waiting = b.buffered
    rest = b.due(now=10.0)
    assert waiting > 0 and sum(n for _, _, n in rest) == waiting
    assert b.buffered == 0 and b.next_due() is None


def test_what_cannot_be_sent_is_refused_at_once() -> None:
    b = Batcher(max_events=10, max_bytes=1_000)
    with pytest.raises(ValueError, match="'model'"):
        b.add({"event_id": "x"}, now=0.0)
    with pytest.raises(ValueError, match="larger than max_bytes"):
        b.add(event("m", 1, pad="x" * 2_000), now=0.0)
    with pytest.raises(ValueError):
        Batcher(max_events=20_000)  # past the contract's 10,000
    assert b.buffered == 0


def test_the_batch_form_parses_as_the_same_events_sent_one_by_one() -> None:
    b = Batcher(max_events=5)
    ready: list[tuple[bytes, bytes, int]] = []
    for i in range(5):
        ready += b.add(event("m", i), now=0.0)[1]
    cols = PredictionColumns()
    assert parse_predictions(ready[0][1], cols) == []  # no dead letter
    assert cols.event_id == [f"m-{i}" for i in range(5)]


async def read_all(servers: str, topic: str, events: int) -> list[tuple[bytes, list[Any]]]:
    """Every message of ``topic`` until ``events`` events were read: (key, events)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[bytes, list[Any]]] = []
    try:
        async with asyncio.timeout(60):
            while sum(len(v) for _, v in out) < events:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.key, orjson.loads(r.value)) for r in records]
    finally:
        await consumer.stop()
    return out


@pytest.mark.kafka
async def test_the_asyncio_client_delivers_every_event_once_batched(
        kafka_bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.ml.predictions"
    async with Client(kafka_bootstrap, topic, max_events=1000, linger_s=0.2) as client:
        for i in range(1000):
            for m in ("a", "b", "c"):
                await client.send(event(m, i))
        await client.send(event("d", 0))
        await client.flush()
        assert client.waiting == 0 and client.sent_events == 3001
    got = await read_all(kafka_bootstrap, topic, 3001)
    assert all(isinstance(v, list) and len(v) <= 1000 for _, v in got)
    assert all({e["model"] for e in v} == {k.decode()} for k, v in got)
    ids = Counter(e["event_id"] for _, v in got for e in v)
    assert len(ids) == 3001 and set(ids.values()) == {1}
    assert len(got) <= 8  # 3,001 events in a handful of messages, not 3,001


@pytest.mark.kafka
async def test_a_lone_event_goes_out_after_linger_s_without_a_flush(
        kafka_bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.ml.predictions"
    client = await Client(kafka_bootstrap, topic, linger_s=0.1).start()
    try:
        await client.send(event("m", 1))
        got = await read_all(kafka_bootstrap, topic, 1)  # no flush: the linger sends it
        assert got == [(b"m", [event("m", 1)])]
    finally:
        await client.close()


@pytest.mark.kafka
def test_the_threaded_client_is_bounded_when_the_broker_stops_taking() -> None:
    broker = EmbeddedBroker().start()
    topic = "ml.predictions"
    try:
        client = SyncClient(broker.bootstrap_servers, topic, max_events=10, linger_s=0.05,
                            max_buffered=50, block_s=0.5)
        threads = [threading.Thread(target=lambda m=m: [client.send(event(m, i))
                                                        for i in range(20)]) for m in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.flush(timeout=30)
        broker.pause()  # takes nothing, refuses nothing
        with pytest.raises(BufferFull):
            for i in range(100, 200):
                client.send(event("a", i))
        assert client.client.waiting <= 50 + 10  # bounded (a batch may be in hand)
        broker.resume()
        client.close()  # flushes what waited
        sent = client.client.sent_events
        got = asyncio.run(read_all(broker.bootstrap_servers, topic, sent))
        assert sum(len(v) for _, v in got) == sent >= 40 + 50
    finally:
        broker.stop()
