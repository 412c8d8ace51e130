"""Production-shaped load through the real broker (a short run; ``bench/load.py`` runs two hours).

Ten models, half with a published profile, labels for half the predictions
five minutes later, one metrics source with twenty metrics, both wire forms,
hostile inputs and three incidents, 45 minutes of event time: the worker stays
up, every event is counted once in ``ml.stats``, every hostile input is
dead-lettered once with its reason, each incident triggers once and resolves
once, and no state record is over the bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from streams.cli.profile import publish_profile
from streams.config import load_settings
from streams.tools.loadtest import LoadPlan, check, produce, profiles
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.kafka

PLAN = LoadPlan(models=10, rate=10.0, hours=0.75, incident_at=0.15, metrics=20, seed=3)


async def test_a_worker_holds_up_under_production_shaped_load(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory({"worker": {"idle_close_s": 3.0}})
    settings = load_settings(w.config_path, w.servers)
    now = time.time()
    for profile in profiles(PLAN, created_at=now):
        await publish_profile(settings, profile)
    for i in range(0, PLAN.models, 2):
        await asyncio.to_thread(w.wait_for_log, f"reference profile for {PLAN.model(i)} v1", 60)
    produced = await produce(w.servers, w.topics, PLAN, start=now - PLAN.seconds - 60)
    report = await check(w.servers, w.topics, w.config["worker"]["app_id"], PLAN, produced,
                         settings.limits.max_record_bytes, timeout=240)
    assert w.proc is not None and w.proc.poll() is None, w.log()[-3000:]
    assert report.ok, report.problems
    assert sum(report.counted.values()) == sum(produced.events.values()) == 270_000
    assert produced.labels > 0.45 * 270_000 * (1 - 300 / PLAN.seconds)
    assert 0 < report.largest_record <= settings.limits.max_record_bytes
    assert "crash" not in w.log().lower()
