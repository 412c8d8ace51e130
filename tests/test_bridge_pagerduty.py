"""``sentinelle bridge pagerduty``, fully: the rules alone (links, routing, limits, Change
Events, rate per key, giving up), then the command against a local PagerDuty on the
real broker."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from alerting.bridge import Backoff, Outcome, deliver, settle
from alerting.bridge_service import BridgeMetrics
from alerting.links import Links
from alerting.pagerduty import (
    MAX_EVENT_BYTES,
    Route,
    Router,
    change_event,
    event_body,
    per_key_rate,
    short_dedup_key,
)
from streams.runtime.kafka import ensure_topics
from streams.tools.broker import free_port
from tests.conftest import test_config
from tests.kafka_io import Collector, produce
from tests.polling import poll
from tests.test_bridge import LocalServer
from tests.test_bridge_alertmanager import start_bridge, stop

ROUTER = Router([Route({"class": "canary_regression"}, "KEY-DEPLOY"),
                 Route({"model": "fraud-*", "severity": "critical"}, "KEY-FRAUD")], "KEY-ALL")
LINKS = Links({"latency_slo": "https://runbooks.example/{class}.md"},
              "https://grafana.example/d/m?var-model={model}&var-version={version}")


def alert(key: str, cls: str = "latency_slo", model: str = "pricing", severity: str = "error",
          action: str = "trigger", **details: Any) -> dict[str, Any]:
    return {"event_action": action, "dedup_key": key,
            "payload": {"summary": f"{key} fired", "source": f"{model}@v2",
                        "severity": severity, "timestamp": "2026-11-27T07:00:00.000Z",
                        "component": model, "group": "serving", "class": cls,
                        "custom_details": details}}


def command(action: str, **extra: Any) -> dict[str, Any]:
    return {"command_id": f"{action}:pricing:p2:5", "action": action, "model": "pricing",
            "from_version": "p2", "to_version": "p1" if action == "rollback" else "p2",
            "reason": "canary p2 error rate 15% vs 0.4%", "alert_dedup_keys": [],
            "requires_approval": False, "issued_at": "2026-11-27T07:00:00.000Z", **extra}


def test_links_client_and_routing() -> None:
    body = event_body(alert("latency_slo:pricing:v2:p99"), ROUTER, LINKS, "Sentinelle",
                      "https://sentinelle.example/models/{model}")
    assert body["routing_key"] == "KEY-ALL" and body["client"] == "Sentinelle"
    assert body["client_url"] == "https://sentinelle.example/models/pricing"
    assert body["links"] == [
        {"href": "https://runbooks.example/latency_slo.md", "text": "Runbook: latency_slo"},
        {"href": "https://grafana.example/d/m?var-model=pricing&var-version=v2",
         "text": "Dashboard: pricing"}]
    assert event_body(alert("k", "canary_regression"), ROUTER)["routing_key"] == "KEY-DEPLOY"
    assert event_body(alert("k", model="fraud-a", severity="critical"),
                      ROUTER)["routing_key"] == "KEY-FRAUD"
    assert "KEY" not in repr(ROUTER) + repr(ROUTER.routes)
    with pytest.raises(ValueError, match="unknown field"):
        Links({"outage": "https://x/{modle}"})


def test_long_dedup_keys_are_hashed_and_kept_readable() -> None:
    key = "feature_drift:pricing:v2:" + "a_very_long_feature_name_" * 20
    body = event_body(alert(key), ROUTER)
    assert len(body["dedup_key"]) <= 255 and body["dedup_key"].startswith("feature_drift:")
    assert body["payload"]["custom_details"]["dedup_key"] == key
    assert event_body(alert(key, action="resolve"), ROUTER)["dedup_key"] == body["dedup_key"]
    assert short_dedup_key(key + "b") != body["dedup_key"]
    huge = "x" * 5000
    assert len(short_dedup_key(":".join([huge] * 10))) <= 255


def test_events_are_kept_under_512_kb_and_say_what_was_trimmed() -> None:
    big = alert("k", statistic="js", value=0.4, samples=list(range(200_000)))
    assert len(orjson.dumps(big)) > MAX_EVENT_BYTES
    body = event_body(big, ROUTER)
    assert len(orjson.dumps(body)) < MAX_EVENT_BYTES
    details = body["payload"]["custom_details"]
    assert details["samples"].startswith("(trimmed: ") and details["value"] == 0.4
    assert "samples" in details["trimmed"] and "512 KB" in details["trimmed"]
    assert "trimmed" not in event_body(alert("k", value=1), ROUTER)["payload"]["custom_details"]


def test_change_events_for_rollbacks_and_promotions_only() -> None:
    rollback = change_event(command("rollback"), ROUTER, LINKS)
    assert rollback is not None and rollback["routing_key"] == "KEY-DEPLOY"
    assert rollback["payload"]["summary"].startswith("pricing: rolled back p2 to p1: canary")
    assert rollback["payload"]["timestamp"] == "2026-11-27T07:00:00.000Z"
    assert rollback["payload"]["custom_details"]["command_id"] == "rollback:pricing:p2:5"
    promote = change_event(command("promote", traffic_percent=25), ROUTER)
    assert promote is not None and "promoted p2 to 25 %" in promote["payload"]["summary"]
    assert promote["routing_key"] == "KEY-ALL"
    assert change_event(command("pause"), ROUTER) is None
    assert change_event(command("promote", requires_approval=True), ROUTER) is None


async def test_rate_per_routing_key() -> None:
    now = [0.0]
    sent: list[tuple[float, str]] = []

    async def post(body: Any) -> tuple[int | None, str, float | None]:
        sent.append((now[0], body["routing_key"]))
        return 202, "", None

    async def sleep(s: float) -> None:
        now[0] += s

    limited = per_key_rate(post, 110, burst=10, clock=lambda: now[0], sleep=sleep)
    for i in range(300):
        await limited({"routing_key": "A" if i % 3 else "B"})
    for key in "AB":
        times = [t for t, k in sent if k == key]
        assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 120


async def test_a_stuck_delivery_is_visible_then_given_up() -> None:
    now = [100.0]
    registry = CollectorRegistry()
    watch = BridgeMetrics(registry, clock=lambda: now[0]).watch("pagerduty")
    watch.in_flight_since = 40.0
    assert registry.get_sample_value("sentinelle_bridge_oldest_undelivered_age_seconds",
                                     {"bridge": "pagerduty"}) == 60.0

    async def busy(body: Any) -> tuple[int | None, str, float | None]:
        return 503, "busy", None

    async def sleep(s: float) -> None:
        now[0] += s

    done = await deliver({"routing_key": "K"}, busy, Backoff(1, 8), sleep=sleep,
                         give_up_at=130.0, clock=lambda: now[0])
    assert done.outcome is Outcome.EXPIRED and done.attempts > 3 and now[0] <= 130
    settled = await settle(orjson.dumps(alert("k")), lambda a: {**a, "routing_key": "K"}, busy,
                           Backoff(1, 8), sleep=sleep, give_up_at=now[0] + 5,
                           clock=lambda: now[0])
    assert settled.outcome is Outcome.EXPIRED and settled.reason.startswith("expired: ")
    assert "503" in settled.reason and "K" not in settled.reason.replace("KB", "")


class FakePagerDuty(LocalServer):
    """The Events API v2 and the Change Events API on loopback; a key listed in
    ``stuck`` is answered 503 forever."""

    def __init__(self, stuck: set[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.changes: list[dict[str, Any]] = []
        self.stuck = stuck
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def enqueue(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.events.append(body)
        if body.get("dedup_key") in self.stuck:
            return web.json_response({"status": "busy"}, status=503)
        return web.json_response({"status": "success"}, status=202)

    async def change(self, request: web.Request) -> web.Response:
        self.changes.append(await request.json())
        return web.json_response({"status": "success"}, status=202)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v2/enqueue", self.enqueue)
        app.router.add_post("/v2/change/enqueue", self.change)
        return app

    def keys(self) -> list[str]:
        return [e.get("dedup_key", "") for e in self.events]


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310
        return str(resp.read().decode())


def sample(page: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels) on a metrics page; 0 if absent."""
    return sum(float(line.split()[-1]) for line in page.splitlines()
               if line.startswith(name + " "))


