"""The canary loop on the real broker: simulator -> worker -> command -> controller ->
ml.deployments -> simulator and worker -> next analysis, across a worker restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from streams.cli.rollout import approval
from streams.tools.controller import run_controller
from streams.tools.simulate import SCENARIOS, run
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce

pytestmark = pytest.mark.kafka


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["command_id"] for r in records]


@contextlib.asynccontextmanager
async def canary_traffic(servers: str, topics: dict[str, str], app_id: str,
                         state: Path) -> AsyncIterator[None]:
    """The canary scenario's traffic (400 events/s) and the reference controller, for the
    block's duration; both stopped on the way out."""
    stop = asyncio.Event()
    scenario = SCENARIOS["canary"]
    controller = asyncio.create_task(run_controller(
        servers, topics["commands"], topics["deployments"], state, f"{app_id}-controller",
        list(scenario.rollouts), stop=stop))
    sim = asyncio.create_task(run(servers, topics["predictions"], scenario, rate=400,
                                  duration_s=300, deployments_topic=topics["deployments"]))
    try:
        yield
    finally:
        stop.set()
        sim.cancel()
        for task in (sim, controller):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_bad_canary_rolled_back_good_one_promoted_with_approval_across_a_restart(
        worker_factory: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    w = worker_factory({
        "windows": {"size_s": 3, "allowed_lateness_s": 0.5},
        # 5 % of 400 events/s: ~60 canary requests per 3 s window
        "canary": {"min_requests": 30, "pass_windows": 2, "fail_windows": 2, "cooldown_s": 3,
                   "approval_above": 25},
        "skew": {"enabled": False}, "drift": {"enabled": False},
        "quality": {"enabled": False}, "labels": {"enabled": False},
        "burn_rate": {"enabled": False}, "outage": {"floor_s": 60},
    })
    t = w.topics
    async with canary_traffic(w.servers, t, w.config["worker"]["app_id"],
                              tmp_path / "rollouts.json"):
        async with Collector(w.servers, t["commands"]) as commands, \
                Collector(w.servers, t["deployments"]) as deployments, \
                Collector(w.servers, t["alerts"]) as alerts:
            await commands.until(lambda r: {"rollback:pricing:p2:5", "promote:ranker:r6:25"}
                                 <= set(ids(r)), timeout=90, what="rollback and first promote")
            # the controller applied both and said so; the worker learns the new step
            await deployments.until(lambda r: any(
                d["model"] == "ranker" and d.get("command_id") == "promote:ranker:r6:25"
                for d in r), what="ranker at 25 %")
            await alerts.until(lambda r: [a["event_action"] for a in r if a["dedup_key"] ==
                                          "canary_regression:pricing:p2"] == ["trigger", "resolve"],
                               what="canary_regression trigger, then resolve on rollback")

            # the worker restarts mid-rollout: its rollout state comes back from the changelog
            await asyncio.to_thread(w.stop)
            await asyncio.to_thread(w.start)

            wait = "promote:ranker:r6:50:awaiting-approval"
            await commands.until(lambda r: wait in ids(r), timeout=90, what="approval request")
            await produce(w.servers, t["approvals"], [approval("ranker", "r6", "ana")],
                          key=b"ranker")
            await commands.until(lambda r: "promote:ranker:r6:50" in ids(r),
                                 what="approved promote")
            # the next analysis runs at 50 % and asks for the last step
            await commands.until(lambda r: "promote:ranker:r6:100:awaiting-approval" in ids(r),
                                 timeout=60, what="analysis at 50 %")
    seen = Counter(ids(commands.records))
    assert [c for c, n in seen.items() if n > 1] == []  # no command twice, restart or not
    assert [c for c in seen if c.startswith("rollback")] == ["rollback:pricing:p2:5"]
    rollback = next(c for c in commands.records if c["action"] == "rollback")
    assert rollback["alert_dedup_keys"] == ["canary_regression:pricing:p2"]
    assert "error rate" in rollback["reason"] and rollback["to_version"] == "p1"
    step50 = next(d for d in deployments.records if d.get("command_id") == "promote:ranker:r6:50")
    assert step50["weights"] == {"r5": 50, "r6": 50}
