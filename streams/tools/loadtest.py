"""Production-shaped load through the real broker, and what the worker must have held.

Used by the load test in the suite (a short run) and by ``bench/load.py`` (two
hours of event time): many models at tens of events per second each, half
with a published training profile and half without, labels for half the
predictions arriving minutes later, one metrics source with twenty metrics,
both wire forms, a few hostile inputs, and three incidents (a latency
regression, an error spike, a skewed feature) that must each trigger once and
resolve once. Event time is replayed as fast as the broker takes it: hours of
it in a minute of wall clock, which is what a worker catching up on a backlog
sees.

:func:`check` then reads what came out and says what held: every valid event
counted exactly once in ``ml.stats``, every hostile input dead-lettered exactly
once with its reason and nothing else dead-lettered, the incidents' alerts, and
the largest record written to the state changelogs, against the bound.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from detectors.profile import build_profile

__all__ = ["LoadPlan", "Produced", "Report", "profiles", "produce", "check", "HOSTILE"]

SLICE_S = 10.0  # event time generated at once


@dataclass(frozen=True)
class LoadPlan:
    """What to send. Incidents run from ``incident_at`` for ``incident_s`` of event time."""

    models: int = 10
    rate: float = 20.0                 # events per second of event time, per model
    hours: float = 2.0
    batch: int = 100                   # events per message in the batch form
    single_models: int = 2             # the first ones send one event per message
    label_share: float = 0.5
    label_delay_s: float = 300.0
    metrics: int = 20                  # of one source
    metric_every_s: float = 30.0
    incident_at: float = 0.2           # share of the run
    incident_s: float = 600.0
    seed: int = 7

    @property
    def seconds(self) -> float:
        return self.hours * 3600

    def model(self, i: int) -> str:
        return f"load-{i:02d}"

    def profiled(self, i: int) -> bool:
        return i % 2 == 0  # half the models have a published training profile

    def expected_alerts(self) -> list[str]:
        """The incidents' dedup keys (model 0 slow, model 1 failing, model 2 skewed)."""
        return [f"latency_slo:{self.model(0)}:v1:p99", f"error_rate:{self.model(1)}:v1:spike",
                f"training_serving_skew:{self.model(2)}:v1:amount"]


#: Hostile inputs (single messages, keyed by a model), and the reason each must get.
HOSTILE: list[tuple[str, str]] = [
    ('{"event_id":"h1","ts":%(ms)d,"model":"%(m)s","version":"v1","latency_ms":5}',
     "bad_timestamp"),
    ('{"event_id":"h2","ts":%(year)d,"model":"%(m)s","version":"v1","latency_ms":5}',
     "bad_timestamp"),
    ('{"event_id":"h3","ts":%(ts)d,"model":"%(m)s","version":"v1","latency_ms":5,'
     '"features":{"x":' + "[" * 2000 + "]" * 2000 + "}}", "bad_value"),
    ('{"event_id":"h4","ts":%(ts)d,"model":"\\ud800","version":"v1","latency_ms":5}',
     "bad_value"),
    ('{"event_id":"h5","ts":%(ts)d,"model":"%(m)s","version":"v1","latency_ms":1'
     + "0" * 400 + "}", "not_finite"),
    ('{"event_id":"h6","ts":%(ts)d,"model":"%(m)s","version":"v1","latency_ms":5,'
     '"features":{"x":NaN}}', "not_finite"),
    ('{"event_id":"h7","ts":%(ts)d,"model":"%(m)s","version":"v1","latency_ms":5,'
     '"features":{"x":{"y":1}}}', "bad_type"),
]


def _features(rng: np.random.Generator, n: int, skewed: bool = False) -> dict[str, Any]:
    amount = rng.lognormal(4.0, 0.6, n) * (3.0 if skewed else 1.0)
    return {
        "amount": amount, "age": rng.normal(40, 12, n), "score": rng.beta(2, 5, n),
        "count": rng.poisson(3, n).astype(float),
        "country": rng.choice(["FR", "DE", "US", "GB", "IT"], n, p=[.4, .3, .15, .1, .05]),
        "device": rng.choice(["ios", "android", "web"], n, p=[.3, .5, .2]),
    }


def _prediction(f: dict[str, Any]) -> np.ndarray:
    z = 0.01 * (f["amount"] - 60) + 0.03 * (f["age"] - 40) + 2 * (f["score"] - 0.3)
    return 1 / (1 + np.exp(-z))


def profiles(plan: LoadPlan, created_at: float) -> list[dict[str, Any]]:
    """Training profiles of the profiled models (the traffic without incidents)."""
    out = []
    for i in range(plan.models):
        if not plan.profiled(i):
            continue
        rng = np.random.default_rng(plan.seed * 1000 + i)
        f = _features(rng, 20_000)
        p = _prediction(f)
        frame = pl.DataFrame({**f, "prediction": p,
                              "label": (rng.random(20_000) < p).astype(int)})
        out.append(build_profile(frame.lazy(), plan.model(i), "v1", created_at=created_at))
    return out


