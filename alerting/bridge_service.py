"""The bridge as a service: Kafka in (aiokafka), HTTP out (aiohttp).

The decisions (what a status means, how long to wait, the bodies, what a dead
letter holds) are in :mod:`alerting.bridge`; this module only moves messages and
commits offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from alerting.bridge import (
    Backoff,
    BodyOf,
    Outcome,
    Post,
    TokenBucket,
    deadletter_record,
    parse_retry_after,
    redact_url,
    scrub,
    settle,
)

__all__ = ["http_poster", "run_bridge", "BridgeMetrics", "BridgeWatch", "OnDelivery", "Periodic"]

#: Called once a record is settled: (the record, what became of it, its partition).
OnDelivery = Callable[[dict[str, Any], Outcome, int], None]
#: Called between polls with the partitions this bridge holds (Alertmanager's re-posts).
Periodic = Callable[[set[TopicPartition]], Awaitable[None]]

log = logging.getLogger("sentinelle.bridge")

MAX_ANSWER_BYTES = 4096  # of an answer's body, the most ever read


def http_poster(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0) -> Post:
    """POST a JSON body; (status, the start of the answer, Retry-After) or (None, error).

    Only the first ``MAX_ANSWER_BYTES`` of an answer are read, and decoded
    whatever their bytes. A redirect is not followed (it would post the routing
    key to another address): its status comes back with ``redirect to`` and the
    scheme and host of its ``Location``, and :func:`~alerting.bridge.classify`
    makes it final. An error names the endpoint by scheme and host only, and
    the answer is cleared of our URL's path and query, should it repeat them.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    where = redact_url(url)
    parts = urlsplit(url)
    secrets = [p for p in (parts.path, parts.query) if len(p) > 1]

    async def post(body: dict[str, Any]) -> tuple[int | None, str, float | None]:
        try:
            async with session.post(url, data=orjson.dumps(body), timeout=timeout,
                                    allow_redirects=False,
                                    headers={"Content-Type": "application/json"}) as resp:
                if 300 <= resp.status < 400:
                    return resp.status, f"redirect to {_location(url, resp)}", None
                text = _decode(await _read_prefix(resp, MAX_ANSWER_BYTES), resp.charset)
                return (resp.status, scrub(text, secrets),
                        parse_retry_after(resp.headers.get("Retry-After")))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return None, f"{type(exc).__name__} from {where}", None

    return post


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is never read (the connection closes).

    A body cut short by the connection is returned as far as it came: the status
    is the answer, the body only its detail.
    """
    data = bytearray()
    try:
        while len(data) < limit and (chunk := await resp.content.read(limit - len(data))):
            data += chunk
    except aiohttp.ClientError:
        pass
    return bytes(data)


def _decode(data: bytes, charset: str | None) -> str:
    """The body as text in its declared charset (else UTF-8), odd bytes replaced."""
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except (LookupError, ValueError):  # no such codec, or one without "replace"
        return data.decode("utf-8", errors="replace")


def _location(url: str, resp: aiohttp.ClientResponse) -> str:
    """Scheme and host a redirect points to (a relative one: the endpoint's own)."""
    location = resp.headers.get("Location")
    if not location:
        return "(no Location)"
    try:
        return redact_url(urljoin(url, location))
    except ValueError:
        return "(unparseable URL)"


class BridgeMetrics:
    """What the bridges of one process show on its ``/metrics``: records settled by
    outcome; every POST by answer (``2xx``, ``4xx``, ``5xx``, ``3xx``, or ``error``
    when none came) with its latency; the retries (a record's POSTs after its first);
    and how old the oldest undelivered record is (the one in flight: records go one
    at a time, in order), so a stuck delivery is seen long before it expires."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time
                 ) -> None:
        self.clock = clock
        self.settled = Counter("sentinelle_bridge_records_total", "Records settled, by outcome",
                               ["bridge", "outcome"], registry=registry)
        self.posts = Counter("sentinelle_bridge_posts_total",
                             "HTTP POSTs to the endpoint, by answer (2xx, 3xx, 4xx, 5xx, error)",
                             ["bridge", "answer"], registry=registry)
        self.retries = Counter("sentinelle_bridge_retries_total",
                               "POSTs of a record after its first", ["bridge"],
                               registry=registry)
        self.latency = Histogram("sentinelle_bridge_post_seconds",
                                 "Time from a POST to its answer (or its error)", ["bridge"],
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=registry)
        self.oldest = Gauge("sentinelle_bridge_oldest_undelivered_age_seconds",
                            "Age (since publication) of the oldest record not yet delivered; "
                            "0 when none waits", ["bridge"], registry=registry)

    def watch(self, name: str) -> BridgeWatch:
        watch = BridgeWatch(name, self)
        self.oldest.labels(name).set_function(watch.oldest_age)
        return watch


class BridgeWatch(ConsumerRebalanceListener):
    """One bridge's share of :class:`BridgeMetrics`, and whether its consumer has
    joined its group (the ``/ready`` page: :attr:`joined`)."""

    def __init__(self, name: str, metrics: BridgeMetrics) -> None:
        self.name, self.metrics = name, metrics
        self.in_flight_since: float | None = None  # publication time of the record in flight
        self.attempts = 0                          # POSTs of the record in flight
        self.joined = False

    def oldest_age(self) -> float:
        since = self.in_flight_since
        return 0.0 if since is None else max(0.0, self.metrics.clock() - since)

    def settled(self, outcome: Outcome) -> None:
        self.metrics.settled.labels(self.name, outcome.value).inc()

    def counted(self, post: Post) -> Post:
        """``post``, each call counted by answer, timed, and counted as a retry after
        the record's first."""
        m = self.metrics

        async def counted_post(body: dict[str, Any]) -> tuple[int | None, str, float | None]:
            self.attempts += 1
            if self.attempts > 1:
                m.retries.labels(self.name).inc()
            began = time.perf_counter()
            answer = await post(body)
            m.latency.labels(self.name).observe(time.perf_counter() - began)
            status = answer[0]
            m.posts.labels(self.name, "error" if status is None
                           else f"{min(max(status // 100, 1), 5)}xx").inc()
            return answer

        return counted_post

    # ConsumerRebalanceListener: joined once partitions (perhaps none) are assigned
    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.joined = False

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined = True


async def run_bridge(servers: str, topic: str, deadletter_topic: str, group_id: str,
                     post: Post, body_of: BodyOf,
                     rate: float = 10.0, backoff: Backoff = Backoff(),
                     on_delivery: OnDelivery | None = None,
                     options: dict[str, Any] | None = None,
                     max_age_s: float | None = None,
                     metrics: BridgeWatch | None = None,
                     periodic: Periodic | None = None) -> None:
    """Forward ``topic`` until cancelled; commit each message once it is settled.

    ``options``: more keyword arguments of the Kafka clients (authentication and TLS,
    as :func:`streams.runtime.kafka.client_options` gives them). ``max_age_s``: a
    record still undelivered this long after it was published (its Kafka
    timestamp) is given up and dead-lettered with reason ``expired: …``.
    ``periodic`` runs in the same task as the deliveries, between polls, so what
    it posts never overtakes nor races a record being delivered."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=10_000, rebalance_timeout_ms=10_000,
                                **(options or {}))
    consumer.subscribe([topic], listener=metrics)  # None: no listener
    producer = AIOKafkaProducer(bootstrap_servers=servers, **(options or {}))
    if metrics is not None:
        post = metrics.counted(post)
    await consumer.start()
    await producer.start()
    bucket = TokenBucket(rate)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            for tp, msgs in batches.items():
                for msg in msgs:
                    await _forward(msg, tp, post, body_of, backoff, bucket, producer,
                                   deadletter_topic, on_delivery, max_age_s, metrics)
                    await consumer.commit({tp: msg.offset + 1})
            if periodic is not None:
                await periodic(set(consumer.assignment()))
    finally:
        await consumer.stop()  # leaves the group: a restarted bridge joins at once
        await producer.stop()


async def _forward(msg: Any, tp: TopicPartition, post: Post, body_of: BodyOf,
                   backoff: Backoff, bucket: TokenBucket, producer: AIOKafkaProducer,
                   deadletter_topic: str, on_delivery: OnDelivery | None,
                   max_age_s: float | None, metrics: BridgeWatch | None) -> None:
    raw = msg.value or b""
    published = msg.timestamp / 1000 if msg.timestamp and msg.timestamp > 0 else time.time()
    if metrics is not None:
        metrics.in_flight_since, metrics.attempts = published, 0
    try:
        settled = await settle(raw, body_of, post, backoff, bucket,
                               give_up_at=None if max_age_s is None else published + max_age_s)
    finally:
        if metrics is not None:
            metrics.in_flight_since = None
    if metrics is not None:
        metrics.settled(settled.outcome)
    if settled.outcome in (Outcome.REJECTED, Outcome.EXPIRED):
        # `raw` is the message as read from ml.alerts: it never holds the routing key.
        record = deadletter_record(tp.topic, tp.partition, msg.offset, settled.reason, raw)
        await producer.send_and_wait(deadletter_topic, orjson.dumps(record))
    if on_delivery is not None and settled.alert is not None:
        on_delivery(settled.alert, settled.outcome, tp.partition)
