"""Against a broker that requires SASL: a worker, the CLI, a bridge and the controller
get in with their own principals and mechanisms; clients without credentials, or with
wrong ones, are refused at once, with a clear error.

The broker is Tansu behind a SASL gateway (tests/security_gateway.py says why: the
Tansu binary requires authentication but cannot authenticate anyone), plus Tansu's own
``--authentication`` for the refusals.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from alerting.bridge_service import http_poster, run_bridge
from streams.config import KafkaSecuritySettings, load_settings
from streams.runtime.kafka import client_options, ensure_topics
from streams.tools.broker import EmbeddedBroker
from streams.tools.controller import run_controller
from tests.conftest import ROOT, WorkerProcess, test_config
from tests.security_gateway import GatewayedBroker, SaslGateway
from tests.test_bridge import FakeEndpoint
from tests.test_worker_kafka import T0, WINDOW, WINDOW_CFG, events

pytestmark = pytest.mark.kafka

USERS = {"worker": "worker-pw-3f9a", "ops": "ops-pw-77c1", "bridge": "bridge-pw-0d2e",
         "controller": "controller-pw-5b8c"}


@pytest.fixture(scope="module")
def gateway() -> Iterator[SaslGateway]:
    gw = SaslGateway(USERS)
    broker = GatewayedBroker(gw.port).start()
    try:
        yield gw.start((broker.host, broker.port))
    finally:
        gw.stop()
        broker.stop()


class TansuAuthenticating(EmbeddedBroker):
    """Tansu's own ``--authentication``: a client must authenticate before anything else."""

    def command(self) -> list[str]:
        return [*super().command(), "--authentication"]


def security(user: str, mechanism: str, source: str, where: str) -> dict[str, Any]:
    """SASL_PLAINTEXT as ``user``, the password from ``source`` (password_env or
    password_file) ``where``."""
    return {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism, "username": user,
            source: where}


async def cli(*args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> tuple[int, str]:
    """``sentinelle ARGS`` in a child process: (exit status, stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def read_until(servers: str, topic: str, options: dict[str, Any],
                     done: Callable[[list[Any]], bool], timeout: float = 90) -> list[Any]:
    """Records of ``topic`` from its start, until ``done`` says enough."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest", **options)
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            async for msg in consumer:
                out.append(orjson.loads(msg.value or b"null"))
                if done(out):
                    return out
    finally:
        await consumer.stop()
    return out


