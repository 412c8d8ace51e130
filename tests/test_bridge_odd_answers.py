"""Alert bridges against odd answers and odd records: nothing stops the bridge.

First the rules alone (:mod:`alerting.bridge`), then :func:`http_poster` against
a real HTTP server on loopback, then one bridge against a real broker.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from alerting.bridge import (
    Backoff,
    Outcome,
    deadletter_record,
    deliver,
    pagerduty_body,
    parse_retry_after,
    redact_url,
    settle,
    slack_body,
)
from alerting.bridge_service import http_poster, run_bridge
from streams.runtime.kafka import ensure_topics
from streams.tools.broker import free_port
from tests.kafka_io import Collector, produce
from tests.test_bridge import LocalServer

NOW = 1_800_000_000.0  # a fixed wall clock for the HTTP-date cases
Answer = tuple[int | None, str, float | None]


def http_date(epoch_s: float) -> str:
    return formatdate(epoch_s, usegmt=True)


# -- the rules ------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5),
    ("1000000000000", 1e12),                 # huge: taken as said, Backoff caps it
    (http_date(NOW + 90), 90.0),             # an HTTP-date 90 s from now
    (http_date(253402300799), 253402300799 - NOW),  # 9999-12-31: far future
])
def test_retry_after_gives_the_seconds_asked_for(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [
    None, "", "soon", "-5", "-0.5", "nan", "inf", "1e12", "0x10", "²", "٣", "5 s",
    "9" * 400,                               # digits that overflow a float
    http_date(NOW - 90),                     # already past (clock skew): no hint
    "Mon, 99 Foo 2024 25:61:61 GMT", "Thu, 01 Jan 0000 00:00:00 GMT", "\udcff\x00",
])
def test_retry_after_that_says_nothing_usable_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_backoff_falls_back_on_unusable_retry_after_caps_huge_and_never_overflows() -> None:
    b = Backoff(base_s=1, cap_s=8)
    rng = random.Random(3)
    for bad in (float("nan"), -5.0, -1e-9):
        assert 0.5 <= b.delay(0, bad, rng=rng) <= 1.0  # the normal backoff of attempt 0
    assert b.delay(0, 1e12) == 8 and b.delay(0, float("inf")) == 8
    for attempt in (1_100, 10**6):  # an endpoint down for days: still the cap, no overflow
        d = b.delay(attempt, rng=rng)
        assert math.isfinite(d) and 4 <= d <= 8


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T0/B0/XyZsecret", "https://hooks.slack.com"),
    ("https://user:pw@Example.COM:8443/p?token=abc#f", "https://example.com:8443"),
    ("http://[::1]:9/v2/enqueue?routing_key=k", "http://[::1]:9"),
    ("/relative/path?token=abc", "(no host)"),
    ("http://[::1/x?token=abc", "(unparseable URL)"),
    ("http://host:99999/x?token=abc", "(unparseable URL)"),
    ("http://bad\x00host\n/x", "(unparseable URL)"),
])
def test_redact_url_keeps_scheme_and_host_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_deliver_never_puts_the_routing_key_or_a_url_path_in_the_detail() -> None:
    async def echo(body: dict[str, Any]) -> Answer:  # an endpoint that echoes the request
        return 400, f"bad event {orjson.dumps(body).decode()} see https://x.io/a?t=1", None

    done = await deliver(pagerduty_body({"dedup_key": "k"}, "SECRET-KEY"), echo)
    assert done.outcome is Outcome.REJECTED and done.status == 400
    assert "SECRET-KEY" not in done.detail and "/a?t=1" not in done.detail
    assert "https://x.io" in done.detail


def answering(*answers: Answer) -> Callable[[dict[str, Any]], Awaitable[Answer]]:
    it = iter(answers)

    async def post(body: dict[str, Any]) -> Answer:
        return next(it)

    return post


async def no_sleep(s: float) -> None:
    pass


async def test_settle_dead_letters_what_cannot_be_an_alert() -> None:
    post = answering()  # never called: StopIteration would surface
    for raw, reason in ((b"\xff\x00 not json", "not_json"), (b"[1, 2]", "not_json"),
                        (b"", "not_json"), (b"null", "not_json")):
        done = await settle(raw, lambda a: a, post)
        assert (done.outcome, done.alert) == (Outcome.REJECTED, None)
        assert done.reason.startswith(f"{reason}:"), done.reason


async def test_settle_dead_letters_an_alert_the_bridge_cannot_handle_and_never_raises() -> None:
    odd = orjson.dumps({"dedup_key": "odd", "payload": "not an object"})
    done = await settle(odd, slack_body, answering((202, "", None)))
    assert done.outcome is Outcome.REJECTED and done.alert == {"dedup_key": "odd",
                                                               "payload": "not an object"}
    assert done.reason.startswith("error: AttributeError"), done.reason

    async def broken(body: dict[str, Any]) -> Answer:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "https://h.io/secret?token=1")

    done = await settle(orjson.dumps({"dedup_key": "k"}), lambda a: pagerduty_body(a, "KEY"),
                        broken)
    assert done.outcome is Outcome.REJECTED
    assert done.reason.startswith("error: UnicodeDecodeError") and "secret" not in done.reason
    assert "https://h.io" in done.reason

    ok = await settle(orjson.dumps({"dedup_key": "k"}), lambda a: a,
                      answering((503, "", None), (202, "", None)), Backoff(0.01, 0.02),
                      sleep=no_sleep)
    assert (ok.outcome, ok.alert, ok.reason) == (Outcome.DELIVERED, {"dedup_key": "k"}, "")


def test_deadletter_record_is_base64_when_not_utf8_and_always_fits_a_kafka_message() -> None:
    rec = deadletter_record("ml.alerts", 0, 7, "not_json: x", b"\xff\xfe\x00")
    assert rec == {"topic": "ml.alerts", "partition": 0, "offset": 7, "reason": "not_json: x",
                   "raw": base64.b64encode(b"\xff\xfe\x00").decode()}
    assert deadletter_record("t", 0, 0, "r", b'{"a": "\xc3\xa9"}')["raw"] == '{"a": "\u00e9"}'
    for big in (b"x" * 1_100_000, b"\x01" * 600_000):  # \x01 is six bytes once escaped
        rec = deadletter_record("t", 0, 0, "r", big)
        assert len(orjson.dumps(rec)) < 1_000_000
        assert rec["raw_truncated"] is True and rec["raw_length"] == len(big)
        assert big.decode().startswith(rec["raw"])
    kept = b"y" * 500_000  # an alert of the contract's full size is kept whole
    assert deadletter_record("t", 0, 0, "r", kept)["raw"] == kept.decode()


# -- http_poster against a real HTTP server --------------------------------------------


class OddEndpoint(LocalServer):
    """A real HTTP server on loopback: each dedup_key gets its scripted answers, then 202.

    An answer is a handler. Bodies may be PagerDuty events (``dedup_key``) or
    Slack messages (the key is in backticks at the end of ``text``). Anything
    sent to ``/stolen``, by any method, is recorded apart: no one should go there.
    """

    def __init__(self, script: dict[str, list[Callable[[web.Request],
                                                       Awaitable[web.StreamResponse]]]]
                 ) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.received: list[str] = []
        self.stolen: list[bytes] = []
        self._arrived = asyncio.Condition()
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @staticmethod
    def key_of(body: dict[str, Any]) -> str:
        if "dedup_key" in body:
            return str(body["dedup_key"])
        found = re.search(r"\(`([^`]*)`\)$", body.get("text", ""))
        return found.group(1) if found else "?"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = self.key_of(await request.json())
        plan = self.script.get(key, [])
        async with self._arrived:
            self.received.append(key)
            self._arrived.notify_all()
        if plan:
            return await plan.pop(0)(request)
        return web.json_response({"status": "success"}, status=202)

    async def steal(self, request: web.Request) -> web.Response:
        self.stolen.append(await request.read())
        return web.json_response({"status": "success"}, status=202)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self.handle)
        app.router.add_route("*", "/stolen", self.steal)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/enqueue?token=in-the-query"

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def until(self, n: int, crashed: asyncio.Task[None] | None = None,
                    timeout: float = 60) -> None:
        """Until ``n`` requests arrived; fail at once if the bridge task ends first."""
        async def arrived() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= n)

        await until_or_crash(arrived(), crashed, timeout, f"{n} requests")


async def until_or_crash(waiting: Awaitable[Any], task: asyncio.Task[None] | None,
                         timeout: float, what: str) -> None:
    waiter = asyncio.ensure_future(waiting)
    watched: set[asyncio.Future[Any]] = {waiter} | ({task} if task is not None else set())
    done, _ = await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task is not None and task.done():
            raise AssertionError(f"the bridge stopped before {what}") from task.exception()
        raise AssertionError(f"{what} not seen within {timeout} s")


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
          content_type: str = "text/plain; charset=utf-8"
          ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body,
                            headers={"Content-Type": content_type, **(headers or {})})

    return answer


def endless(status: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An answer whose body never ends (until the client hangs up)."""
    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            for _ in range(1_000_000):  # 64 GB: far more than anyone should read
                await resp.write(b"x" * 65_536)
        except ConnectionError:
            pass  # the client read what it wanted and hung up
        return resp

    return answer


