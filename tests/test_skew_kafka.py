"""Training/serving skew end to end: publish a profile, send skewed events, get alerts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from detectors.profile import build_profile
from streams.cli.profile import publish_profile
from streams.config import load_settings
from tests.conftest import WorkerProcess
from tests.kafka_io import Collector, produce
from tests.test_skew import serving, training_frame

pytestmark = pytest.mark.kafka


async def test_published_profile_skewed_traffic_triggers_then_resolves(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    w = worker_factory({"skew": {"window_events": 400, "hop_events": 100,
                                 "run_length_events": 1_000_000},
                        "alerts": {"keep_firing_for_s": 0}})
    settings = load_settings(w.config_path, w.servers)
    profile = build_profile(training_frame().lazy(), "m", "v1", created_at=time.time())
    await publish_profile(settings, profile)
    await asyncio.to_thread(w.wait_for_log, "reference profile for m v1", 60)
    key = "training_serving_skew:m:v1:amount"
    t0 = time.time() - 600
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        for start, shift, seed in ((t0, 1.0, 1), (t0 + 20, 3.0, 2), (t0 + 40, 1.0, 3)):
            evs = serving(1000, start, seed=seed, shift=shift)
            await produce(w.servers, w.topics["predictions"],
                          [evs[i:i + 100] for i in range(0, len(evs), 100)], key=b"m")
        await alerts.until(lambda r: [a["event_action"] for a in r if a["dedup_key"] == key]
                           == ["trigger", "resolve"], what="skew trigger then resolve")
    trigger = next(a for a in alerts.records if a["dedup_key"] == key)
    details = trigger["payload"]["custom_details"]
    assert trigger["payload"]["class"] == "training_serving_skew"
    assert details["feature"] == "amount" and details["value"] > details["threshold"]
    # the sequential test's evidence: the moved bins, and the windowed calibration beside it
    assert details["largest_moves"] and details["calibration"]["window"]["window_events"] == 400
    assert details["events_since_change_start"] > 0
    assert orjson.dumps(trigger)  # the evidence is plain JSON


async def test_feedback_is_joined_and_a_worse_model_raises_performance_degradation(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    from tests.test_labels import scored

    w = worker_factory({"labels": {"window": 100, "estimate": False},
                        "skew": {"enabled": False}, "drift": {"enabled": False},
                        "quality": {"enabled": False}, "alerts": {"keep_firing_for_s": 0}})
    key = "performance_degradation:m:v1:accuracy"
    t0 = time.time() - 600
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        for phase, skill in enumerate((0.95, 0.95, 0.5)):
            y, p = scored(100, seed=phase, skill=skill)
            ids = [f"p{phase}-{i}" for i in range(100)]
            preds = [{"event_id": e, "ts": t0 + phase * 10 + i * 0.01, "model": "m",
                      "version": "v1", "latency_ms": 4.0, "prediction": float(pi)}
                     for i, (e, pi) in enumerate(zip(ids, p, strict=True))]
            labels = [{"event_id": e, "ts": t0 + phase * 10 + 5, "model": "m", "version": "v1",
                       "label": int(yi)} for e, yi in zip(ids, y, strict=True)]
            await produce(w.servers, w.topics["predictions"], [preds], key=b"m")
            await produce(w.servers, w.topics["feedback"], [labels], key=b"m")
        await alerts.until(lambda r: any(a["dedup_key"] == key for a in r),
                           what="performance_degradation")
    alert = next(a for a in alerts.records if a["dedup_key"] == key)
    details = alert["payload"]["custom_details"]
    # No profile was published: the first window of labels is the reference.
    assert details["reference_source"] == "first_window" and details["reference"] > 0.9
    assert details["value"] < 0.7 and alert["payload"]["class"] == "performance_degradation"
