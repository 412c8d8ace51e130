"""Traffic simulator: contract events for a few models, with incidents on a timeline.

A scenario is data: which models serve (and whether their producer sends the
batch form), and which incidents happen when. :func:`events_between` is pure
and seeded, so the same scenario gives the same events; :func:`run` sends them
to Kafka in real time, keyed by model, with malformed messages mixed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from streams.runtime.follow import follow_topic

__all__ = ["Scenario", "ModelSpec", "Incident", "PipelineRun", "SCENARIOS", "events_between",
           "malformed", "run", "training_rows"]


@dataclass(frozen=True)
class ModelSpec:
    model: str
    version: str
    batch: int = 1            # events per Kafka message; > 1 uses the contract's batch form
    latency_median_ms: float = 40.0
    error_rate: float = 0.002
    next_version: str | None = None  # served from the first "new_version" incident on
    canary_version: str | None = None  # gets the canary share ml.deployments announces
    canary_error_rate: float | None = None  # its error rate (None: the same as stable)
    rate_factor: float = 1.0  # this model's traffic, relative to the run's rate

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(v for v in (self.version, self.next_version, self.canary_version) if v)


@dataclass(frozen=True)
class Incident:
    model: str
    kind: str  # "latency", "errors", "silent", "skew" (amounts x4), "drift" (amounts x2.5),
    #            "missing" (30 % of amounts missing), or "new_version" (the model's
    #            next_version serves from then on)
    start_s: float
    end_s: float

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class PipelineRun:
    """One run of a pipeline on the scenario's timeline (elapsed seconds)."""

    pipeline: str
    kind: str
    run_id: str
    start_s: float
    duration_s: float
    outcome: str = "succeeded"          # or "failed"
    heartbeat_s: float = 0.0            # 0: no heartbeats
    silent: tuple[float, float] | None = None  # no heartbeat in this interval: a stall
    model: str | None = None
    version: str | None = None
    metrics: tuple[tuple[str, float], ...] = ()
    pool: str | None = None             # reports the pool's quota on every event
    resource: str = "gpu_hours"
    use_per_s: float = 0.0              # this run's use of the resource per second

    def events(self, usage: Callable[[str, float], tuple[float, float]] | None
               ) -> list[tuple[float, dict[str, Any]]]:
        """(elapsed, event) of the whole run; ``usage(pool, t)`` is (used, limit)."""
        times = [self.start_s]
        if self.heartbeat_s > 0:
            t = self.start_s + self.heartbeat_s
            while t < self.start_s + self.duration_s:
                quiet = self.silent is not None and self.silent[0] <= t < self.silent[1]
                if not quiet:
                    times.append(t)
                t += self.heartbeat_s
        end = self.start_s + self.duration_s
        out = []
        for i, t in enumerate([*times, end]):
            last = i == len(times)
            status = self.outcome if last else ("started" if i == 0 else "heartbeat")
            ev: dict[str, Any] = {"event_id": f"{self.run_id}-{i}", "pipeline": self.pipeline,
                                  "kind": self.kind, "run_id": self.run_id, "status": status}
            if self.model:
                ev.update(model=self.model, version=self.version)
            if self.use_per_s:
                ev["resources"] = {self.resource: round(self.use_per_s * (t - self.start_s), 3)}
            if self.pool and usage is not None:
                used, limit = usage(self.pool, t)
                ev["quota"] = {"pool": self.pool, "resource": self.resource,
                               "used": round(used, 3), "limit": limit}
            if last:
                ev["duration_s"] = round(self.duration_s, 3)
                if self.metrics:
                    ev["metrics"] = dict(self.metrics)
                if self.outcome == "failed":
                    ev["error"] = "CUDA out of memory in epoch 3"
            out.append((t, ev))
        return out


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    models: tuple[ModelSpec, ...]
    incidents: tuple[Incident, ...] = ()
    duration_s: float = math.inf
    malformed_every_s: float = 0.0
    expect: tuple[str, ...] = field(default=())  # alert classes that trigger and resolve
    # canary rollouts a controller starts with the scenario: (model, stable, canary, %)
    rollouts: tuple[tuple[str, str, str, int], ...] = ()
    runs: tuple[PipelineRun, ...] = ()
    # pool -> (limit, ((elapsed, used), ...)): the pool's usage, linear in between
    pools: tuple[tuple[str, float, tuple[tuple[float, float], ...]], ...] = ()

    def pool_usage(self, pool: str, t: float) -> tuple[float, float]:
        """(used, limit) of ``pool`` at elapsed ``t``."""
        for name, limit, points in self.pools:
            if name == pool:
                xs, ys = zip(*points, strict=True)
                return float(np.interp(t, xs, ys)), limit
        return 0.0, 1.0

    def pipeline_events(self) -> list[tuple[float, dict[str, Any]]]:
        """Every pipeline event of the scenario, by elapsed time."""
        evs = [e for run in self.runs for e in run.events(self.pool_usage)]
        return sorted(evs, key=lambda e: e[0])


