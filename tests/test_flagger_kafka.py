"""Flagger's webhooks on a worker's web port, on the real broker: a rollout first blocked by
a failed validation, then started, promoted with an approval, then rolled back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from alerting import flagger
from alerting.verdict import Verdicts
from detectors.contract import rfc3339
from streams.cli.rollout import approval
from streams.tools.broker import free_port
from tests.conftest import WorkerProcess
from tests.kafka_io import produce
from tests.polling import poll


def payload(phase: str = "Progressing", **metadata: str) -> dict[str, Any]:
    return {"name": "scorer", "namespace": "ml", "phase": phase, "checksum": "abc",
            "metadata": metadata}


def gate_alert(action: str, ts: float) -> dict[str, Any]:
    return {"event_action": action, "dedup_key": "validation_gate:fraud-scorer:v8",
            "payload": {"summary": "v8 validates worse", "source": "fraud-scorer@v8",
                        "severity": "error", "timestamp": rfc3339(ts),
                        "component": "fraud-scorer", "group": "validation",
                        "class": "validation_gate", "custom_details": {}}}


def test_targets_and_gates() -> None:
    v = Verdicts()
    assert flagger.target(payload(), {}, v) is None
    assert flagger.target(payload(model="m"), {}, v) == ("m", None)
    v.feed("deployments", {"model": "fraud-scorer", "stable_version": "v7",
                           "canary_version": "v8", "phase": "started", "ts": 1})
    assert flagger.target(payload(), {"ml/scorer": "fraud-scorer"}, v) == ("fraud-scorer", "v8")
    view = v.get("fraud-scorer", "v8")
    assert [flagger.answer(h, view)[0] for h in flagger.HOOKS] == [200, 200, 403, 409]


@pytest.mark.kafka
async def test_flagger_gates_through_validation_approval_and_rollback(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    w = worker_factory({"worker": {"web_port": port, "web_host": "127.0.0.1"},
                        "canary": {"flagger_models": {"ml/scorer": "fraud-scorer"}}})
    t, servers = w.topics, w.servers
    base = f"http://127.0.0.1:{port}/v1/flagger"
    now = time.time()

    async with aiohttp.ClientSession() as session:
        async def hook(name: str, body: Any) -> tuple[int, dict[str, Any]]:
            async with session.post(f"{base}/{name}", json=body) as resp:
                return resp.status, await resp.json()

        async def until(name: str, body: Any, status: int, timeout: float = 30) -> None:
            await poll(lambda: hook(name, body), lambda got: got[0] == status,
                       what=f"{name} answering {status}", timeout=timeout)

        unknown = {**payload(), "name": "other"}
        assert (await hook("confirm-rollout", unknown))[0] == 400  # no model anywhere
        assert (await hook("promote", payload(model="m")))[0] == 404
        v8 = payload(version="v8")  # the model from canary.flagger_models
        # the validation gate failed v8: it may not start
        await produce(servers, t["alerts"], [gate_alert("trigger", now)], key=b"fraud-scorer")
        await produce(servers, t["commands"], [{
            "command_id": "pause:fraud-scorer:v8:validation", "action": "pause",
            "model": "fraud-scorer", "from_version": "v8", "to_version": "v7",
            "reason": "v8 validates worse", "alert_dedup_keys": [], "requires_approval": False,
            "issued_at": rfc3339(now)}], key=b"fraud-scorer")
        await until("confirm-rollout", v8, 403)
        # The gate's alert alone answers 403; the pause, read by another consumer, must be
        # in too before the rollout starts (a later `started` resets the verdict).
        await until("rollout", v8, 409)
        # a fixed v8 validates, and its rollout starts
        await produce(servers, t["alerts"], [gate_alert("resolve", now + 1)],
                      key=b"fraud-scorer")
        await produce(servers, t["deployments"], [{
            "model": "fraud-scorer", "stable_version": "v7", "canary_version": "v8",
            "phase": "started", "traffic_percent": 5, "ts": rfc3339(now + 2)}],
            key=b"fraud-scorer")
        await until("confirm-rollout", v8, 200)
        assert (await hook("rollout", v8))[0] == 200
        status, body = await hook("confirm-promotion", v8)
        assert status == 403 and "approve" in body["why"]
        assert (await hook("rollback", v8))[0] == 409
        # a person approves: the promotion gate opens
        await produce(servers, t["approvals"], [approval("fraud-scorer", "v8", "ana")],
                      key=b"fraud-scorer")
        await until("confirm-promotion", v8, 200)
        # then a rollback is decided (Sentinelle's, or `sentinelle rollout fail`)
        await produce(servers, t["commands"], [{
            "command_id": "rollback:fraud-scorer:v8:50", "action": "rollback",
            "model": "fraud-scorer", "from_version": "v8", "to_version": "v7",
            "reason": "canary v8 error rate 4.1% vs 0.4%", "alert_dedup_keys": [],
            "requires_approval": False, "issued_at": rfc3339(time.time() + 3)}],
            key=b"fraud-scorer")
        await until("rollback", v8, 200)
        status, body = await hook("rollout", v8)
        assert status == 409 and "rollback:fraud-scorer:v8:50" in body["why"]
        assert (await hook("confirm-promotion", v8))[0] == 403
        # the version named by metadata.model/version, without the mapping
        assert (await hook("rollback", payload(model="fraud-scorer", version="v8")))[0] == 200
