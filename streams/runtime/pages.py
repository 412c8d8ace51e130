"""``/metrics``, ``/health`` and ``/ready`` for the processes that are not the worker.

The bridges and the reference controller are small aiokafka loops, not Faust
apps, so they have no web server of their own. :class:`ServicePages` gives them
the worker's three pages, with the same answers:

- ``/health``: 200 ``{"status": "alive", "since": ...}`` while the event loop
  answers (the Kubernetes liveness probe);
- ``/ready``: 200 ``{"ready": true, "waiting_for": []}`` once ``reasons()`` is
  empty, else 503 with the reasons (the readiness probe, and the compose
  healthchecks);
- ``/metrics``: the process's Prometheus registry.

>>> import asyncio, urllib.request
>>> from prometheus_client import CollectorRegistry, Counter
>>> registry = CollectorRegistry()
>>> Counter("demo_posts", "Posts", registry=registry).inc()
>>> waiting = ["joining the consumer group"]
>>> async def ask(path: str) -> tuple[int, bytes]:
...     pages = ServicePages(registry, lambda: waiting)
...     port = await pages.start("127.0.0.1", 0)
...     try:
...         url = f"http://127.0.0.1:{port}{path}"
...         def get() -> tuple[int, bytes]:
...             try:
...                 with urllib.request.urlopen(url, timeout=5) as r:
...                     return r.status, r.read()
...             except urllib.error.HTTPError as e:
...                 return e.code, e.read()
...         return await asyncio.to_thread(get)
...     finally:
...         await pages.stop()
>>> asyncio.run(ask("/ready"))
(503, b'{"ready":false,"waiting_for":["joining the consumer group"]}')
>>> waiting.clear()
>>> asyncio.run(ask("/ready"))
(200, b'{"ready":true,"waiting_for":[]}')
>>> b"demo_posts_total 1.0" in asyncio.run(ask("/metrics"))[1]
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["ServicePages"]


class ServicePages:
    """The three pages on ``host:port``, served from the running event loop."""

    def __init__(self, registry: CollectorRegistry, reasons: Callable[[], list[str]]) -> None:
        self.registry, self.reasons = registry, reasons
        self.started = time.time()
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (the one the system chose when ``port`` is 0)."""
        app = web.Application()
        app.add_routes([web.get("/health", self._health), web.get("/ready", self._ready),
                        web.get("/metrics", self._metrics)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "alive", "since": self.started}, 200)

    async def _ready(self, request: web.Request) -> web.Response:
        reasons = list(self.reasons())
        return _json({"ready": not reasons, "waiting_for": reasons}, 503 if reasons else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(body: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json")
