"""A person's approval by HTTP (POST /v1/approvals/{model}): a bearer token, the approvers'
allow-list, then the approval on ml.deploy.approvals, where the worker reads it."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from streams.tools.broker import free_port
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector

pytestmark = pytest.mark.kafka

TOKEN = "t0k3n-for-the-test"  # noqa: S105 - a test's own token


def post(port: int, model: str, body: Any, token: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/approvals/{model}",
                                 data=orjson.dumps(body), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"}
                                             if token else {})})
    try:
        reply = urllib.request.urlopen(req, None, 10)  # noqa: S310 - http to the worker
        return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def test_an_approval_by_http_is_checked_then_published(
        worker_factory: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINELLE_TEST_APPROVAL_TOKEN", TOKEN)  # the worker inherits it
    port = free_port()
    w = worker_factory({"worker": {"web_port": port},
                        "canary": {"approval_token_env": "SENTINELLE_TEST_APPROVAL_TOKEN",
                                   "approvers": ["ana"]}})
    call = asyncio.to_thread
    async with Collector(w.servers, w.topics["approvals"]) as approvals:
        body = {"by": "ana", "version": "r6"}
        assert (await call(post, port, "ranker", body, None))[0] == 401
        assert (await call(post, port, "ranker", body, "wrong"))[0] == 401
        status, reply = await call(post, port, "ranker", {"by": "eve", "version": "r6"}, TOKEN)
        assert status == 403 and "eve" in reply["error"]
        assert (await call(post, port, "ranker", {"version": "r6"}, TOKEN))[0] == 400
        status, reply = await call(post, port, "ranker", body, TOKEN)
        assert status == 200, reply
        got = await approvals.until(lambda r: len(r) >= 1, what="the approval")
    assert len(got) == 1  # only the one that passed every check
    rec = got[0]
    assert (rec["model"], rec["version"], rec["action"], rec["approved_by"]) == \
        ("ranker", "r6", "promote", "ana")
    assert TOKEN not in w.log()
