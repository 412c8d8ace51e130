"""Alert bridges: the delivery rules alone, then against a real HTTP server and broker."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any, Self

import aiohttp
import orjson
import pytest
from aiohttp import web

from alerting.bridge import (
    Backoff,
    Outcome,
    TokenBucket,
    classify,
    deliver,
    pagerduty_body,
    slack_body,
)
from alerting.bridge_service import http_poster, run_bridge
from streams.runtime.kafka import ensure_topics
from streams.tools.broker import free_port
from tests.kafka_io import Collector, produce


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    b = Backoff(base_s=1, cap_s=8)
    rng = random.Random(1)
    delays = [b.delay(a, rng=rng) for a in range(6)]
    assert all(0.5 * min(8, 2 ** a) <= d <= min(8, 2 ** a) for a, d in enumerate(delays))
    assert b.delay(0, retry_after=3.0) == 3.0 and b.delay(0, retry_after=100) == 8


def test_token_bucket_bounds_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=2, clock=lambda: now[0])
    assert [bucket.wait_time() for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] = 0.5
    assert bucket.wait_time() == 0.0


async def test_deliver_retries_429_and_5xx_and_gives_up_on_other_4xx() -> None:
    answers = iter([(429, "slow down", 0.0), (None, "ClientConnectorError", None),
                    (503, "busy", None), (202, "ok", None), (400, "bad request", None)])
    slept: list[float] = []

    async def post(body: dict[str, Any]) -> tuple[int | None, str, float | None]:
        return next(answers)

    async def sleep(s: float) -> None:
        slept.append(s)

    done = await deliver({"a": 1}, post, Backoff(0.1, 1.0), sleep=sleep)
    assert (done.outcome, done.status, done.attempts) == (Outcome.DELIVERED, 202, 4)
    assert len(slept) == 3 and slept[0] == 0.0  # Retry-After: 0 was honoured
    rejected = await deliver({"a": 1}, post, sleep=sleep)
    assert (rejected.outcome, rejected.status, rejected.detail) == \
        (Outcome.REJECTED, 400, "bad request")
    assert classify(204) is Outcome.DELIVERED


def test_bodies() -> None:
    alert = {"event_action": "trigger", "dedup_key": "outage:m",
             "payload": {"summary": "m: no predictions", "severity": "critical"}}
    assert pagerduty_body(alert, "KEY") == {**alert, "routing_key": "KEY"}
    assert "m: no predictions" in slack_body(alert)["text"]


class LocalServer:
    """A small aiohttp server on a free loopback port, for a test to talk to: a subclass
    says what it answers (:meth:`app`); ``async with`` starts and stops it."""

    port: int
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class FakeEndpoint(LocalServer):
    """A real HTTP server on loopback that answers from a script, 202 by default."""

    def __init__(self, script: dict[str, list[int]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.received: list[tuple[dict[str, Any], int]] = []
        self._arrived = asyncio.Condition()  # notified on every request
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        plan = self.script.get(body["dedup_key"], [])
        status = plan.pop(0) if plan else 202
        async with self._arrived:
            self.received.append((body, status))
            self._arrived.notify_all()
        return web.json_response({"status": "ok" if status == 202 else "no"}, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self.handle)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/enqueue"

    def statuses(self, key: str) -> list[int]:
        return [s for b, s in self.received if b["dedup_key"] == key]

    async def until(self, n: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= n)


def alert(key: str) -> dict[str, Any]:
    return {"event_action": "trigger", "dedup_key": key,
            "payload": {"summary": f"{key} fired", "source": "m@v1", "severity": "error",
                        "timestamp": "2026-11-27T07:00:00.000Z", "component": "m",
                        "group": "serving", "class": "latency_slo", "custom_details": {}}}


@pytest.mark.kafka
async def test_pagerduty_bridge_delivers_in_order_retries_dead_letters_and_survives_restart(
        kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    alerts_topic, dead_topic = f"{prefix}.ml.alerts", f"{prefix}.ml.deadletter"
    await ensure_topics(kafka_bootstrap, [alerts_topic, dead_topic], 1)
    first = [alert(k) for k in ("a1", "a2", "a3", "a4")]
    script = {"a2": [429, 500], "a3": [400], "a5": [503, 503]}

    def start(session: aiohttp.ClientSession, endpoint: FakeEndpoint) -> asyncio.Task[None]:
        return asyncio.create_task(run_bridge(
            kafka_bootstrap, alerts_topic, dead_topic, f"{prefix}-bridge",
            http_poster(session, endpoint.url), lambda a: pagerduty_body(a, "SECRET-KEY"),
            rate=100, backoff=Backoff(base_s=0.05, cap_s=0.2)))

    async with FakeEndpoint(script) as endpoint, aiohttp.ClientSession() as session, \
            Collector(kafka_bootstrap, dead_topic) as dead:
        await produce(kafka_bootstrap, alerts_topic, first, key=b"m")
        task = start(session, endpoint)
        await endpoint.until(6)  # a1, a2 three times, a3, a4
        await produce(kafka_bootstrap, alerts_topic, [alert("a5")], key=b"m")
        await endpoint.until(7)  # a5 answered 503: the bridge is backing off...
        task.cancel()            # ...and is stopped before a5 got through
        with pytest.raises(asyncio.CancelledError):
            await task
        task = start(session, endpoint)  # a new bridge in the same group
        await endpoint.until(9)
        await dead.until(lambda r: len(r) >= 1, what="the 400 dead-lettered")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    keys = [b["dedup_key"] for b, _ in endpoint.received]
    assert keys == ["a1", "a2", "a2", "a2", "a3", "a4", "a5", "a5", "a5"]
    assert endpoint.statuses("a2") == [429, 500, 202]
    assert endpoint.statuses("a5") == [503, 503, 202]  # not lost across the restart
    for body, _ in endpoint.received:  # exactly as published, plus the routing key
        original = next(a for a in first + [alert("a5")] if a["dedup_key"] == body["dedup_key"])
        assert body == {**original, "routing_key": "SECRET-KEY"}
    [rec] = dead.records
    assert rec["reason"].startswith("rejected: HTTP 400") and rec["topic"] == alerts_topic
    assert orjson.loads(rec["raw"]) == first[2] and "SECRET-KEY" not in rec["raw"]
