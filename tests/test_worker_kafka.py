"""End to end on a real broker: events in, window stats and alerts out.

Window checks run on event time, so these tests send whole minutes of traffic
in an instant, with timestamps in the past, and get deterministic windows.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.tools.broker import free_port
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce

pytestmark = pytest.mark.kafka

T0 = 1_795_000_000.0  # a fixed event-time origin, on a window boundary
WINDOW = 10.0


def events(model: str, start: float, n: int, latency: float, error_rate: float = 0.0,
           seed: int = 1, version: str = "v1") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"event_id": f"{model}-{start}-{i}", "ts": start + WINDOW * (i + 0.5) / n,
             "model": model, "version": version,
             "latency_ms": latency * rng.uniform(0.8, 1.2),
             "status": "error" if rng.random() < error_rate else "ok"} for i in range(n)]


def of_key(alerts: list[dict[str, Any]], key: str) -> list[str]:
    return [a["event_action"] for a in alerts if a["dedup_key"] == key]


WINDOW_CFG = {
    "windows": {"size_s": WINDOW, "allowed_lateness_s": 0},
    "latency": {"p99_threshold_ms": 300, "min_events": 10},
    "error_rate": {"threshold": 0.05, "min_events": 10},
    "burn_rate": {"enabled": False},
    # resolve on the first good window (production holds a resolve 10 minutes)
    "alerts": {"keep_firing_for_s": 0},
}


async def test_regressions_trigger_once_and_resolve(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory(WINDOW_CFG)
    # Window by window: 3 healthy, 6 bad (a persisting condition), 3 healthy, then
    # one event that closes the last window.
    plan = ["ok"] * 3 + ["bad"] * 6 + ["ok"] * 3
    batches = []
    for i, state in enumerate(plan):
        start = T0 + i * WINDOW
        slow = events("fraud-scorer", start, 50, 900.0 if state == "bad" else 60.0, seed=i)
        failing = events("recommender", start, 50, 40.0,
                         error_rate=0.4 if state == "bad" else 0.0, seed=100 + i)
        batches += [slow[:25], slow[25:]] + [[e] for e in failing]  # both wire forms
    batches.append(events("fraud-scorer", T0 + len(plan) * WINDOW, 1, 50.0))
    batches.append(events("recommender", T0 + len(plan) * WINDOW, 1, 50.0))
    p99_key = "latency_slo:fraud-scorer:v1:p99"
    err_key = "error_rate:recommender:v1:spike"
    async with Collector(w.servers, w.topics["alerts"]) as alerts, \
            Collector(w.servers, w.topics["stats"]) as stats:
        for b in batches:
            model = b[0]["model"]
            await produce(w.servers, w.topics["predictions"], [b if len(b) > 1 else b[0]],
                          key=model.encode())
        await alerts.until(lambda r: "resolve" in of_key(r, p99_key)
                           and "resolve" in of_key(r, err_key), what="both resolves")
        await stats.until(lambda r: len(r) >= 2 * len(plan), what="all windows")
    for key in (p99_key, err_key):
        assert of_key(alerts.records, key) == ["trigger", "resolve"], key
    trigger = next(a for a in alerts.records if a["dedup_key"] == p99_key)
    # Event time: the trigger is stamped with the end of the first bad window.
    first_bad_end = datetime.fromtimestamp(T0 + 4 * WINDOW, UTC)
    assert trigger["payload"]["timestamp"] == first_bad_end.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert trigger["payload"]["class"] == "latency_slo"
    assert trigger["payload"]["custom_details"]["value"] > 300
    resolve = next(a for a in alerts.records
                   if a["dedup_key"] == p99_key and a["event_action"] == "resolve")
    assert resolve["payload"]["severity"] == trigger["payload"]["severity"]
    assert resolve["payload"]["summary"] and resolve["payload"]["source"] == "fraud-scorer@v1"
    per_model: dict[str, list[int]] = {}
    for s in stats.records:
        per_model.setdefault(s["model"], []).append(s["count"])
    assert per_model == {"fraud-scorer": [50] * len(plan), "recommender": [50] * len(plan)}


async def test_outage_triggers_on_silence_and_resolves_on_traffic(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory({"outage": {"k": 10, "floor_s": 2, "min_arrivals": 1}})
    now = time.time()
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        await produce(w.servers, w.topics["predictions"], [events("churn-model", now, 5, 20.0)],
                      key=b"churn-model")
        sent = time.time()
        await alerts.until(lambda r: "trigger" in of_key(r, "outage:churn-model"), timeout=30,
                           what="outage trigger")
        noticed = time.time()
        await produce(w.servers, w.topics["predictions"],
                      [events("churn-model", time.time(), 5, 20.0)], key=b"churn-model")
        await alerts.until(lambda r: "resolve" in of_key(r, "outage:churn-model"), timeout=30,
                           what="outage resolve")
    assert of_key(alerts.records, "outage:churn-model") == ["trigger", "resolve"]
    # Silence is measured on the wall clock: not before the 2 s floor.
    assert noticed - sent >= 2.0
    trigger = alerts.records[0]
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["custom_details"]["value"] > 2.0


MALFORMED: list[tuple[bytes, str]] = [
    (b"{not json", "not_json"),
    (b"\xff\xfe\x00garbage", "not_json"),
    (b'"just a string"', "not_object"),
    (b'{"event_id": "e", "ts": 1795000000, "model": "m", "version": "v1"}', "missing_field"),
    (b'{"event_id": "e", "ts": 1795000000, "model": "m", "version": "v1", "latency_ms": "fast"}',
     "bad_type"),
    (b'{"event_id": "e", "ts": 1795000000, "model": "m", "version": "v1", "latency_ms": NaN}',
     "not_finite"),
    (b'{"event_id": "e", "ts": 1795000000, "model": "m", "version": "v1", "latency_ms": Infinity}',
     "not_finite"),
    (b'{"event_id": "e", "ts": 1795000000, "model": "m", "version": "v1", "latency_ms": -4}',
     "negative_latency"),
    (b'{"event_id": "e", "ts": "yesterday", "model": "m", "version": "v1", "latency_ms": 4}',
     "bad_timestamp"),
    (b'{"event_id": "e", "ts": 1795000000, "model": "m", "version": "v1", "latency_ms": 4, "pad": "'
     + b"x" * 1_100_000 + b'"}', "oversized"),
]


async def test_malformed_inputs_go_to_the_deadletter_topic_and_processing_goes_on(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    w = worker_factory({**WINDOW_CFG, "worker": {"web_port": port}})
    good = events("m", T0, 20, 50.0)
    batch = [good[0], {"event_id": "x", "model": "m"}, good[1], 42]  # two bad elements
    late = events("m", T0 - 5 * WINDOW, 1, 50.0)[0]  # its window closed long before
    closer = events("m", T0 + WINDOW, 1, 50.0)[0]     # closes the window of `good`
    async with Collector(w.servers, w.topics["deadletter"]) as dead, \
            Collector(w.servers, w.topics["stats"]) as stats:
        bad_meta = await produce(w.servers, w.topics["predictions"],
                                 [raw for raw, _ in MALFORMED], key=b"m")
        batch_meta = await produce(w.servers, w.topics["predictions"], [batch], key=b"m")
        await produce(w.servers, w.topics["predictions"], good[2:] + [closer, late], key=b"m")
        expected = len(MALFORMED) + 2 + 1
        await dead.until(lambda r: len(r) >= expected, what=f"{expected} dead letters")
        await stats.until(lambda r: len(r) >= 1, what="the window of the good events")
    by_offset = {(d["partition"], d["offset"], d.get("index")): d for d in dead.records}
    for (raw, code), meta in zip(MALFORMED, bad_meta, strict=True):
        d = by_offset[(meta.partition, meta.offset, None)]
        assert d["topic"] == w.topics["predictions"]
        assert d["reason"].split(":")[0] == code, d["reason"]
        if code == "oversized":
            assert d["raw_truncated"] and d["raw_length"] == len(raw)
            assert raw.decode().startswith(d["raw"])
        elif raw.startswith(b"\xff"):
            assert base64.b64decode(d["raw"]) == raw  # not UTF-8: base64
        else:
            assert d["raw"] == raw.decode()  # the original message, as text
    assert by_offset[(batch_meta[0].partition, batch_meta[0].offset, 1)]["reason"] \
        .startswith("missing_field")
    assert by_offset[(batch_meta[0].partition, batch_meta[0].offset, 3)]["reason"] \
        .startswith("not_object")
    assert [d["reason"].split(":")[0] for d in dead.records].count("late") == 1
    # Every good event of the window was counted, the two from the batch included.
    assert stats.records[0]["count"] == len(good)
    # ... and every dead letter is counted by reason on the worker's /metrics page.
    url = f"http://127.0.0.1:{port}/metrics"
    page = (await asyncio.to_thread(urllib.request.urlopen, url, None, 10)).read().decode()
    topic = w.topics["predictions"]
    assert f'sentinelle_deadletters_total{{reason="not_json",topic="{topic}"}} 2.0' in page
    assert f'sentinelle_deadletters_total{{reason="late",topic="{topic}"}} 1.0' in page
    # The port serves Sentinelle's pages: alive, ready (joined, restored, read) ...
    base = f"http://127.0.0.1:{port}"
    for path in ("/health", "/ready"):
        reply = await asyncio.to_thread(urllib.request.urlopen, base + path, None, 10)
        assert reply.status == 200, path
    ready = orjson.loads((await asyncio.to_thread(urllib.request.urlopen, base + "/ready",
                                                  None, 10)).read())
    assert ready == {"ready": True, "waiting_for": []}
    # ... and none of Faust's generic pages, which would show the tables' contents.
    for path in ("/table/", "/router/", "/graph/", "/stats/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, base + path, None, 10)
        assert refused.value.code == 404, path


async def test_a_restarted_worker_restores_state_no_second_trigger_and_still_resolves(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory(WINDOW_CFG)
    key = "latency_slo:fraud-scorer:v1:p99"

    def window(i: int, latency: float) -> list[dict[str, Any]]:
        return events("fraud-scorer", T0 + i * WINDOW, 40, latency, seed=i)

    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        for i in range(4):  # 1 healthy, 3 slow windows; the 4th stays open
            await produce(w.servers, w.topics["predictions"],
                          [window(i, 60.0 if i == 0 else 900.0)], key=b"fraud-scorer")
        await alerts.until(lambda r: of_key(r, key) == ["trigger"], what="the trigger")
        # Kill it hard: no clean leave, maybe no offset commit (the replay is skipped
        # thanks to the offsets in the checkpoint).
        w.kill()
        w.start(timeout=120)
        for i in range(4, 8):  # still slow for a while, then healthy
            await produce(w.servers, w.topics["predictions"],
                          [window(i, 900.0 if i < 6 else 60.0)], key=b"fraud-scorer")
        await alerts.until(lambda r: "resolve" in of_key(r, key), timeout=90, what="the resolve")
    assert of_key(alerts.records, key) == ["trigger", "resolve"]
    resolve = alerts.records[-1]
    assert resolve["payload"]["timestamp"] == datetime.fromtimestamp(
        T0 + 7 * WINDOW, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # end of window 6


async def test_an_outage_holds_back_the_latency_alert_of_the_same_model(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    # The model turns slow, then silent: the slow window closes (idle flush) while
    # the outage fires, so its latency alert waits for the outage to end.
    w = worker_factory({**WINDOW_CFG, "outage": {"k": 10, "floor_s": 2, "min_arrivals": 1},
                        "worker": {"idle_close_s": 4}})
    now = time.time()
    slow_start = (now - 100) // WINDOW * WINDOW  # one whole window, left open
    async with Collector(w.servers, w.topics["alerts"]) as alerts, \
            Collector(w.servers, w.topics["stats"]) as stats:
        await produce(w.servers, w.topics["predictions"],
                      [events("m", slow_start, 30, 900.0)], key=b"m")
        await stats.until(lambda r: len(r) >= 1, timeout=30, what="the slow window, flushed")
        await produce(w.servers, w.topics["predictions"], [events("m", now, 5, 20.0)], key=b"m")
        await alerts.until(lambda r: len(r) >= 3, timeout=30, what="three alerts")
    order = [(a["event_action"], a["dedup_key"]) for a in alerts.records[:3]]
    assert order == [("trigger", "outage:m"), ("resolve", "outage:m"),
                     ("trigger", "latency_slo:m:v1:p99")]
    assert stats.records[0]["latency_ms"]["p99"] > 300
