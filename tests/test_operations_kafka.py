"""Pipelines, quotas, validation and metrics end to end, on the real broker.

One worker serves the whole module (a worker costs seconds to join its group);
each test uses its own pipeline, pool or source names, so they do not meet.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.cli.quota import estimate
from streams.config import load_settings
from tests.conftest import WorkerProcess, test_config
from tests.kafka_io import Collector, produce

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[WorkerProcess]:
    cfg = test_config(f"t{uuid.uuid4().hex[:10]}", {
        "pipelines": {"stall_floor_s": 2, "stall_min_runs": 2, "stall_ceiling_s": 60,
                      "duration_min_runs": 5},
        "quota": {"window_s": 600, "horizon_s": 3600},
    })
    w = WorkerProcess(kafka_bootstrap, cfg, tmp_path_factory.mktemp("ops"))
    w.start()
    yield w
    w.stop()


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def run_event(pipeline: str, run_id: str, status: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"{run_id}-{status}-{ts}", "ts": ts, "pipeline": pipeline,
            "kind": kw.pop("kind", "training"), "run_id": run_id, "status": status, **kw}


def actions(records: list[dict[str, Any]], key: str) -> list[str]:
    return [a["event_action"] for a in records if a["dedup_key"] == key]


async def send(w: WorkerProcess, pipeline: str, events: list[dict[str, Any]]) -> None:
    await produce(w.servers, w.topics["pipeline"], events, key=pipeline.encode())


async def test_pipeline_failure_triggers_escalates_and_resolves(worker: WorkerProcess) -> None:
    p, t0 = name("train"), time.time() - 600
    key = f"pipeline_failure:{p}"
    async with Collector(worker.servers, worker.topics["alerts"]) as alerts:
        await send(worker, p, [run_event(p, "r1", "failed", t0, error="CUDA OOM"),
                               run_event(p, "r2", "failed", t0 + 10)])
        await alerts.until(lambda r: actions(r, key) == ["trigger"], what="failure")
        await send(worker, p, [run_event(p, "r3", "succeeded", t0 + 20, duration_s=5)])
        await alerts.until(lambda r: actions(r, key) == ["trigger", "resolve"], what="resolve")
    trigger = next(a for a in alerts.records if a["dedup_key"] == key)
    assert trigger["payload"]["group"] == "training" and "CUDA OOM" in trigger["payload"]["summary"]


async def test_a_silent_run_is_stalled_by_wall_clock_and_resolved_by_its_heartbeat(
        worker: WorkerProcess) -> None:
    p, now = name("etl"), time.time()
    key = f"pipeline_stalled:{p}:live"
    async with Collector(worker.servers, worker.topics["alerts"]) as alerts:
        # two past runs of 2 s: a run may stay silent 3 s
        await send(worker, p, [run_event(p, f"r{i}", "succeeded", now - 100 + i, duration_s=2)
                               for i in range(2)] + [run_event(p, "live", "started", now)])
        await alerts.until(lambda r: actions(r, key) == ["trigger"], timeout=30, what="stall")
        await send(worker, p, [run_event(p, "live", "heartbeat", time.time()),
                               run_event(p, "live", "succeeded", time.time())])
        await alerts.until(lambda r: actions(r, key) == ["trigger", "resolve"], what="resolve")
    trigger = next(a for a in alerts.records if a["dedup_key"] == key)
    assert trigger["payload"]["custom_details"]["expected_s"] == 3


async def test_an_anomalous_duration_after_warm_up_triggers_then_a_normal_run_resolves(
        worker: WorkerProcess) -> None:
    p, t0 = name("nightly"), time.time() - 100_000
    key = f"pipeline_duration_anomaly:{p}"
    rng = np.random.default_rng(1)
    normal = [run_event(p, f"r{i}", "succeeded", t0 + i * 3600, duration_s=float(d))
              for i, d in enumerate(rng.lognormal(np.log(600), 0.05, 8))]
    async with Collector(worker.servers, worker.topics["alerts"]) as alerts:
        await send(worker, p, [*normal, run_event(p, "slow", "succeeded", t0 + 9 * 3600,
                                                  duration_s=2400.0)])
        await alerts.until(lambda r: actions(r, key) == ["trigger"], what="duration anomaly")
        await send(worker, p, [run_event(p, "ok", "succeeded", t0 + 10 * 3600, duration_s=610)])
        await alerts.until(lambda r: actions(r, key) == ["trigger", "resolve"], what="resolve")
    trigger = next(a for a in alerts.records if a["dedup_key"] == key)
    assert trigger["payload"]["custom_details"]["runs_learned"] == 8


async def test_quota_exhaustion_forecast_critical_and_errant_run_then_resolve(
        worker: WorkerProcess) -> None:
    pool, t0 = name("team"), time.time() - 3000
    q = lambda used: {"pool": pool, "resource": "gpu_hours", "used": used, "limit": 200}  # noqa: E731
    # two pipelines on (probably) different partitions report the same pool: the hog's
    # run alone uses most of the limit while the pool's level is flat, then the small
    # one's reports show the level climbing to the limit
    hog = [run_event("hog-" + pool, "h1", "heartbeat", t0 + 60 * i,
                     resources={"gpu_hours": 15.0 * i}, quota=q(40)) for i in range(10)]
    small = [run_event("small-" + pool, "s1", "heartbeat", t0 + 60 * i + 30,
                       resources={"gpu_hours": 1.0 * i}, quota=q(48 + 16 * i)) for i in range(10)]
    keys = {w: f"quota_exhaustion:{pool}:gpu_hours:{w}" for w in ("forecast", "limit", "run:h1")}
    async with Collector(worker.servers, worker.topics["alerts"]) as alerts:
        await send(worker, "hog-" + pool, hog)
        # the errant run is judged by the pool's state: the hog's usage is folded there
        await alerts.until(lambda r: actions(r, keys["run:h1"]) == ["trigger"], what="errant run")
        assert actions(alerts.records, keys["forecast"]) == []  # a flat level: no forecast
        await send(worker, "small-" + pool, small)
        await alerts.until(lambda r: all(actions(r, k) == ["trigger"] for k in keys.values()),
                           what="forecast, limit and errant run")
        # the hog ends; the quota period renews: usage is low and flat again
        await send(worker, "hog-" + pool, [run_event("hog-" + pool, "h1", "succeeded",
                                                     t0 + 700, quota=q(10))])
        await send(worker, "small-" + pool, [
            run_event("small-" + pool, "s1", "heartbeat", t0 + 1400 + 60 * i, quota=q(10))
            for i in range(12)])
        await alerts.until(lambda r: all(actions(r, k) == ["trigger", "resolve"]
                                         for k in keys.values()), what="all resolved")
    forecast = next(a for a in alerts.records if a["dedup_key"] == keys["forecast"])
    top = forecast["payload"]["custom_details"]["top_consumers"]
    assert top[0]["pipeline"] == "hog-" + pool  # seen across both pipelines' partitions
    assert {c["pipeline"] for c in top} == {"hog-" + pool, "small-" + pool}


async def test_validation_gate_pauses_the_regressed_version_and_resolves_when_fixed(
        worker: WorkerProcess) -> None:
    p, model, t0 = name("validation"), name("model"), time.time() - 600
    key = f"validation_gate:{model}:v2"

    def validated(version: str, auc: float, t: float) -> dict[str, Any]:
        return run_event(p, f"val-{version}-{t}", "succeeded", t, kind="validation",
                         model=model, version=version, metrics={"auc": auc, "rows": 1e5})

    async with Collector(worker.servers, worker.topics["alerts"]) as alerts, \
            Collector(worker.servers, worker.topics["commands"]) as commands:
        await send(worker, p, [validated("v1", 0.90, t0), validated("v2", 0.84, t0 + 60)])
        await alerts.until(lambda r: actions(r, key) == ["trigger"], what="gate")
        await commands.until(lambda r: any(c["model"] == model for c in r), what="pause")
        await send(worker, p, [validated("v2", 0.91, t0 + 120)])
        await alerts.until(lambda r: actions(r, key) == ["trigger", "resolve"], what="resolve")
    [cmd] = [c for c in commands.records if c["model"] == model]
    assert (cmd["action"], cmd["from_version"], cmd["command_id"]) == (
        "pause", "v2", f"pause:{model}:v2:validation")


async def test_a_metric_spike_triggers_metric_anomaly_once_and_it_resolves(
        worker: WorkerProcess) -> None:
    # A flat noisy series: the wiring end to end. Seasonal series, and the known
    # false alert when a daily profile is first switched on, are in
    # tests/test_anomaly.py and bench/anomaly_quality.py.
    source = name("api")
    key = f"metric_anomaly:{source}:latency_p50_ms"
    step, day = 300.0, 86400.0
    t0 = (time.time() // day - 10) * day
    rng = np.random.default_rng(11)
    ts = t0 + step * np.arange(int(6 * day / step))
    latency = 40 + rng.normal(0, 3, ts.size)
    spike_at = int(4 * day / step)
    latency[spike_at:spike_at + 4] = 98.0  # a slow dependency for 20 minutes
    points = [{"source": source, "metric": "latency_p50_ms", "ts": float(t), "value": float(v)}
              for t, v in zip(ts, latency, strict=True)]
    async with Collector(worker.servers, worker.topics["alerts"]) as alerts:
        await produce(worker.servers, worker.topics["metrics"],
                      [points[i:i + 288] for i in range(0, len(points), 288)],
                      key=source.encode())
        await alerts.until(lambda r: actions(r, key) == ["trigger", "resolve"],
                           what="metric_anomaly trigger, then resolve")
    trigger = next(a for a in alerts.records if a["dedup_key"] == key)
    details = trigger["payload"]["custom_details"]
    assert trigger["payload"]["class"] == "metric_anomaly"
    assert details["value"] == 98.0 and details["expected"]["high"] < 98.0
    # detected at the spike, not before it (no false alarm in four clean days)
    assert abs(_epoch(trigger["payload"]["timestamp"]) - ts[spike_at]) <= 4 * step


def _epoch(text: str) -> float:
    from streams.core.parse import parse_time

    return parse_time(text)


async def test_quota_estimate_reads_recorded_history(kafka_bootstrap: str, tmp_path: Path
                                                      ) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    cfg = test_config(prefix)
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    settings = load_settings(path, kafka_bootstrap)
    day = 86400.0
    t0 = 1_795_000_000.0 - 1_795_000_000.0 % day
    runs = []
    for i, used in enumerate((2.0, 4.0, 6.0)):  # three runs over two days
        for j, so_far in enumerate((used / 2, used)):
            runs.append(run_event("train", f"r{i}", "heartbeat" if j == 0 else "succeeded",
                                  t0 + i * day * 0.6 + j * 600,
                                  resources={"gpu_hours": so_far},
                                  quota={"pool": "team-a", "resource": "gpu_hours",
                                         "used": 50 + 2 * i, "limit": 200}))
    stats = [{"model": "m", "version": "v1", "cohort": "stable",
              "window": {"start": t0 + 60 * k, "end": t0 + 60 * (k + 1)}, "count": c}
             for k, c in enumerate((600, 1200, 6000))]  # peak: 100 qps
    for s in stats:
        s["window"] = {e: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v))
                       for e, v in s["window"].items()}
    await produce(kafka_bootstrap, settings.topics.pipeline, runs, key=b"train")
    await produce(kafka_bootstrap, settings.topics.stats, stats, key=b"m")
    report = await estimate(settings, capacity_qps=40.0, days=None, plot="-")
    assert "train" in report and "team-a" in report
    line = next(ln for ln in report.splitlines() if ln.strip().startswith("train"))
    assert " 3 " in line and "4" in line  # three runs, median 4 gpu-hours per run
    m = next(ln for ln in report.splitlines() if ln.strip().startswith("m "))
    assert m.split()[-1] == "4"  # ceil(100 x 1.3 / 40) replicas
    assert "limit 200" in report  # the chart's limit line