def redirect(status: int, endpoint: OddEndpoint
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    return reply(status, b"moved", {
        "Location": f"http://127.0.0.1:{endpoint.port}/stolen?token=in-the-location"})


async def post_once(endpoint: OddEndpoint, key: str, timeout_s: float = 10.0) -> Answer:
    async with aiohttp.ClientSession() as session:
        post = http_poster(session, endpoint.url, timeout_s=timeout_s)
        return await post(pagerduty_body({"dedup_key": key}, "SECRET-KEY"))


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "text/plain",
                                          "text/html; charset=x-no-such-codec",
                                          "text/plain; charset=idna", "application/json"])
async def test_a_body_that_is_not_utf8_is_read_without_raising(content_type: str) -> None:
    body = b"\xff\xfe\x80 bad \xc3( request"
    async with OddEndpoint({"k": [reply(400, body, content_type=content_type)]}) as endpoint:
        status, text, _ = await post_once(endpoint, "k")
    assert status == 400 and "bad" in text and "request" in text


async def test_only_the_start_of_a_huge_answer_is_read() -> None:
    async with OddEndpoint({"k": [endless(413)]}) as endpoint:
        # The body never ends: reading all of it would time out and look like no answer.
        status, text, _ = await post_once(endpoint, "k", timeout_s=5)
    assert status == 413 and 0 < len(text) <= 4096 and set(text) == {"x"}


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_names_only_the_host(code: int) -> None:
    async with OddEndpoint({}) as endpoint:
        endpoint.script["k"] = [redirect(code, endpoint)]
        status, text, _ = await post_once(endpoint, "k")
    assert endpoint.stolen == []  # the routing key went nowhere else
    assert status == code and text == f"redirect to {endpoint.host}"