@dataclass
class Produced:
    """What was sent: valid events per model, messages, and the hostile inputs' reasons."""

    events: Counter[str] = field(default_factory=Counter)
    labels: int = 0
    metric_points: int = 0
    messages: int = 0
    hostile: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


Message = tuple[str, bytes, bytes]  # (topic kind, key, value)


def _messages(plan: LoadPlan, start: float, produced: Produced) -> Iterator[Message]:
    """Every message of the run, in event-time order, slice by slice."""
    rngs = [np.random.default_rng(plan.seed * 1000 + 500 + i) for i in range(plan.models)]
    pending: list[tuple[float, int, bytes]] = []  # labels due: (ts, model, event)
    per_slice = int(round(plan.rate * SLICE_S))
    inc_from = start + plan.incident_at * plan.seconds
    inc_to = inc_from + plan.incident_s
    n_slices = int(plan.seconds // SLICE_S)
    hostile_at = {n_slices // 3 + k: k for k in range(len(HOSTILE))}
    metric_rng = np.random.default_rng(plan.seed)
    next_metric = start
    seq = 0
    for s in range(n_slices):
        t0 = start + s * SLICE_S
        for i in range(plan.models):
            rng, model = rngs[i], plan.model(i)
            ts = t0 + np.sort(rng.random(per_slice)) * SLICE_S
            live = (ts >= inc_from) & (ts < inc_to)
            f = _features(rng, per_slice, skewed=(i == 2 and bool(live.any())))
            p = _prediction(f)
            latency = rng.lognormal(np.log(40), 0.3, per_slice)
            if i == 0:
                latency = np.where(live, latency * 20, latency)
            err = rng.random(per_slice) < np.where(live & (i == 1), 0.25, 0.002)
            y = (rng.random(per_slice) < p).astype(int)
            labelled = rng.random(per_slice) < plan.label_share
            events = []
            for k in range(per_slice):
                seq += 1
                eid = f"{model}-{seq}"
                events.append(orjson.dumps({
                    "event_id": eid, "ts": round(float(ts[k]), 3), "model": model,
                    "version": "v1", "latency_ms": round(float(latency[k]), 2),
                    "status": "error" if err[k] else "ok",
                    "features": {n: (v[k].item() if hasattr(v[k], "item") else v[k])
                                 for n, v in f.items()},
                    "prediction": round(float(p[k]), 4)}))
                if labelled[k]:
                    heapq.heappush(pending, (float(ts[k]) + plan.label_delay_s, i, orjson.dumps(
                        {"event_id": eid, "ts": round(float(ts[k]) + plan.label_delay_s, 3),
                         "model": model, "version": "v1", "label": int(y[k])})))
            produced.events[model] += per_slice
            yield from _framed("predictions", model, events, plan.batch if i >= plan.single_models
                               else 1)
        due: dict[int, list[bytes]] = {}
        while pending and pending[0][0] < t0 + SLICE_S:
            _, i, label = heapq.heappop(pending)
            due.setdefault(i, []).append(label)
            produced.labels += 1
        for i, labels in due.items():
            yield from _framed("feedback", plan.model(i), labels,
                               plan.batch if i >= plan.single_models else 1)
        points = []
        while next_metric < t0 + SLICE_S:
            for j in range(plan.metrics):
                value = 50 + 10 * np.sin(next_metric / 3600) + metric_rng.normal(0, 2)
                points.append(orjson.dumps({"source": "load-host", "metric": f"metric-{j:02d}",
                                            "ts": next_metric, "value": round(float(value), 3)}))
            next_metric += plan.metric_every_s
        if points:
            produced.metric_points += len(points)
            yield from _framed("metrics", "load-host", points, plan.batch)
        if s in hostile_at:
            text, reason = HOSTILE[hostile_at[s]]
            model = plan.model(3)
            body = text % {"m": model, "ts": t0, "ms": t0 * 1000, "year": t0 + 366 * 86_400}
            produced.hostile[reason] += 1
            yield "predictions", model.encode(), body.encode()


def _framed(kind: str, key: str, events: list[bytes], batch: int) -> Iterator[Message]:
    k = key.encode()
    if batch == 1:
        for e in events:
            yield kind, k, e
        return
    for i in range(0, len(events), batch):
        yield kind, k, b"[" + b",".join(events[i:i + batch]) + b"]"


async def produce(servers: str, topics: dict[str, str], plan: LoadPlan, start: float,
                  progress: Callable[[str], None] = lambda s: None,
                  options: dict[str, Any] | None = None) -> Produced:
    """Send the whole run; return what was sent. ``options``: more keyword arguments of
    the Kafka clients (:func:`streams.runtime.kafka.client_options`), here and in
    :func:`check`."""
    produced = Produced()
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=4 * 1024 * 1024,
                                **(options or {}))
    await producer.start()
    began = time.monotonic()
    try:
        futures = []
        for kind, key, value in _messages(plan, start, produced):
            futures.append(await producer.send(topics[kind], value, key=key))
            produced.messages += 1
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures = []
                if produced.messages % 20_000 < 2000:
                    progress(f"produced {produced.messages:,} messages, "
                             f"{sum(produced.events.values()):,} events")
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    produced.seconds = time.monotonic() - began
    return produced


@dataclass
class Report:
    """What came out, and whether it is what the run must give."""

    counted: Counter[str]                # ml.stats counts per model
    windows: int
    deadletters: Counter[str]            # by reason code
    alerts: dict[str, list[str]]         # dedup key -> actions, in order
    largest_record: int                  # bytes, over the state changelogs
    records: int                         # state records read
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


async def _read(servers: str, topic: str, until: Callable[[list[Any]], bool], timeout: float,
                raw: bool = False, options: dict[str, Any] | None = None) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * 1024 * 1024, **(options or {}))
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                out.extend(m.value if raw else orjson.loads(m.value or b"null") for m in msgs)
            if until(out):
                break
    finally:
        await consumer.stop()
    return out