#: model -> (stable version, canary version or None, canary share %), from ml.deployments
Routes = dict[str, tuple[str, str | None, float]]


DEMO_RUNS = (
    # a training pipeline that fails twice, then recovers
    PipelineRun("fraud-daily-training", "training", "fdt-1", 2, 6),
    PipelineRun("fraud-daily-training", "training", "fdt-2", 20, 5, "failed"),
    PipelineRun("fraud-daily-training", "training", "fdt-3", 30, 5, "failed"),
    PipelineRun("fraud-daily-training", "training", "fdt-4", 50, 6),
    # a data pipeline with heartbeats that stalls at 42-60 s, then finishes
    *(PipelineRun("churn-features", "data", f"cf-{i}", 2 + 8 * i, 4, heartbeat_s=1)
      for i in range(4)),
    PipelineRun("churn-features", "data", "cf-4", 40, 24, heartbeat_s=1, silent=(42, 60)),
    # a hyperparameter search eats the team's GPU hours (the pool resets at 76 s)
    PipelineRun("recsys-hyperopt", "training", "rh-1", 0, 72, heartbeat_s=2, pool="team-ml",
                use_per_s=1.2),
    PipelineRun("recsys-nightly", "training", "rn-1", 5, 60, heartbeat_s=3, pool="team-ml",
                use_per_s=0.1),
    PipelineRun("recsys-nightly", "training", "rn-2", 78, 14, heartbeat_s=2, pool="team-ml",
                use_per_s=0.1),
    # validation: v8 is worse than v7 on AUC (gate, pause), then a fixed v8 passes
    PipelineRun("fraud-validation", "validation", "fv-v7", 8, 3, model="fraud-scorer",
                version="v7", metrics=(("auc", 0.91), ("logloss", 0.30), ("rows", 1e5))),
    PipelineRun("fraud-validation", "validation", "fv-v8", 38, 3, model="fraud-scorer",
                version="v8", metrics=(("auc", 0.86), ("logloss", 0.33), ("rows", 1e5))),
    PipelineRun("fraud-validation", "validation", "fv-v8b", 72, 3, model="fraud-scorer",
                version="v8", metrics=(("auc", 0.915), ("logloss", 0.29), ("rows", 1e5))),
)

SCENARIOS = {
    "demo": Scenario(
        name="demo",
        description=("normal traffic; fraud-scorer latency regression at 20-45 s; recommender "
                     "error spike at 30-55 s; churn-model silent at 45-70 s; fraud-scorer "
                     "amounts missing at 50-65 s, then drifting up at 66-80 s; recommender v4 "
                     "rolled out at 58 s, its amounts skewed against its training profile at "
                     "60-76 s; all recover. Canaries from 0 s: pricing p2 (15% errors) must "
                     "be rolled back, ranker r6 promoted 5 -> 25 -> 50 -> 100 %, with "
                     "approvals above 25 %"),
        models=(ModelSpec("fraud-scorer", "v7", batch=20),
                ModelSpec("recommender", "v3", next_version="v4"),
                ModelSpec("churn-model", "v2"),
                ModelSpec("pricing", "p1", batch=50, canary_version="p2",
                          canary_error_rate=0.15, rate_factor=5),
                ModelSpec("ranker", "r5", batch=50, canary_version="r6", rate_factor=5)),
        incidents=(Incident("fraud-scorer", "latency", 20, 45),
                   Incident("recommender", "errors", 30, 55),
                   Incident("churn-model", "silent", 45, 70),
                   Incident("fraud-scorer", "missing", 50, 65),
                   Incident("fraud-scorer", "drift", 66, 80),
                   Incident("recommender", "new_version", 58, math.inf),
                   Incident("recommender", "skew", 60, 76)),
        duration_s=95,
        malformed_every_s=4,
        expect=("latency_slo", "error_rate", "outage", "training_serving_skew",
                "data_quality", "feature_drift", "canary_regression", "pipeline_failure",
                "pipeline_stalled", "quota_exhaustion", "validation_gate"),
        rollouts=(("pricing", "p1", "p2", 5), ("ranker", "r5", "r6", 5)),
        runs=DEMO_RUNS,
        pools=(("team-ml", 200.0, ((0, 100), (70, 192), (74, 192), (76, 20), (200, 30))),),
    ),
    "canary": Scenario(
        name="canary",
        description="two canaries: pricing p2 regresses (15% errors), ranker r6 is healthy",
        models=(ModelSpec("pricing", "p1", batch=50, canary_version="p2",
                          canary_error_rate=0.15),
                ModelSpec("ranker", "r5", batch=50, canary_version="r6")),
        rollouts=(("pricing", "p1", "p2", 5), ("ranker", "r5", "r6", 5)),
    ),
    "steady": Scenario(
        name="steady", description="healthy traffic, forever",
        models=(ModelSpec("fraud-scorer", "v7", batch=50), ModelSpec("recommender", "v3"),
                ModelSpec("churn-model", "v2")),
    ),
}


