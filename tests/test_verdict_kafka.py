"""``sentinelle verdict wait`` on the real broker: a worker judges two canaries (the
simulator's ``canary`` scenario, the reference controller applying the commands), and
three waiting jobs exit 1 (rolled back), 0 (promoted to 100 %) and 2 (no verdict)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from alerting.verdict import Verdicts
from tests.conftest import ROOT, WorkerProcess
from tests.test_rollout_kafka import canary_traffic

CANARY = {
    "windows": {"size_s": 3, "allowed_lateness_s": 0.5},
    "canary": {"min_requests": 30, "pass_windows": 2, "fail_windows": 2, "cooldown_s": 3,
               "approval_above": 100},
    "skew": {"enabled": False}, "drift": {"enabled": False},
    "quality": {"enabled": False}, "labels": {"enabled": False},
    "burn_rate": {"enabled": False}, "outage": {"floor_s": 60},
}


def test_verdicts_fold() -> None:
    v = Verdicts()
    v.feed_all([
        ("commands", {"action": "promote", "model": "m", "from_version": "v2",
                      "to_version": "v2", "traffic_percent": 25, "issued_at": 30}),
        ("deployments", {"model": "m", "stable_version": "v1", "canary_version": "v2",
                         "phase": "started", "traffic_percent": 5, "ts": 10}),
        ("alerts", {"event_action": "trigger", "dedup_key": "k",
                    "payload": {"component": "m", "source": "m@v2", "timestamp": 31}}),
    ])
    view = v.get("m", "v2")
    assert view is not None and (view.verdict, view.traffic_percent) == ("pending", 25)
    assert list(view.alerts) == ["k"]
    v.feed("commands", {"action": "promote", "model": "m", "from_version": "v2",
                        "to_version": "v2", "traffic_percent": 100, "issued_at": 50,
                        "requires_approval": True})
    assert view.verdict == "pending"  # waiting for an approval is not a verdict
    v.feed("deployments", {"model": "m", "stable_version": "v2", "canary_version": "v2",
                           "phase": "promoted", "ts": 60})
    assert view.verdict == "pass"
    v.feed("deployments", {"model": "m", "stable_version": "v2", "canary_version": "v3",
                           "phase": "started", "traffic_percent": 5, "ts": 70})
    v.feed("deployments", {"model": "m", "stable_version": "v2", "canary_version": "v4",
                           "phase": "started", "traffic_percent": 5, "ts": 80})
    assert [v.get("m", x).verdict for x in ("v2", "v3", "v4")] == \
        ["pass", "inconclusive", "pending"]  # type: ignore[union-attr]
    v.feed("commands", {"action": "rollback", "model": "m", "from_version": "v4",
                        "to_version": "v2", "issued_at": 90})
    v.feed("deployments", {"model": "m", "stable_version": "v2", "canary_version": "v4",
                           "phase": "step", "traffic_percent": 5, "ts": 85})  # older
    assert v.get("m", "v4").verdict == "fail"  # type: ignore[union-attr]
    v.feed("deployments", {"model": "m", "stable_version": "v2", "canary_version": "v4",
                           "phase": "started", "traffic_percent": 5, "ts": 95})
    assert v.get("m", "v4").verdict == "pending"  # type: ignore[union-attr]  # rolled out again


async def verdict_job(servers: str, config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "verdict", "wait", *args, "--config", str(config),
        cwd=ROOT, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode(errors="replace")


@pytest.mark.kafka
async def test_verdict_wait_exits_with_the_canary_verdict(
        worker_factory: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    w = worker_factory(CANARY)
    t = w.topics
    async with canary_traffic(w.servers, t, w.config["worker"]["app_id"],
                              tmp_path / "rollouts.json"):
        bad, good, none = await asyncio.wait_for(asyncio.gather(
            verdict_job(w.servers, w.config_path, "pricing", "p2", "--timeout", "150"),
            verdict_job(w.servers, w.config_path, "ranker", "r6", "--timeout", "150",
                        "--json"),
            verdict_job(w.servers, w.config_path, "ranker", "r9", "--timeout", "3")), 200)
    assert bad[0] == 1 and "pricing p2: fail (rollback:pricing:p2:5" in bad[1], bad
    assert good[0] == 0, good
    view = orjson.loads(good[1].strip().splitlines()[-1])
    assert view["verdict"] == "pass" and view["traffic_percent"] == 100
    assert view["command"]["command_id"] == "promote:ranker:r6:100"
    assert none[0] == 2 and "ranker r9: no verdict (timed out)" in none[1], none
