"""The alert manager in the worker, on a real broker: silences and flapping."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from streams.cli.silences import add_silence
from streams.config import load_settings
from tests.conftest import ROOT, WorkerProcess
from tests.kafka_io import Collector, produce
from tests.test_worker_kafka import T0, WINDOW, WINDOW_CFG, events, of_key

pytestmark = pytest.mark.kafka

KEY = "latency_slo:m:v1:p99"


async def test_a_silence_holds_a_trigger_back_and_its_expiry_releases_it(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory(WINDOW_CFG)
    # 20 s: long enough that a slow run's three windows close inside it (the trigger is
    # then seen held back), short enough for the test to wait for its end
    settings = load_settings(w.config_path, w.servers)
    silence = await add_silence(settings, {"model": "m", "class": "latency_slo"}, 20.0,
                                created_by="test", comment="deploying")
    await asyncio.to_thread(w.wait_for_log, f"silence {silence.id}", 30)
    async with Collector(w.servers, w.topics["alerts"]) as alerts, \
            Collector(w.servers, w.topics["stats"]) as stats:
        for i in range(4):  # three slow windows close; the fourth stays open
            await produce(w.servers, w.topics["predictions"],
                          [events("m", T0 + i * WINDOW, 30, 900.0, seed=i)], key=b"m")
        await stats.until(lambda r: len(r) >= 3, what="the slow windows")
        held = of_key(alerts.records, KEY)
        await alerts.until(lambda r: "trigger" in of_key(r, KEY), timeout=45,
                           what="the trigger, once the silence ends")
        released = time.time()
    assert held == []  # evaluated (three windows closed) but held back
    assert released >= silence.ends_at
    # `sentinelle alerts` lists it as firing.
    out = subprocess.run([sys.executable, "-m", "streams.cli", "alerts", "--config",
                          str(w.config_path)], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={"KAFKA_BOOTSTRAP_SERVERS": w.servers,
                                        "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and KEY in out.stdout, out.stderr


async def test_a_flapping_signal_gives_one_trigger_and_one_final_resolve(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    # Strict flap control: an alert that clears within 2 minutes of firing is flapping.
    w = worker_factory({**WINDOW_CFG, "alerts": {"hysteresis": 0, "flap_window_s": 120,
                                                 "flap_changes": 2, "flap_hold_s": 30,
                                                 "keep_firing_for_s": 30}})
    plan = [900.0, 60.0] * 4 + [60.0] * 5  # slow/fast 4 times, then steady
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        for i, latency in enumerate(plan + [60.0]):
            await produce(w.servers, w.topics["predictions"],
                          [events("m", T0 + i * WINDOW, 30, latency, seed=i)], key=b"m")
        await alerts.until(lambda r: "resolve" in of_key(r, KEY), what="the final resolve")
    assert of_key(alerts.records, KEY) == ["trigger", "resolve"]
    resolve = [a for a in alerts.records if a["dedup_key"] == KEY][-1]
    assert resolve["payload"]["custom_details"]["flapping"] is True


async def test_silences_are_listed_and_expired(kafka_bootstrap: str) -> None:
    import uuid

    from streams.cli.silences import expire_silence, read_silences
    from streams.config import Settings

    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(topics={"silences": f"{prefix}.ml.silences"},  # type: ignore[arg-type]
                        kafka={"partitions": 1}).with_bootstrap(kafka_bootstrap)
    s = await add_silence(settings, {"model": "fraud-*"}, 3600, "alice", "migration")
    listed = await read_silences(settings)
    assert listed[s.id].matchers == {"model": "fraud-*"} and listed[s.id].ends_at > time.time()
    ended = await expire_silence(settings, s.id)
    assert ended.ends_at <= time.time()
    assert (await read_silences(settings))[s.id].ends_at == ended.ends_at
    with pytest.raises(ValueError, match="no silence"):
        await expire_silence(settings, "nope")