def _effects(scenario: Scenario, model: str, t: float) -> set[str]:
    return {i.kind for i in scenario.incidents if i.model == model and i.active(t)}


def _amount_factor(effects: set[str]) -> float:
    return 4.0 if "skew" in effects else 2.5 if "drift" in effects else 1.0


def make_event(spec: ModelSpec, ts: float, rng: random.Random, effects: set[str],
               n: int, route: tuple[str, str | None, float] | None = None) -> dict[str, Any]:
    median = spec.latency_median_ms * (15 if "latency" in effects else 1)
    version = spec.next_version if "new_version" in effects and spec.next_version else spec.version
    cohort = "stable"
    if route is not None:
        version = route[0]
        if route[1] is not None and rng.random() < route[2] / 100:
            version, cohort = route[1], "canary"
    err_rate = 0.25 if "errors" in effects else spec.error_rate
    if version == spec.canary_version and spec.canary_error_rate is not None:
        err_rate = spec.canary_error_rate
    failed = rng.random() < err_rate
    ev: dict[str, Any] = {
        "event_id": f"{spec.model}-{n}",
        "ts": round(ts, 3),
        "model": spec.model,
        "version": version,
        "latency_ms": round(rng.lognormvariate(math.log(median), 0.5), 2),
        "status": "error" if failed else "ok",
        "features": {"amount": round(rng.expovariate(1 / 80) * _amount_factor(effects), 2),
                     "country": rng.choice(["FR", "DE", "US", "GB"])},
        "prediction": round(rng.random(), 4),
    }
    if cohort != "stable":
        ev["cohort"] = cohort
    if failed:
        ev["error"] = "upstream feature store timeout"
    if "missing" in effects and rng.random() < 0.3:
        del ev["features"]["amount"]
    return ev


Batch = tuple[ModelSpec, list[dict[str, Any]]]


