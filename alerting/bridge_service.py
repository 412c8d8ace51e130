"""The bridge as a service: Kafka in (aiokafka), HTTP out (aiohttp).

The decisions (what a status means, how long to wait, the bodies) are in
:mod:`alerting.bridge`; this module only moves messages and commits offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from alerting.bridge import Backoff, Outcome, Post, TokenBucket, deliver

__all__ = ["http_poster", "run_bridge"]

log = logging.getLogger("sentinelle.bridge")


def http_poster(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0) -> Post:
    """POST a JSON body; (status, the start of the answer, Retry-After) or (None, error)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def post(body: dict[str, Any]) -> tuple[int | None, str, float | None]:
        try:
            async with session.post(url, data=orjson.dumps(body), timeout=timeout,
                                    headers={"Content-Type": "application/json"}) as resp:
                text = (await resp.text())[:500]
                ra = resp.headers.get("Retry-After", "")
                return resp.status, text, float(ra) if ra.replace(".", "", 1).isdigit() else None
        except (TimeoutError, aiohttp.ClientError) as exc:
            return None, type(exc).__name__, None

    return post


async def run_bridge(servers: str, topic: str, deadletter_topic: str, group_id: str,
                     post: Post, body_of: Callable[[dict[str, Any]], dict[str, Any]],
                     rate: float = 10.0, backoff: Backoff = Backoff(),
                     on_delivery: Callable[[dict[str, Any], Outcome], None] | None = None) -> None:
    """Forward ``topic`` until cancelled; commit each message once it is settled."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=10_000, rebalance_timeout_ms=10_000)
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await consumer.start()
    await producer.start()
    bucket = TokenBucket(rate)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            for tp, msgs in batches.items():
                for msg in msgs:
                    await _forward(msg, tp, post, body_of, backoff, bucket, producer,
                                   deadletter_topic, on_delivery)
                    await consumer.commit({tp: msg.offset + 1})
    finally:
        await consumer.stop()  # leaves the group: a restarted bridge joins at once
        await producer.stop()


async def _forward(msg: Any, tp: TopicPartition, post: Post,
                   body_of: Callable[[dict[str, Any]], dict[str, Any]], backoff: Backoff,
                   bucket: TokenBucket, producer: AIOKafkaProducer, deadletter_topic: str,
                   on_delivery: Callable[[dict[str, Any], Outcome], None] | None) -> None:
    raw = msg.value or b""
    try:
        alert = orjson.loads(raw)
        if not isinstance(alert, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        await _dead(producer, deadletter_topic, tp, msg.offset, f"not_json: {exc}", raw)
        return
    delivery = await deliver(body_of(alert), post, backoff, bucket)
    if delivery.outcome is Outcome.REJECTED:
        log.error("endpoint rejected %s with HTTP %s; dead-lettered", alert.get("dedup_key"),
                  delivery.status)
        await _dead(producer, deadletter_topic, tp, msg.offset,
                    f"rejected: HTTP {delivery.status}: {delivery.detail}", raw)
    if on_delivery is not None:
        on_delivery(alert, delivery.outcome)


async def _dead(producer: AIOKafkaProducer, topic: str, tp: TopicPartition, offset: int,
                reason: str, raw: bytes) -> None:
    # `raw` is the message as read from ml.alerts: it never holds the routing key.
    record = {"topic": tp.topic, "partition": tp.partition, "offset": offset, "reason": reason,
              "raw": raw.decode("utf-8", errors="replace")}
    await producer.send_and_wait(topic, orjson.dumps(record))