@pytest.mark.parametrize(("header", "expected"), [
    ("²", None), ("soon", None), ("-3", None), (http_date(0), None),
    ("1000000000000", 1e12),
    (http_date(253402300799), pytest.approx(253402300799 - time.time(), abs=600)),
])
async def test_an_odd_retry_after_never_raises(header: str, expected: Any) -> None:
    async with OddEndpoint({"k": [reply(503, b"busy", {"Retry-After": header})]}) as endpoint:
        status, _, retry_after = await post_once(endpoint, "k")
    assert status == 503 and retry_after == expected


async def test_no_answer_names_the_host_only() -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{free_port()}/services/T0/B0/secret?token=abc"
        status, text, _ = await http_poster(session, url)({"dedup_key": "k"})
    assert status is None and "secret" not in text and "token" not in text
    assert text.startswith("ClientConnectorError") and "http://127.0.0.1:" in text


# -- one bridge, a real broker ------------------------------------------------------


def slack_alert(key: str, **extra: Any) -> dict[str, Any]:
    return {"event_action": "trigger", "dedup_key": key,
            "payload": {"summary": f"{key} fired", "severity": "error"}, **extra}


@pytest.mark.kafka
async def test_webhook_bridge_dead_letters_odd_answers_and_records_and_goes_on(
        kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    alerts_topic, dead_topic = f"{prefix}.ml.alerts", f"{prefix}.ml.deadletter"
    await ensure_topics(kafka_bootstrap, [alerts_topic, dead_topic], 1)
    huge = b"x" * 1_100_000  # not JSON, and more than a Kafka message holds once wrapped
    records: list[Any] = [
        slack_alert("redir"),                           # 307 to /stolen: not followed
        slack_alert("latin"),                           # 400, body not UTF-8
        b"\xff\x00 not json",                           # not JSON, not UTF-8
        b"[1, 2]",                                      # JSON, not an object
        {"dedup_key": "odd", "payload": "not an object"},  # slack_body cannot shape it
        huge,
        slack_alert("retry"),                           # 503 (Retry-After ²), 429 (10^12)
        slack_alert("last"),                            # delivered: the bridge went on
    ]
    async with OddEndpoint({}) as endpoint, aiohttp.ClientSession() as session, \
            Collector(kafka_bootstrap, dead_topic) as dead:
        endpoint.script.update({
            "redir": [redirect(307, endpoint)],
            "latin": [reply(400, b"\xff\xfe nope \x80")],
            "retry": [reply(503, b"", {"Retry-After": "²"}),
                      reply(429, b"", {"Retry-After": "1000000000000"})],
        })
        metas = await produce(kafka_bootstrap, alerts_topic, records, key=b"m")
        task = asyncio.create_task(run_bridge(
            kafka_bootstrap, alerts_topic, dead_topic, f"{prefix}-bridge",
            http_poster(session, endpoint.url), slack_body,
            rate=100, backoff=Backoff(base_s=0.05, cap_s=0.2)))
        await endpoint.until(6, crashed=task)  # redir, latin, retry three times, last
        await until_or_crash(dead.until(lambda r: len(r) >= 6, what="6 dead letters"), task,
                             60, "6 dead letters")
        assert not task.done()  # still forwarding
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert endpoint.received == ["redir", "latin", "retry", "retry", "retry", "last"]
    assert endpoint.stolen == []
    by_offset = {d["offset"]: d for d in dead.records}
    assert sorted(by_offset) == [m.offset for m in metas[:6]]
    reasons = [by_offset[m.offset]["reason"] for m in metas[:6]]
    assert reasons[0] == f"rejected: HTTP 307: redirect to {endpoint.host}"
    assert reasons[1].startswith("rejected: HTTP 400: ") and "nope" in reasons[1]
    assert reasons[2].startswith("not_json") and reasons[3].startswith("not_json")
    assert reasons[4].startswith("error: AttributeError")
    assert reasons[5].startswith("not_json")
    assert all("token" not in r and "/stolen" not in r for r in reasons)
    raws = [by_offset[m.offset] for m in metas[:6]]
    assert orjson.loads(raws[0]["raw"]) == records[0]
    assert base64.b64decode(raws[2]["raw"]) == records[2]  # not UTF-8: base64
    assert raws[5]["raw_truncated"] and raws[5]["raw_length"] == len(huge)
    assert huge.decode().startswith(raws[5]["raw"])
