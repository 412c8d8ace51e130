"""``sentinelle bridge alertmanager``: the shapes alone, then the command against a local
server speaking Alertmanager's v2 API (``POST /api/v2/alerts``) on the real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from alerting.alertmanager import Firing, am_alert
from alerting.bridge import Outcome
from alerting.links import Links
from streams.runtime.kafka import ensure_topics
from streams.tools.broker import free_port
from tests.conftest import ROOT, test_config
from tests.kafka_io import produce
from tests.polling import poll
from tests.test_bridge import LocalServer

T0 = "2026-11-27T07:00:00.000Z"


def alert(key: str, action: str = "trigger", ts: str = T0, **details: Any) -> dict[str, Any]:
    return {"event_action": action, "dedup_key": key,
            "payload": {"summary": f"{key} {action}", "source": "fraud-scorer@v7",
                        "severity": "warning", "timestamp": ts, "component": "fraud-scorer",
                        "group": "serving", "class": "feature_drift",
                        "custom_details": {"feature": "amount", "value": 0.41, **details}}}


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_labels_annotations_and_times() -> None:
    links = Links({"feature_drift": "https://runbooks/{class}"},
                  "https://grafana/d/models?var-model={model}&var-version={version}")
    now = epoch(T0) + 30
    am = am_alert(alert("feature_drift:fraud-scorer:v7:amount"), now, 60, links)
    assert am["labels"] == {"alertname": "feature_drift", "model": "fraud-scorer",
                            "version": "v7", "feature": "amount", "severity": "warning",
                            "group": "serving",
                            "dedup_key": "feature_drift:fraud-scorer:v7:amount"}
    assert am["annotations"]["summary"].endswith("trigger")
    assert orjson.loads(am["annotations"]["evidence"])["value"] == 0.41
    assert am["annotations"]["runbook_url"] == "https://runbooks/feature_drift"
    assert am["generatorURL"].endswith("var-model=fraud-scorer&var-version=v7")
    assert am["startsAt"] == T0 and epoch(am["endsAt"]) == now + 240
    resolved = am_alert(alert("k", "resolve", "2026-11-27T07:05:00.000Z"), now + 600, 60,
                        starts_at=T0)
    assert (resolved["startsAt"], resolved["endsAt"]) == (T0, "2026-11-27T07:05:00.000Z")
    # a resolve from the future ends now; one without its trigger has no startsAt
    future = am_alert(alert("k", "resolve", "2030-01-01T00:00:00.000Z"), now, 60)
    assert "startsAt" not in future and epoch(future["endsAt"]) == now


def test_firing_reposts_due_alerts_of_its_partitions_only() -> None:
    now = [1000.0]
    firing = Firing(60, clock=lambda: now[0])
    firing.seed([(0, orjson.dumps(alert("a"))), (1, orjson.dumps(alert("b"))),
                 (0, orjson.dumps(alert("c"))), (0, orjson.dumps(alert("c", "resolve"))),
                 (0, b"not json")])
    assert firing.keys() == {"a", "b"}
    assert [k for k, _ in firing.due({0})] == ["a"]  # seeded: due at once; b is partition 1
    assert firing.due({0}) == []
    now[0] += 61
    firing.settled(alert("d"), Outcome.DELIVERED, 0)
    assert [k for k, _ in firing.due({0, 1})] == ["a", "b"]  # d was just posted
    firing.settled(alert("a", "resolve"), Outcome.DELIVERED, 0)
    firing.settled(alert("e"), Outcome.REJECTED, 0)
    assert firing.keys() == {"b", "d"}


class FakeAlertmanager(LocalServer):
    """Alertmanager's v2 alerts API, as far as a client sees it: validates each posted
    alert as Alertmanager does, merges it by its label set, and says which are active."""

    LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.alerts: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, list):
            return web.json_response({"message": "expected a list"}, status=400)
        now = time.time()
        for a in body:
            labels = a.get("labels") or {}
            if not labels or not all(self.LABEL.fullmatch(k) and v for k, v in labels.items()):
                return web.json_response({"message": "invalid labels"}, status=400)
            starts = epoch(a["startsAt"]) if a.get("startsAt") else None
            ends = epoch(a["endsAt"]) if a.get("endsAt") else None
            if starts is not None and ends is not None and ends < starts:
                return web.json_response({"message": "start time must be before end time"},
                                         status=400)
            fp = tuple(sorted(labels.items()))
            self.alerts[fp] = {**a, "endsAt": ends if ends is not None else now + 300}
            self.posts.append({**a, "received": now})
        return web.Response(status=200)

    def active(self) -> set[str]:
        now = time.time()
        return {dict(fp)["dedup_key"] for fp, a in self.alerts.items() if a["endsAt"] > now}

    def posts_of(self, key: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["labels"].get("dedup_key") == key]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.handle)
        return app


def start_bridge(servers: str, config: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "bridge", *args, "--config", str(config)],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers}, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    text = out.decode(errors="replace")
    print(text)  # shown by pytest when the test fails
    return text


@pytest.mark.kafka
async def test_alertmanager_bridge_triggers_reposts_while_firing_and_resolves(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    cfg = test_config(prefix, {"bridges": {"runbooks": {"feature_drift": "https://rb/{class}"}}})
    topics = cfg["topics"]
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump(cfg))
    await ensure_topics(kafka_bootstrap, [topics["alerts"], topics["deadletter"]], 1)
    now = datetime.fromtimestamp(time.time()).astimezone().isoformat()
    async with FakeAlertmanager() as am:
        url = f"http://127.0.0.1:{am.port}"
        await produce(kafka_bootstrap, topics["alerts"],
                      [alert("drift:a", ts=now), alert("drift:b", ts=now)], key=b"m")
        proc = start_bridge(kafka_bootstrap, config, "alertmanager", "--url", url,
                            "--repost", "1")
        try:
            await poll(lambda: am.active() == {"drift:a", "drift:b"}, what="both triggered",
                       timeout=60)
            first = am.posts_of("drift:a")[0]
            assert first["annotations"]["runbook_url"] == "https://rb/feature_drift"
            assert epoch(first["endsAt"]) > time.time() + 2  # firing, with its own end
            await poll(lambda: len(am.posts_of("drift:a")) >= 3, what="re-posted", timeout=20)
            reposts = am.posts_of("drift:a")
            assert {p["startsAt"] for p in reposts} == {first["startsAt"]}  # one alert
            assert all(epoch(p["endsAt"]) > p["received"] for p in reposts)
            resolved_at = datetime.fromtimestamp(time.time()).astimezone().isoformat()
            await produce(kafka_bootstrap, topics["alerts"],
                          [alert("drift:a", "resolve", ts=resolved_at)], key=b"m")
            await poll(lambda: am.active() == {"drift:b"}, what="drift:a resolved", timeout=30)
            n, still = len(am.posts_of("drift:a")), len(am.posts_of("drift:b"))
            # two re-post rounds later (drift:b, still firing, re-posted twice), no re-post
            # of the resolved alert has brought it back
            await poll(lambda: len(am.posts_of("drift:b")) >= still + 2,
                       what="two more re-post rounds", timeout=30)
            assert len(am.posts_of("drift:a")) == n and am.active() == {"drift:b"}
        finally:
            out = stop(proc)
        assert "forwarding" in out, out
        # a restarted bridge knows what fires (from ml.alerts) and keeps it firing
        seen = len(am.posts_of("drift:b"))
        proc = start_bridge(kafka_bootstrap, config, "alertmanager", "--url", url,
                            "--repost", "1")
        try:
            await poll(lambda: len(am.posts_of("drift:b")) >= seen + 2,
                       what="drift:b re-posted after a restart", timeout=60)
            assert am.active() == {"drift:b"}
        finally:
            stop(proc)