async def test_worker_cli_bridge_and_controller_each_get_in_with_their_credentials(
        gateway: SaslGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers = gateway.bootstrap_servers
    prefix = f"t{uuid.uuid4().hex[:10]}"
    # the worker: SCRAM-SHA-512, its password in the environment (inherited by the process)
    monkeypatch.setenv("SENTINELLE_TEST_WORKER_PW", USERS["worker"])
    worker_cfg = test_config(prefix, {**WINDOW_CFG, "kafka": {
        "partitions": 2,
        "security": security("worker", "SCRAM-SHA-512", "password_env",
                             "SENTINELLE_TEST_WORKER_PW"),
    }})
    worker = WorkerProcess(servers, worker_cfg, tmp_path)
    # a person at the CLI: SCRAM-SHA-256, the password in a file
    pw_file = tmp_path / "ops.password"
    pw_file.write_text(USERS["ops"] + "\n")
    ops_cfg = {**worker_cfg, "kafka": {"partitions": 2, "security": security(
        "ops", "SCRAM-SHA-256", "password_file", str(pw_file))}}
    ops_path = tmp_path / "ops.yaml"
    ops_path.write_text(yaml.safe_dump(ops_cfg))
    ops = load_settings(ops_path, servers)
    topics = worker_cfg["topics"]
    try:
        worker.start()
        assert gateway.principals["worker"] > 0
        # the CLI: a silence (ensure_topics, a producer), then read back (a consumer)
        status, out = await cli("silence", "add", "--config", str(ops_path),
                                "--bootstrap-servers", servers, "--match", "model=other-*",
                                "--for", "1h", "--comment", "maintenance")
        assert status == 0, out
        status, out = await cli("silence", "list", "--config", str(ops_path),
                                "--bootstrap-servers", servers)
        assert status == 0 and "'model': 'other-*'" in out, out
        # traffic (as ops): three slow windows, then one event that closes the last
        producer = AIOKafkaProducer(bootstrap_servers=servers, **client_options(ops))
        await producer.start()
        try:
            for i in range(3):
                batch = events("fraud-scorer", T0 + i * WINDOW, 40, 900.0, seed=i)
                await producer.send_and_wait(topics["predictions"], orjson.dumps(batch),
                                             key=b"fraud-scorer")
            closing = events("fraud-scorer", T0 + 3 * WINDOW, 1, 50.0)[0]
            await producer.send_and_wait(topics["predictions"], orjson.dumps(closing),
                                         key=b"fraud-scorer")
        finally:
            await producer.stop()
        key = "latency_slo:fraud-scorer:v1:p99"
        await read_until(servers, topics["alerts"], client_options(ops),
                         lambda recs: any(r["dedup_key"] == key for r in recs))
        status, out = await cli("alerts", "--config", str(ops_path), "--bootstrap-servers",
                                servers)
        assert status == 0 and key in out, out
        # a bridge: PLAIN, password in the environment
        monkeypatch.setenv("SENTINELLE_TEST_BRIDGE_PW", USERS["bridge"])
        bridge = KafkaSecuritySettings(**security("bridge", "PLAIN", "password_env",
                                                  "SENTINELLE_TEST_BRIDGE_PW"))
        async with FakeEndpoint({}) as endpoint, aiohttp.ClientSession() as session:
            task = asyncio.create_task(run_bridge(
                servers, topics["alerts"], topics["deadletter"], f"{prefix}-bridge",
                http_poster(session, endpoint.url), lambda alert: alert, rate=100,
                options=client_options(bridge)))
            await endpoint.until(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert endpoint.received[0][0]["dedup_key"] == key
        # the reference controller: SCRAM-SHA-512
        monkeypatch.setenv("SENTINELLE_TEST_CONTROLLER_PW", USERS["controller"])
        controller = KafkaSecuritySettings(**security("controller", "SCRAM-SHA-512", "password_env",
                                                      "SENTINELLE_TEST_CONTROLLER_PW"))
        announced: list[dict[str, Any]] = []
        stop = asyncio.Event()

        def on_record(rec: dict[str, Any]) -> None:
            announced.append(rec)
            stop.set()

        await run_controller(servers, topics["commands"], topics["deployments"],
                             tmp_path / "rollouts.json", f"{prefix}-controller",
                             [("pricing", "p1", "p2", 5)], on_record=on_record, stop=stop,
                             options=client_options(controller))
        assert announced[0]["phase"] == "started"
        deployments = await read_until(servers, topics["deployments"], client_options(ops),
                                       lambda recs: len(recs) >= 1)
        assert deployments[0]["model"] == "pricing"
    finally:
        worker.stop()
    assert {"worker", "ops", "bridge", "controller"} <= set(gateway.principals)
    for password in USERS.values():
        assert password not in worker.log()


async def test_clients_without_or_with_wrong_credentials_are_refused_at_once(
        gateway: SaslGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers = gateway.bootstrap_servers
    refusals = [{}, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                     "sasl_plain_username": "ops", "sasl_plain_password": "wrong"},
                {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                 "sasl_plain_username": "nobody", "sasl_plain_password": "x"}]
    for options in refusals:
        producer = AIOKafkaProducer(bootstrap_servers=servers, **options)
        began = time.monotonic()
        with pytest.raises(KafkaConnectionError):
            await producer.start()
        await producer.stop()
        assert time.monotonic() - began < 10
    assert gateway.refused["unauthenticated"] >= 1 and gateway.refused["credentials"] >= 1
    # the CLI without credentials: a reading command, and one that creates topics first
    prefix = f"t{uuid.uuid4().hex[:10]}"
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(test_config(prefix)))
    for args in (["alerts"], ["silence", "add", "--match", "model=m", "--for", "1h"]):
        began = time.monotonic()
        status, out = await cli(*args, "--config", str(plain), "--bootstrap-servers", servers)
        assert status == 2, out
        assert "sentinelle: Kafka:" in out and "kafka.security" in out, out
        assert "Traceback" not in out and time.monotonic() - began < 30
    # a worker with a wrong password stops at once, saying why
    monkeypatch.setenv("SENTINELLE_TEST_WORKER_PW", "not-the-password")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(test_config(prefix, {"kafka": {"security": security(
        "worker", "SCRAM-SHA-512", "password_env", "SENTINELLE_TEST_WORKER_PW")}})))
    status, out = await cli("worker", "--config", str(wrong), "--bootstrap-servers", servers)
    assert status == 2 and "sentinelle: Kafka:" in out, out
    assert "not-the-password" not in out


async def test_tansu_itself_refuses_a_client_that_does_not_authenticate(
        tmp_path: Path) -> None:
    with TansuAuthenticating() as broker:
        began = time.monotonic()
        with pytest.raises(KafkaConnectionError):
            await ensure_topics(broker.bootstrap_servers, ["x"], 1)
        assert time.monotonic() - began < 10  # refused, not retried until the timeout
