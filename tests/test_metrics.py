"""The worker's Prometheus metrics without a broker: what moves, what is read at
scrape time, and what leaves the page with a retired model."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock

import orjson
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from streams.config import Settings
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import ReferenceStore
from streams.runtime.metrics import StateCollector, make_metrics
from streams.runtime.shell import Lag, Publisher, StateWriter, Topics
from tests.test_shell import FakeTable

T0 = 1_795_000_000.0
SETTINGS = Settings(
    alerts={"keep_firing_for_s": 0},  # type: ignore[arg-type]
    limits={"max_future_s": 4e9},  # type: ignore[arg-type]
    windows={"size_s": 10, "allowed_lateness_s": 0, "max_lead_s": 4e9},  # type: ignore[arg-type]
    latency={"p99_threshold_ms": 300, "min_events": 5},  # type: ignore[arg-type]
    burn_rate={"enabled": False},  # type: ignore[arg-type]
    outage={"floor_s": 5, "k": 10, "min_arrivals": 1},  # type: ignore[arg-type]
    skew={"first_events": 1000, "window_events": 400,  # type: ignore[arg-type]
          "hop_events": 200, "bootstrap_draws": 200},
    worker={"idle_close_s": 30, "series_ttl_s": 100, "model_ttl_s": 1000},  # type: ignore[arg-type]
)


def page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def model_lines(registry: CollectorRegistry, model: str) -> list[str]:
    return [line for line in page(registry).splitlines() if f'model="{model}"' in line]


def watched() -> tuple[PredictionProcessor, CollectorRegistry]:
    references = ReferenceStore(SETTINGS.skew, SETTINGS.drift.baseline_factor,
                                SETTINGS.limits.max_profile_features,
                                SETTINGS.limits.max_profile_bins)
    p = PredictionProcessor(SETTINGS, "ml.predictions", references)
    registry = CollectorRegistry()
    make_metrics(registry, process=False)
    registry.register(StateCollector(lambda: p.monitors, lambda: [], clock=lambda: T0 + 700))
    return p, registry


def feed(p: PredictionProcessor, model: str, windows: int, shift_from: int, now: float,
         version: str = "v1", first: int = 0) -> Outbox:
    """``windows`` 10 s windows of 200 events, feature ``x`` shifted by 3 SD from
    ``shift_from`` on, the last window slow; one message (offset ``first + w``) per
    window ``first + w``."""
    rng = random.Random(1)
    box = Outbox()
    for w in range(windows):
        shift = 3.0 if w >= shift_from else 0.0
        evs = [{"event_id": f"{model}{w}-{i}", "ts": T0 + 10 * (first + w) + i * 0.05,
                "model": model,
                "version": version, "latency_ms": 900.0 if w == windows - 1 else 50.0,
                "features": {"x": rng.gauss(shift, 1)}, "prediction": rng.random()}
               for i in range(200)]
        box.merge(p.process([InMessage(orjson.dumps(evs), 0, first + w)], now=now))
    return box


def test_state_gauges_follow_the_monitors_and_leave_with_a_retired_model() -> None:
    p, registry = watched()
    box = feed(p, "m", 40, 20, now=100.0)
    assert ("trigger", "training_serving_skew:m:v1:x") in [
        (a["event_action"], k) for k, a in box.alerts]
    get = registry.get_sample_value
    assert get("sentinelle_models") == 1 and get("sentinelle_series") == 1
    series = {"model": "m", "version": "v1", "cohort": "stable"}
    assert get("sentinelle_window_latency_seconds", {**series, "quantile": "0.99"}) == \
        pytest.approx(0.05, rel=0.05)  # milliseconds on the wire, seconds here
    assert get("sentinelle_window_requests_per_second", series) == pytest.approx(20.0)
    assert get("sentinelle_window_error_ratio", series) == 0.0
    skew = {**series, "feature": "x", "check": "training_serving_skew", "statistic": "cusum"}
    statistic, threshold = (get(f"sentinelle_feature_{n}", skew) for n in ("statistic",
                                                                           "threshold"))
    assert statistic is not None and threshold is not None and statistic > threshold
    assert get("sentinelle_alerts_firing", {"class": "training_serving_skew",
                                            "severity": "warning"}) == 1
    wm = p.monitors["m"].windows.watermark
    assert get("sentinelle_event_time_delay_seconds", {"model": "m"}) == pytest.approx(
        T0 + 700 - wm)
    assert get("sentinelle_labels_total", {"model": "m", "outcome": "matched"}) == 0
    assert model_lines(registry, "m")

    gone = p.tick(100.0 + SETTINGS.worker.model_ttl_s + 1, [])
    assert gone.retired == ["m"]
    assert model_lines(registry, "m") == []  # every series of the model left the page
    assert get("sentinelle_models") == 0
    assert get("sentinelle_alerts_firing", {"class": "training_serving_skew",
                                            "severity": "warning"}) is None


def test_a_quiet_series_leaves_the_page_and_the_other_version_stays() -> None:
    p, registry = watched()
    feed(p, "m", 3, 99, now=0.0, version="v1")
    feed(p, "m", 3, 99, now=90.0, version="v2", first=3)
    versions = {line.split('version="')[1].split('"')[0]
                for line in model_lines(registry, "m") if "window_error_ratio" in line}
    assert versions == {"v1", "v2"}
    p.tick(101.0, [])  # v1 quiet for more than series_ttl_s (100 s), v2 not
    versions = {line.split('version="')[1].split('"')[0]
                for line in model_lines(registry, "m") if 'version="' in line}
    assert versions == {"v2"}


async def test_commands_are_counted_per_model_and_forgotten_when_it_retires() -> None:
    registry = CollectorRegistry()
    metrics = make_metrics(registry, process=False)
    writer = StateWriter(FakeTable(), "model-state", metrics, 100_000)
    publisher = Publisher(Topics(*(AsyncMock() for _ in range(5))), writer,
                          StateWriter(FakeTable(), "ops-state", metrics, 100_000), metrics,
                          1_000_000)
    command = {"action": "rollback", "command_id": "c1", "reason": "r"}
    await publisher.publish(Outbox(commands=[("pricing", command), ("ranker", command)],
                                   checkpoints=[(0, "pricing", {"kind": "model", "n": 1})]))
    get = registry.get_sample_value
    assert get("sentinelle_commands_total", {"action": "rollback", "model": "pricing"}) == 1
    assert (get("sentinelle_changelog_bytes_total", {"table": "model-state"}) or 0) > 0
    assert get("sentinelle_checkpoint_bytes_count", {"table": "model-state"}) == 1
    await publisher.publish(Outbox(retired=["pricing"]))
    assert get("sentinelle_commands_total", {"action": "rollback", "model": "pricing"}) is None
    assert get("sentinelle_commands_total", {"action": "rollback", "model": "ranker"}) == 1


async def test_consumer_lag_per_partition_from_what_the_agents_took() -> None:
    lag = Lag(SETTINGS)
    a0, a1, other = TP("ml.predictions", 0), TP("ml.predictions", 1), TP("x", 0)
    consumer = SimpleNamespace(assignment=lambda: {a0, a1, other},
                               highwater=lambda tp: {a0: 100, a1: 7, other: 5}[tp],
                               position=AsyncMock(return_value=3))
    lag.seen([SimpleNamespace(  # type: ignore[list-item]  # what Lag reads of an event
        message=SimpleNamespace(tp=a0, offset=89, timestamp=0.0))])
    assert await lag.lags(consumer, {"ml.predictions"}) == {("ml.predictions", 0): 10,
                                                            ("ml.predictions", 1): 4}
    metrics = make_metrics(CollectorRegistry(), process=False)
    metrics.set_lag({("ml.predictions", 0): 10, ("ml.predictions", 1): 4})
    metrics.set_lag({("ml.predictions", 1): 0})  # partition 0 revoked: it leaves the page
    get = metrics.registry.get_sample_value
    assert get("sentinelle_consumer_lag", {"topic": "ml.predictions", "partition": "0"}) is None
    assert get("sentinelle_consumer_lag", {"topic": "ml.predictions", "partition": "1"}) == 0


def test_the_default_collectors_and_build_info_are_kept() -> None:
    registry = CollectorRegistry()
    make_metrics(registry)
    text = page(registry)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "python_info", "python_gc_objects_collected_total", "sentinelle_build_info"):
        assert name in text, name


def test_every_counter_is_a_counter() -> None:
    p, registry = watched()
    feed(p, "m", 2, 99, now=0.0)
    kinds: dict[str, Any] = {m.name: m.type for m in registry.collect()}
    assert kinds["sentinelle_labels"] == "counter"
    for name, kind in kinds.items():
        if name.startswith("sentinelle_") and kind == "gauge":
            assert not name.endswith("_total"), name


def test_counters_with_known_labels_start_at_zero_so_rate_sees_the_first_burst() -> None:
    registry = CollectorRegistry()
    metrics = make_metrics(registry, process=False, inputs=["ml.predictions", "ml.feedback"])
    get = registry.get_sample_value
    for topic in ("ml.predictions", "ml.feedback"):
        assert get("sentinelle_events_total", {"topic": topic}) == 0
        assert get("sentinelle_messages_total", {"topic": topic}) == 0
    assert get("sentinelle_events_total", {"topic": "ml.metrics"}) is None  # not an input here
    assert get("sentinelle_alerts_total", {"class": "outage", "action": "trigger"}) == 0
    assert get("sentinelle_batch_seconds_count", {"agent": "operations"}) == 0
    assert get("sentinelle_changelog_bytes_total", {"table": "model-state"}) == 0
    metrics.events.labels("ml.predictions").inc(91)
    assert get("sentinelle_events_total", {"topic": "ml.predictions"}) == 91


def test_quota_use_against_its_limit_and_the_hours_left() -> None:
    import numpy as np

    from detectors.quota import QuotaForecast

    fc = QuotaForecast("team-ml", "gpu_hours", min_points=3)
    for hour in range(6):  # 10 GPU hours an hour, of a 200-hour limit
        fc.update({"ts": np.array([hour * 3600.0]), "pipeline": ["train"], "run_id": ["r1"],
                   "status": ["heartbeat"], "run_used": [10.0 * hour],
                   "used": [10.0 * hour], "limit": [200.0]})
    idle = QuotaForecast("idle", "gpu_hours")  # nothing reported yet: no series
    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: {}, lambda: [], pools=lambda: [fc, idle]))
    key = {"pool": "team-ml", "resource": "gpu_hours"}
    get = registry.get_sample_value
    assert get("sentinelle_quota_used", key) == 50.0
    assert get("sentinelle_quota_limit", key) == 200.0
    assert get("sentinelle_quota_hours_to_limit", key) == pytest.approx(15.0)  # 150 left
    assert get("sentinelle_quota_used", {"pool": "idle", "resource": "gpu_hours"}) is None
