"""``sentinelle controller --web-port``: its /ready, /health and /metrics on a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from alerting.rollout import make_command
from streams.tools.broker import free_port
from tests.conftest import ROOT, test_config
from tests.kafka_io import produce
from tests.polling import poll
from tests.test_bridge_alertmanager import stop

pytestmark = pytest.mark.kafka


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def sample(page: bytes, name: str) -> float | None:
    for line in page.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def test_the_controller_is_ready_once_joined_and_counts_what_it_applies(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    cfg = test_config(f"t{uuid.uuid4().hex[:10]}")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "controller", "--state",
         str(tmp_path / "rollouts.json"), "--start", "pricing:p1:p2:5", "--web-port", str(port),
         "--config", str(config)],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await poll(lambda: get(port, "/health")[0] == 200, what="/health answers", timeout=30)
        await poll(lambda: get(port, "/ready")[0] == 200, what="/ready says ready", timeout=60)
        assert orjson.loads(get(port, "/ready")[1]) == {"ready": True, "waiting_for": []}
        gauge = ('sentinelle_controller_canary_traffic_percent{canary="p2",model="pricing",'
                 'phase="started",stable="p1"}')
        assert sample(get(port, "/metrics")[1], gauge) == 5
        await produce(kafka_bootstrap, cfg["topics"]["commands"],
                      [make_command("promote", "pricing", "p1", "p2", 5, "passed", 0.0,
                                    traffic_percent=25), {"not": "a command"}],
                      key=b"pricing")
        applied = 'sentinelle_controller_commands_total{action="promote",outcome="applied"}'
        invalid = 'sentinelle_controller_commands_total{action="unknown",outcome="invalid"}'
        # The invalid message is counted only after its dead letter is acknowledged, so a
        # few milliseconds after the promotion: wait for the second one too.
        await poll(lambda: sample(get(port, "/metrics")[1], invalid) is not None,
                   what="the invalid command counted", timeout=30)
        page = get(port, "/metrics")[1]
        assert sample(page, applied) == 1
        assert sample(page, invalid) == 1
        assert sample(page, gauge.replace("started", "step")) == 25
        assert sample(page, gauge) is None  # the rollout's old phase is gone
    finally:
        stop(proc)
