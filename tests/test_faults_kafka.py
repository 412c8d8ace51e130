"""Broker trouble and bad topics: a worker waits, says so, and goes on; or refuses to start.

- topics whose partition counts break co-partitioning stop the worker at start,
  with a message that says what to do (before it could file state under the
  wrong partition);
- a worker started before its broker waits for it (logging each try) instead of
  dying, then works;
- a broker that stops answering (SIGSTOP) makes the worker not ready
  (``/ready`` 503, the reason given) while its outputs wait, and ready again
  once the broker is back (SIGCONT), with nothing lost.

The last two run their own broker: stopping the shared one would stop every
other test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.tools.broker import EmbeddedBroker, free_port
from tests.conftest import ROOT, WorkerProcess, test_config
from tests.kafka_io import Collector, produce
from tests.polling import poll
from tests.test_worker_kafka import events

pytestmark = pytest.mark.kafka

WINDOW = 10.0


async def test_a_worker_refuses_topics_that_break_copartitioning(kafka_bootstrap: str,
                                                                 tmp_path: Path) -> None:
    cfg = test_config(f"t{uuid.uuid4().hex[:10]}", {"kafka": {"partitions": 4}})
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:  # the inputs were created by hand, with 2 partitions
        await admin.create_topics([NewTopic(cfg["topics"]["predictions"], 2, 1)])
    finally:
        await admin.close()
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "worker", "--config", str(path)],
        cwd=ROOT, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"topic '{cfg['topics']['predictions']}' has 2 partitions, kafka.partitions is 4" \
        in done.stderr
    assert "set kafka.partitions: N" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def own_broker_port() -> Iterator[int]:
    yield free_port()


def ready(port: int) -> tuple[int, dict[str, Any]]:
    """``/ready``'s status and body (status 0: nothing answers yet)."""
    try:
        reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", None, 5)
        return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except OSError:
        return 0, {}


async def until_ready_is(port: int, status: int, timeout: float) -> dict[str, Any]:
    """Poll ``/ready`` until it answers ``status`` (the condition awaited)."""
    answer = await poll(lambda: asyncio.to_thread(ready, port), lambda seen: seen[0] == status,
                        what=f"/ready answering {status}", timeout=timeout, every=0.25)
    return answer[1]


async def test_a_worker_waits_for_its_broker_and_rides_out_a_stopped_one(
        own_broker_port: int, tmp_path: Path) -> None:
    web = free_port()
    cfg = test_config(f"t{uuid.uuid4().hex[:10]}", {
        "windows": {"size_s": WINDOW, "allowed_lateness_s": 0},
        "worker": {"web_port": web, "idle_close_s": 3.0},
        "kafka": {"session_timeout_s": 30.0}})
    broker = EmbeddedBroker(port=own_broker_port)
    w = WorkerProcess(broker.bootstrap_servers, cfg, tmp_path, "w").start(wait=False)
    try:
        # 1. No broker yet: the worker waits and says so, it does not exit.
        w.wait_for_log("does not answer; trying again", 60)
        assert w.proc is not None and w.proc.poll() is None
        broker.start()
        w.wait_for_log("Worker]: Ready", 120)
        servers, topic = broker.bootstrap_servers, cfg["topics"]["predictions"]
        t0 = time.time() - 600
        async with Collector(servers, cfg["topics"]["stats"]) as stats:
            await produce(servers, topic, [events("m", t0, 20, 50.0),
                                           events("m", t0 + WINDOW, 20, 50.0)], key=b"m")
            await stats.until(lambda r: len(r) >= 1, timeout=90, what="the first window")
            await until_ready_is(web, 200, 60)
            # 2. The broker stops answering while window 2 is open; the worker's idle
            # close then has an output the broker neither takes nor refuses.
            broker.pause()
            try:
                body = await until_ready_is(web, 503, 60)
                assert "the broker does not acknowledge outputs" in body["waiting_for"]
            finally:
                broker.resume()
            await until_ready_is(web, 200, 120)
            await stats.until(lambda r: len(r) >= 2, timeout=120, what="the window closed "
                                                                       "while it was stopped")
            # 3. And it goes on.
            await produce(servers, topic, [events("m", t0 + 5 * WINDOW, 20, 50.0)], key=b"m")
            await stats.until(lambda r: sum(x["count"] for x in r) >= 60, timeout=120,
                              what="every event counted")
        assert w.proc.poll() is None, w.log()[-3000:]
        counted = [s["count"] for s in stats.records]
        assert sum(counted) == 60, counted  # each event once: none lost, none doubled
        assert "does not acknowledge outputs: not ready" in w.log()
    finally:
        w.stop()
        broker.stop()
