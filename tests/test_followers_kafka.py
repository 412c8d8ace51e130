"""The topics every worker follows whole (profiles, silences), against bad records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from alerting.manager import Silence
from detectors.profile import build_profile
from streams.cli.profile import publish_profile
from streams.cli.silences import add_silence
from streams.config import TopicSettings, load_settings
from streams.runtime.kafka import ensure_topics
from tests.conftest import WorkerProcess, test_config
from tests.kafka_io import Collector, produce
from tests.test_skew import training_frame
from tests.test_worker_kafka import WINDOW, events

pytestmark = pytest.mark.kafka


async def test_bad_profiles_are_dead_lettered_once_and_do_not_block_the_good_ones(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory({"limits": {"max_profile_features": 5}})
    topic = w.topics["references"]
    good = build_profile(training_frame().lazy(), "m", "v1", created_at=time.time())
    too_wide = {**good, "model": "wide", "features": {f"f{i}": good["features"]["amount"]
                                                      for i in range(6)}}
    bad_bins = {**good, "model": "bins", "features": {"amount": {
        "type": "numeric", "bins": ["a", "b"], "counts": [1], "missing_rate": 0}}}
    await produce(w.servers, topic, [b"{not json", orjson.dumps(too_wide),
                                     orjson.dumps(bad_bins), orjson.dumps([1, 2])],
                  key=b"bad:v1")
    settings = load_settings(w.config_path, w.servers)
    await publish_profile(settings, good)
    await asyncio.to_thread(w.wait_for_log, "reference profile for m v1", 60)
    async with Collector(w.servers, w.topics["deadletter"]) as dead:
        await dead.until(lambda r: len(r) >= 4, what="four dead profiles")
    reasons = sorted(d["reason"].split(":")[0] for d in dead.records if d["topic"] == topic)
    assert reasons == ["bad_value", "not_json", "not_object", "oversized"]
    assert w.log().count("reference profile for ") == 1  # read once, no loop from the start


async def test_a_restarted_worker_reads_the_silences_before_it_alerts(
        kafka_bootstrap: str, worker_factory: Callable[..., WorkerProcess]) -> None:
    """Seen: a restart paged straight through a maintenance silence."""
    cfg = {"windows": {"size_s": WINDOW, "allowed_lateness_s": 0},
           "latency": {"p99_threshold_ms": 300, "min_events": 10},
           "burn_rate": {"enabled": False}}
    prefix = f"t{time.time_ns() % 10**10}"
    settings = load_settings(None, kafka_bootstrap).model_copy(update={
        "topics": TopicSettings(**test_config(prefix)["topics"])})
    await ensure_topics(kafka_bootstrap, settings.topics.all(), 2,
                        compacted=settings.topics.compacted())
    for i in range(30):  # silences to read before the one that matters
        await add_silence(settings, {"model": f"other-{i}"}, 3600, "ops", "noise")
    await add_silence(settings, {"model": "quiet-please"}, 3600, "ops", "maintenance")
    now = time.time() - 120
    slow = [events(m, now, 30, 900.0) for m in ("quiet-please", "loud")]
    closer = [events(m, now + WINDOW, 1, 50.0) for m in ("quiet-please", "loud")]
    for model, batch, close in zip(("quiet-please", "loud"), slow, closer, strict=True):
        await produce(kafka_bootstrap, settings.topics.predictions, [batch + close],
                      key=model.encode())
    # The backlog is there before the worker starts: it must not judge it unsilenced.
    w = worker_factory({**cfg, "topics": settings.topics.model_dump(),
                        "worker": {"app_id": f"{prefix}-sentinelle"}})
    async with Collector(w.servers, settings.topics.alerts) as alerts:
        await alerts.until(lambda r: any(a["dedup_key"] == "latency_slo:loud:v1:p99"
                                         for a in r), what="the unsilenced model's alert")
    assert not any(a["payload"]["component"] == "quiet-please" for a in alerts.records)


async def test_an_alert_held_by_a_silence_stays_held_across_a_restart(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    """Seen: a restart paged straight through a maintenance silence (the restored alert
    was released by the first wall-clock tick, before the silences were read)."""
    w = worker_factory({"windows": {"size_s": WINDOW, "allowed_lateness_s": 0},
                        "latency": {"p99_threshold_ms": 300, "min_events": 10},
                        "burn_rate": {"enabled": False}, "alerts": {"keep_firing_for_s": 0}})
    settings = load_settings(w.config_path, w.servers)
    start = time.time()
    noise = [Silence(f"noise-{i}", {"model": f"other-{i}"}, start, start + 3600)
             for i in range(900)]  # enough silences that reading them takes a moment
    producer = AIOKafkaProducer(bootstrap_servers=w.servers)
    await producer.start()
    try:
        for sil in noise:
            await producer.send(settings.topics.silences, orjson.dumps(sil.to_dict()),
                                key=sil.id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    held = await add_silence(settings, {"model": "quiet-please"}, 3600, "ops", "maintenance")
    await asyncio.to_thread(w.wait_for_log, f"silence {held.id}", 60)
    now = time.time() - 300
    async with Collector(w.servers, settings.topics.alerts) as alerts:
        for model in ("quiet-please", "loud"):
            await produce(w.servers, settings.topics.predictions,
                          [events(model, now, 30, 900.0) + events(model, now + WINDOW, 1, 50.0)],
                          key=model.encode())
        await alerts.until(lambda r: any(a["dedup_key"] == "latency_slo:loud:v1:p99"
                                         for a in r), what="the unsilenced model's alert")
        changelog = f"{w.config['worker']['app_id']}-model-state-changelog"
        async with Collector(w.servers, changelog) as state:  # the held alert is checkpointed
            await state.until(lambda r: any(
                k == b'"quiet-please"' and v and "latency_slo:quiet-please:v1:p99"
                in v["alerts"]["alerts"] for k, v in zip(state.keys, r, strict=False)),
                what="the held alert in the changelog")
        w.stop()
        w.start()  # restores the held alert from the changelog
        await produce(w.servers, settings.topics.predictions,
                      [events("loud", now + 2 * WINDOW, 30, 50.0)
                       + events("loud", now + 3 * WINDOW, 1, 50.0)], key=b"loud")
        await alerts.until(lambda r: "resolve" in [a["event_action"] for a in r
                                                   if a["payload"]["component"] == "loud"],
                           what="the restarted worker at work")
    assert not any(a["payload"]["component"] == "quiet-please" for a in alerts.records)