def training_rows(spec: ModelSpec, n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Rows like the training data of ``spec``: healthy traffic's features and predictions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ev = make_event(spec, 0.0, rng, set(), i)
        rows.append({**ev["features"], "prediction": ev["prediction"]})
    return rows


def events_between(scenario: Scenario, t0: float, a: float, b: float, rate: float,
                   rng: random.Random, counter: dict[str, float],
                   routes: Routes | None = None) -> Iterator[Batch]:
    """Events of each model with elapsed time in ``[a, b)``, ``rate`` per second each
    (times the model's ``rate_factor``), versions split as ``routes`` say.

    Event times are evenly spread in the interval; ``counter`` carries the
    per-model fractional remainder and event numbers between calls.
    """
    routes = routes or {}
    for spec in scenario.models:
        due = counter.get(spec.model + "/due", 0.0) + rate * spec.rate_factor * (b - a)
        n = int(due)
        counter[spec.model + "/due"] = due - n
        if n == 0 or "silent" in _effects(scenario, spec.model, a):
            continue
        out = []
        for j in range(n):
            t = a + (b - a) * (j + 0.5) / n
            seq = int(counter.get(spec.model, 0)) + 1
            counter[spec.model] = seq
            out.append(make_event(spec, t0 + t, rng, _effects(scenario, spec.model, t), seq,
                                  routes.get(spec.model)))
        yield spec, out


def malformed(k: int, now: float) -> tuple[bytes, bytes]:
    """The k-th malformed message (cycling through every kind) and its key."""
    good = {"event_id": f"bad-{k}", "ts": now, "model": "recommender", "version": "v3",
            "latency_ms": 12.0}
    kinds: list[Callable[[], bytes]] = [
        lambda: b"{this is not json",
        lambda: b'"a string, not an object"',
        lambda: orjson.dumps({k2: v for k2, v in good.items() if k2 != "latency_ms"}),
        lambda: orjson.dumps({**good, "latency_ms": "fast"}),
        lambda: orjson.dumps(good).replace(b"12.0", b"NaN"),
        lambda: orjson.dumps({**good, "latency_ms": -3}),
        lambda: orjson.dumps([good, {**good, "ts": "yesterday"}]),
        lambda: orjson.dumps({**good, "ts": now - 3600}),  # far behind the watermark: late
    ]
    return b"recommender", kinds[k % len(kinds)]()


def follow_routes(record: dict[str, Any], routes: Routes) -> None:
    """Update ``routes`` from one ``ml.deployments`` record (as a service mesh would).

    >>> routes: Routes = {}
    >>> follow_routes({"model": "m", "stable_version": "v1", "canary_version": "v2",
    ...                "traffic_percent": 25, "phase": "step"}, routes); routes
    {'m': ('v1', 'v2', 25.0)}
    >>> follow_routes({"model": "m", "stable_version": "v1", "canary_version": "v2",
    ...                "traffic_percent": 0, "phase": "rolled_back"}, routes); routes
    {'m': ('v1', None, 0.0)}
    """
    ended = record.get("phase") in ("promoted", "rolled_back", "aborted")
    canary = None if ended else record.get("canary_version")
    routes[record["model"]] = (record["stable_version"], canary,
                               float(record.get("traffic_percent") or 0) if canary else 0.0)


async def run(bootstrap_servers: str, topic: str, scenario: Scenario, rate: float,
              seed: int = 7, duration_s: float | None = None, tick_s: float = 0.1,
              on_progress: Callable[[float, int], None] | None = None,
              deployments_topic: str | None = None, pipeline_topic: str | None = None,
              options: dict[str, Any] | None = None) -> int:
    """Send the scenario in real time; return the number of events sent.

    With ``deployments_topic``, traffic follows the rollouts announced there:
    a model's canary gets the share its controller set. With ``pipeline_topic``,
    the scenario's pipeline runs are sent there too, keyed by pipeline.
    ``options``: more keyword arguments of the Kafka clients
    (:func:`streams.runtime.kafka.client_options`).
    """
    rng = random.Random(seed)
    routes: Routes = {}
    follower = None
    if deployments_topic is not None:
        async def on_record(key: bytes | None, value: bytes | None, p: int, o: int) -> None:
            if value is not None:
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    follow_routes(orjson.loads(value), routes)

        follower = asyncio.create_task(follow_topic(bootstrap_servers, deployments_topic,
                                                    on_record, asyncio.Event(),
                                                    consumer_options=options))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                max_request_size=2_000_000, **(options or {}))
    await producer.start()
    total = 0
    counter: dict[str, float] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    end = scenario.duration_s if duration_s is None else duration_s
    t0 = time.time()
    prev = 0.0
    next_bad = scenario.malformed_every_s or math.inf
    bad = 0
    runs = scenario.pipeline_events() if pipeline_topic is not None else []
    next_run = 0
    try:
        while prev < end:
            await asyncio.sleep(tick_s)
            now = min(time.time() - t0, end)
            for spec, evs in events_between(scenario, t0, prev, now, rate, rng, counter,
                                            routes):
                buf = pending.setdefault(spec.model, [])
                buf.extend(evs)
                key = spec.model.encode()
                while len(buf) >= spec.batch:
                    chunk, buf[:] = buf[:spec.batch], buf[spec.batch:]
                    value = orjson.dumps(chunk if spec.batch > 1 else chunk[0])
                    await producer.send(topic, value, key=key)
                    total += len(chunk)
            while pipeline_topic is not None and next_run < len(runs) and \
                    runs[next_run][0] < now:
                t, ev = runs[next_run]
                await producer.send(pipeline_topic, orjson.dumps({**ev, "ts": round(t0 + t, 3)}),
                                    key=ev["pipeline"].encode())
                next_run += 1
            if now >= next_bad:
                key, value = malformed(bad, t0 + now)
                await producer.send(topic, value, key=key)
                bad += 1
                next_bad += scenario.malformed_every_s
            prev = now
            if on_progress is not None:
                on_progress(now, total)
        await producer.flush()
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await producer.stop()
    return total