async def _read_to_end(servers: str, topic: str,
                       options: dict[str, Any] | None = None) -> list[bytes | None]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * 1024 * 1024, **(options or {}))
    await consumer.start()
    out: list[bytes | None] = []
    try:
        parts = consumer.assignment()
        while not parts:
            await consumer.getmany(timeout_ms=100)
            parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        while True:  # to the end offsets and an empty fetch (see streams.runtime.follow)
            got = await consumer.getmany(timeout_ms=300, max_records=5000)
            for msgs in got.values():
                out.extend(m.value for m in msgs)
            if not got and all([await consumer.position(tp) >= ends[tp] for tp in parts]):
                break
    finally:
        await consumer.stop()
    return out


async def check(servers: str, topics: dict[str, str], app_id: str, plan: LoadPlan,
                produced: Produced, max_record_bytes: int, timeout: float = 300.0,
                progress: Callable[[str], None] = lambda s: None,
                options: dict[str, Any] | None = None) -> Report:
    """Wait for every event to be counted in ``ml.stats``, then judge the outputs."""
    want = sum(produced.events.values())
    said = [time.monotonic()]

    def counted(recs: list[Any]) -> bool:
        n = sum(r["count"] for r in recs)
        if time.monotonic() - said[0] >= 2 or n >= want:
            progress(f"ml.stats: {n:,} of {want:,} events counted")
            said[0] = time.monotonic()
        return n >= want

    stats = await _read(servers, topics["stats"], counted, timeout, options=options)
    counts: Counter[str] = Counter()
    for r in stats:
        counts[r["model"]] += r["count"]
    keys = set(plan.expected_alerts())
    alerts_seen = await _read(servers, topics["alerts"], lambda recs: all(
        any(a["dedup_key"] == k and a["event_action"] == "resolve" for a in recs)
        for k in keys), timeout=60, options=options)
    alerts: dict[str, list[str]] = {}
    for a in alerts_seen:
        alerts.setdefault(a["dedup_key"], []).append(a["event_action"])
    hostile = sum(produced.hostile.values())
    dead = await _read(servers, topics["deadletter"], lambda recs: len(recs) >= hostile,
                       timeout=30, options=options)
    reasons = Counter(d["reason"].split(":", 1)[0] for d in dead)
    sizes = [len(v) for table in ("model-state", "ops-state")
             for v in await _read_to_end(servers, f"{app_id}-{table}-changelog", options)
             if v]
    problems = []
    for model, n in produced.events.items():
        if counts[model] != n:
            problems.append(f"{model}: {counts[model]:,} events in ml.stats, {n:,} sent")
    if reasons != produced.hostile:
        problems.append(f"dead letters {dict(reasons)} != the hostile inputs "
                        f"{dict(produced.hostile)}")
    for key in plan.expected_alerts():
        if alerts.get(key) != ["trigger", "resolve"]:
            problems.append(f"{key}: {alerts.get(key)}, not one trigger and one resolve")
    largest = max(sizes, default=0)
    if largest > max_record_bytes:
        problems.append(f"a state record of {largest:,} bytes > {max_record_bytes:,}")
    return Report(counts, len(stats), reasons, alerts, largest, len(sizes), problems)
