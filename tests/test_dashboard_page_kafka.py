"""The worker's live dashboard on the real broker: /dashboard serves the page, and
/api/events (the server-sent events the page listens to; /api/state is the same
state on request) shows the windows, the firing alert with its evidence, and the
dead letters, and pushes what changes as events flow."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from streams.tools.broker import free_port
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce
from tests.test_worker_kafka import T0, WINDOW, WINDOW_CFG, events

pytestmark = pytest.mark.kafka


async def next_event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``data:`` event of a server-sent event stream (comments skipped)."""
    while True:
        line = await stream.content.readline()
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            return dict(orjson.loads(line[len(b"data: "):]))


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", None, 10) as reply:  # noqa: S310
        return reply.read()


async def test_the_dashboard_shows_windows_alerts_and_dead_letters(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    w = worker_factory({**WINDOW_CFG, "worker": {"web_port": port}})
    page = (await asyncio.to_thread(get, port, "/dashboard")).decode()
    assert "<title>Sentinelle</title>" in page and 'EventSource("api/events")' in page
    key = "latency_slo:dash:v1:p99"
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        for i in range(3):  # a healthy window, then slow ones
            await produce(w.servers, w.topics["predictions"],
                          [events("dash", T0 + i * WINDOW, 30, 60.0 if i == 0 else 900.0,
                                   seed=i)], key=b"dash")
        await produce(w.servers, w.topics["predictions"], [b"{not json"], key=b"dash")
        await alerts.until(lambda r: any(a["dedup_key"] == key for a in r), what="the alert")

    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/api/events",
                        timeout=aiohttp.ClientTimeout(total=60)) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        pushed = [await next_event(stream)]

        def complete(state: dict[str, Any]) -> bool:
            # The alert on ml.alerts can be read before the worker's page lists it (it
            # does once the changelog acknowledged) or counts the bad message folded
            # after it: wait for a push that has both.
            return (any(a["dedup_key"] == key for a in state["firing"])
                    and state["deadletters"].get("not_json", 0) >= 1)

        while not complete(pushed[-1]):
            pushed.append(await next_event(stream))
        s = pushed[-1]
        # one more bad message: the next push says so, without being asked
        await produce(w.servers, w.topics["predictions"], [b"[1, 2"], key=b"dash")
        while pushed[-1]["deadletters"].get("not_json", 0) < 2:
            pushed.append(await next_event(stream))
    asked = orjson.loads(await asyncio.to_thread(get, port, "/api/state"))
    assert asked.keys() == s.keys() and asked["deadletters"]["not_json"] == 2
    assert {(r["model"], r["version"]) for r in s["series"]} == {("dash", "v1")}
    assert s["series"][0]["p99_ms"] > 300 and s["series"][0]["count"] > 0
    firing = {a["dedup_key"]: a for a in s["firing"]}
    assert key in firing and firing[key]["evidence"] and firing[key]["summary"]
    assert s["deadletters"].get("not_json") == 1