@pytest.mark.kafka
async def test_pagerduty_bridge_links_change_events_routing_and_gives_up_on_stuck(
        kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    metrics_port = free_port()
    secret = tmp_path / "deploy-key"
    secret.write_text("KEY-DEPLOY\n")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "KEY-ALL")
    monkeypatch.setenv("PD_FRAUD", "KEY-FRAUD")
    cfg = test_config(prefix, {"bridges": {
        "runbooks": {"latency_slo": "https://runbooks.example/{class}.md"},
        "dashboard_url": "https://grafana.example/d/m?var-model={model}&var-version={version}",
        "max_age_s": 20, "metrics_port": metrics_port,
        "pagerduty": {"client_url": "https://sentinelle.example/models/{model}", "routes": [
            {"match": {"class": "canary_regression"}, "routing_key_file": str(secret)},
            {"match": {"model": "fraud-*"}, "routing_key_env": "PD_FRAUD"}]}}})
    topics = cfg["topics"]
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump(cfg))
    await ensure_topics(kafka_bootstrap, [topics["alerts"], topics["deadletter"],
                                          topics["commands"]], 1)
    long_key = "feature_drift:pricing:v2:" + "f" * 400
    alerts = [alert("latency_slo:pricing:v2:p99"), alert("canary_regression:pricing:p2",
                                                         "canary_regression", severity="critical"),
              alert("outage:fraud-a", "outage", model="fraud-a"),
              alert(long_key, "feature_drift"),
              alert("stuck"), alert("after-stuck")]
    async with FakePagerDuty({"stuck"}) as pd, Collector(kafka_bootstrap,
                                                         topics["deadletter"]) as dead:
        await produce(kafka_bootstrap, topics["alerts"], alerts, key=b"m")
        await produce(kafka_bootstrap, topics["commands"],
                      [command("pause"), command("rollback"),
                       command("promote", requires_approval=True, traffic_percent=100),
                       command("promote", traffic_percent=25)], key=b"pricing")
        proc = start_bridge(kafka_bootstrap, config, "pagerduty",
                            "--url", f"http://127.0.0.1:{pd.port}/v2/enqueue")
        try:
            await poll(lambda: pd.keys().count("stuck") >= 2, what="the stuck alert retried",
                       timeout=60)
            # The fake records a request as it arrives; the bridge counts the answer once it
            # has it back: wait for the bridge's own count of the second refusal.
            five = 'sentinelle_bridge_posts_total{answer="5xx",bridge="pagerduty"}'
            await poll(lambda: sample(scrape(metrics_port), five) >= 2,
                       what="both refusals counted", timeout=30)
            page = scrape(metrics_port)
            age = [line for line in page.splitlines()
                   if line.startswith("sentinelle_bridge_oldest_undelivered_age_seconds{"
                                      "bridge=\"pagerduty\"}")]
            assert age and float(age[0].split()[-1]) > 0.1, age
            assert sample(page, 'sentinelle_bridge_retries_total{bridge="pagerduty"}') >= 1
            assert sample(page, 'sentinelle_bridge_post_seconds_count{bridge="pagerduty"}') \
                >= sample(page, 'sentinelle_bridge_posts_total{answer="2xx",bridge="pagerduty"}'
                          ) + 2
            assert orjson.loads(scrape(metrics_port, "/health"))["status"] == "alive"
            # joined by now (it has delivered): the readiness probe says so
            assert orjson.loads(scrape(metrics_port, "/ready")) == {"ready": True,
                                                                    "waiting_for": []}
            await dead.until(lambda r: len(r) >= 1, what="the stuck alert dead-lettered")
            await poll(lambda: "after-stuck" in pd.keys(), what="the bridge went on", timeout=30)
            await poll(lambda: len(pd.changes) >= 2, what="two change events", timeout=30)
        finally:
            out = stop(proc)
    assert "KEY-" not in out, out  # no key is ever printed
    by_key = {e["dedup_key"]: e for e in pd.events}
    first = by_key["latency_slo:pricing:v2:p99"]
    assert first["routing_key"] == "KEY-ALL" and first["client"] == "Sentinelle"
    assert first["client_url"] == "https://sentinelle.example/models/pricing"
    assert [link["href"] for link in first["links"]] == [
        "https://runbooks.example/latency_slo.md",
        "https://grafana.example/d/m?var-model=pricing&var-version=v2"]
    assert by_key["canary_regression:pricing:p2"]["routing_key"] == "KEY-DEPLOY"
    assert by_key["outage:fraud-a"]["routing_key"] == "KEY-FRAUD"
    [short] = [e for e in pd.events if e["payload"]["custom_details"].get("dedup_key")]
    assert len(short["dedup_key"]) <= 255 and short["payload"]["custom_details"][
        "dedup_key"] == long_key
    [rec] = dead.records
    assert rec["reason"].startswith("expired: ") and orjson.loads(rec["raw"])["dedup_key"] == \
        "stuck" and "KEY-" not in rec["raw"] + rec["reason"]
    assert [c["payload"]["custom_details"]["action"] for c in pd.changes] == \
        ["rollback", "promote"]
    assert pd.changes[0]["routing_key"] == "KEY-DEPLOY" and pd.changes[0]["links"]
    assert pd.changes[1]["routing_key"] == "KEY-ALL"
