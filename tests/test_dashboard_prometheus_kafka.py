"""The Grafana dashboard's queries, asked of a real Prometheus scraping a real worker.

``tests/test_dashboard.py`` checks the names and labels the queries use by
reading them; here Prometheus itself (Debian's ``prometheus``, installed by
``make test``) evaluates each one against what a worker on the real broker
exported during a short run: every query is PromQL that Prometheus accepts,
and the panels the run exercises (traffic, errors, latency, alerts, dead
letters, inputs, lag, timings, state, the process) show data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from streams.tools.broker import free_port
from streams.tools.panels import DASHBOARD, LocalPrometheus, panels
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce
from tests.polling import poll
from tests.test_worker_kafka import T0, WINDOW, WINDOW_CFG, events

pytestmark = pytest.mark.kafka

#: panels a run of predictions, a slow window and a malformed message must fill;
#: the others (drift and skew, canaries, commands, drops) need profiles or rollouts
EXERCISED = {
    "Requests per second, per model version", "Error rate, per model version",
    "Latency p50 / p95 / p99, per model version", "Alerts firing now, by class and severity",
    "Alert notifications, by class and action",
    "Events folded and messages read per second, per topic", "Consumer lag per partition",
    "Event-time delay per model (wall clock minus watermark)",
    "Dead letters per second, by reason", "Micro-batch processing and publish time (p99)",
    "Checkpoint size per micro-batch (p95) and changelog bytes per second", "State held",
    "Worker memory and CPU", "Kafka send and commit latency (p99, Faust's sensor)",
    "Rebalances and failed sends (Faust's sensor)",
}


async def test_every_dashboard_query_runs_on_prometheus_and_the_main_panels_have_data(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    w = worker_factory({**WINDOW_CFG, "worker": {"web_port": port}})
    topic = w.topics["predictions"]
    with LocalPrometheus([f"127.0.0.1:{port}"], interval_s=1.0) as prom:
        await poll(prom.scraped, what="Prometheus scraping the worker", every=0.5)
        # a good window and a slow one, closed by the next: latency_slo fires
        evs = [*events("shop", T0, 30, 50.0), *events("shop", T0 + WINDOW, 30, 900.0),
               *events("shop", T0 + 2 * WINDOW, 30, 50.0)]
        async with Collector(w.servers, w.topics["alerts"]) as alerts:
            for i in range(0, len(evs), 30):
                await produce(w.servers, topic, [evs[i:i + 30]], key=b"shop")
            await produce(w.servers, topic, [b"{not json"], key=b"shop")
            await alerts.until(lambda r: len(r) == 1, what="the latency alert")
            await poll(lambda: bool(prom.query("sentinelle_alerts_firing > 0")),
                       what="the firing alert scraped", every=0.5)
            # a good window closed: it resolves
            await produce(w.servers, topic, [events("shop", T0 + 3 * WINDOW, 1, 50.0)],
                          key=b"shop")
            await alerts.until(lambda r: [a["event_action"] for a in r] ==
                               ["trigger", "resolve"], what="the resolve")
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        asked = [(panel.title, expr) for panel in panels(dashboard)
                 for expr, _ in panel.targets]
        for title, expr in asked:  # Prometheus takes every query (a bad one raises)
            try:
                prom.query(expr)
            except ValueError as exc:
                raise AssertionError(f"{title}: {expr}: {exc}") from exc

        def filled() -> set[str]:
            """The exercised panels none of whose queries has data over the last 2 min."""
            now = time.time()
            have = {title for title, expr in asked if title in EXERCISED and
                    prom.query_range(expr, now - 120, now, 1.0)}
            return EXERCISED - have

        try:  # rate() needs two scrapes after a counter moved
            await poll(lambda: not filled(), what="data in every exercised panel", timeout=30,
                       every=0.5)
        except AssertionError as exc:
            raise AssertionError(f"no data in {sorted(filled())}") from exc
        for var in dashboard["templating"]["list"]:  # label_values(metric, label)
            metric, label = var["definition"][len("label_values("):-1].split(", ")
            values = prom.api("label/" + label + "/values", **{"match[]": metric})
            assert values == ["shop"], var["definition"]
