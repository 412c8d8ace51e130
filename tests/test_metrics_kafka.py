"""``/metrics`` scraped during a run on the real broker: the counters and the lag
gauge move as events flow, and a retired model's series leave the page."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.tools.broker import free_port
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce
from tests.polling import poll
from tests.test_worker_kafka import T0, WINDOW, events

pytestmark = pytest.mark.kafka

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def burst(servers: str, topic: str, values: list[Any], key: bytes) -> None:
    """Send every value at once (acknowledged together, not one by one)."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=50)
    await producer.start()
    try:
        sent = [await producer.send(topic, orjson.dumps(v), key=key) for v in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    text = (await asyncio.to_thread(urllib.request.urlopen, url, None, 10)).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v) in ls for k, v in labels.items()))


def of_model(samples: Samples, model: str) -> list[str]:
    return [n for n, ls in samples if ("model", model) in ls]


async def until(port: int, ok: Callable[[Samples], bool], what: str,
                timeout: float = 60.0) -> Samples:
    def traffic(samples: Samples) -> dict[str, float]:
        return {f"{n}{dict(ls)}": v for (n, ls), v in samples.items()
                if n.startswith(("sentinelle_events", "sentinelle_messages",
                                 "sentinelle_consumer_lag", "sentinelle_models"))}

    return await poll(lambda: scrape(port), ok, what=f"{what} on /metrics", timeout=timeout,
                      show=traffic)


async def test_metrics_move_with_the_traffic_and_a_retired_model_leaves(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    w = worker_factory({
        "windows": {"size_s": WINDOW, "allowed_lateness_s": 0},
        "burn_rate": {"enabled": False},
        # small micro-batches, so that a backlog takes a while to read; a model quiet
        # for 6 s is retired
        "worker": {"web_port": port, "batch_max": 20, "idle_close_s": 2.0,
                   "series_ttl_s": 4.0, "model_ttl_s": 6.0},
    })
    topic = w.topics["predictions"]
    before = await scrape(port)
    assert total(before, "sentinelle_events_total") == 0
    assert ("sentinelle_build_info", ()) not in before  # it has labels: the versions
    assert total(before, "sentinelle_build_info") == 1
    assert total(before, "process_resident_memory_bytes") > 0

    # 1. Two windows of "gone", and one event that closes them: the counters move, and
    #    the model's latest window is on the page.
    evs = events("gone", T0, 40, 80.0) + events("gone", T0 + WINDOW, 40, 80.0)
    evs.append(events("gone", T0 + 2 * WINDOW, 1, 80.0)[0])
    async with Collector(w.servers, w.topics["stats"]) as stats:
        await produce(w.servers, topic, evs, key=b"gone")
        await stats.until(lambda r: len(r) >= 2, what="two windows")
    seen = await until(port, lambda s: total(s, "sentinelle_events_total", topic=topic)
                       == len(evs), "every event counted")
    assert total(seen, "sentinelle_messages_total", topic=topic) == len(evs)
    assert total(seen, "sentinelle_windows_total") >= 2
    assert total(seen, "sentinelle_models") == 1
    assert total(seen, "sentinelle_window_latency_seconds", model="gone",
                 quantile="0.99") == pytest.approx(0.096, rel=0.1)  # 80 ms x 1.2 at most
    assert total(seen, "sentinelle_batch_seconds_count", agent="predictions") >= 1
    assert total(seen, "sentinelle_publish_seconds_count", agent="predictions") >= 1
    assert total(seen, "sentinelle_changelog_bytes_total", table="model-state") > 0
    assert total(seen, "sentinelle_checkpoint_bytes_count", table="model-state") >= 1
    assert of_model(seen, "gone")
    # Faust's own sensor, on the same page: the messages under the agents, the sends
    assert total(seen, "faust_messages_received_total") >= len(evs)
    assert total(seen, "faust_total_sent_messages_total") >= 2  # two windows' stats at least

    # 2. Quiet past worker.model_ttl_s: the model is retired and its series leave.
    gone = await until(port, lambda s: not of_model(s, "gone"), "retirement of 'gone'",
                       timeout=60)
    assert total(gone, "sentinelle_models") == 0
    assert total(gone, "sentinelle_events_total", topic=topic) == len(evs)  # counters stay

    # 3. A burst sent faster than the worker reads it (micro-batches of 20): the lag
    #    gauge shows the backlog, then drains to 0.
    backlog = events("busy", T0, 3000, 50.0)
    await burst(w.servers, topic, backlog, key=b"busy")
    lags: list[float] = []

    def drained(s: Samples) -> bool:
        lags.append(total(s, "sentinelle_consumer_lag", topic=topic))
        return total(s, "sentinelle_events_total", topic=topic) == len(evs) + len(backlog) and \
            ("sentinelle_consumer_lag", (("partition", "0"), ("topic", topic))) in s and \
            lags[-1] == 0

    done = await until(port, drained, "the backlog read", timeout=120)
    assert max(lags) > 0, lags  # the gauge moved: messages waited, then none
    assert total(done, "sentinelle_messages_total", topic=topic) == len(evs) + len(backlog)
    partitions = {dict(ls)["partition"] for n, ls in done if n == "sentinelle_consumer_lag"}
    assert partitions == {"0", "1"}  # every assigned partition of the input topic
