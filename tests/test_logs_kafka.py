"""``worker.log_format: json``: every line the worker prints is one JSON object."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce
from tests.test_worker_kafka import T0, WINDOW, WINDOW_CFG, events

pytestmark = pytest.mark.kafka


async def test_the_worker_logs_json_lines_that_an_aggregator_parses(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory({**WINDOW_CFG, "worker": {"log_format": "json"}})
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        for i, latency in enumerate((50.0, 900.0, 50.0)):  # the slow window fires
            await produce(w.servers, w.topics["predictions"],
                          [events("m", T0 + i * WINDOW, 30, latency)], key=b"m")
        await alerts.until(lambda r: len(r) >= 1, what="the alert")
    w.wait_for_log("alert trigger latency_slo:m", timeout=30)
    w.stop()
    lines = [line for line in w.log().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # a line that is not JSON raises
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(r["ts"].endswith("Z") for r in records)
    [alert] = [r for r in records if r["message"].startswith("alert trigger latency_slo:m")]
    assert alert["logger"].startswith("sentinelle") and alert["level"] == "INFO"
    assert any(r["logger"].startswith("faust") for r in records)  # Faust's own lines too
