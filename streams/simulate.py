"""Traffic simulator: contract events for a few models, with incidents on a timeline.

A scenario is data: which models serve (and whether their producer sends the
batch form), and which incidents happen when. :func:`events_between` is pure
and seeded, so the same scenario gives the same events; :func:`run` sends them
to Kafka in real time, keyed by model, with malformed messages mixed in.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

__all__ = ["Scenario", "ModelSpec", "Incident", "SCENARIOS", "events_between", "malformed", "run",
           "training_rows"]


@dataclass(frozen=True)
class ModelSpec:
    model: str
    version: str
    batch: int = 1            # events per Kafka message; > 1 uses the contract's batch form
    latency_median_ms: float = 40.0
    error_rate: float = 0.002
    next_version: str | None = None  # served from the first "new_version" incident on

    @property
    def versions(self) -> tuple[str, ...]:
        return (self.version,) if self.next_version is None else (self.version,
                                                                   self.next_version)


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
class Scenario:
    name: str
    description: str
    models: tuple[ModelSpec, ...]
    incidents: tuple[Incident, ...] = ()
    duration_s: float = math.inf
    malformed_every_s: float = 0.0
    expect: tuple[str, ...] = field(default=())  # alert classes that trigger and resolve


SCENARIOS = {
    "demo": Scenario(
        name="demo",
        description=("normal traffic; fraud-scorer latency regression at 20-45 s; recommender "
                     "error spike at 30-55 s; churn-model silent at 45-70 s; fraud-scorer "
                     "amounts missing at 50-65 s, then drifting up at 66-80 s; recommender v4 "
                     "rolled out at 58 s, its amounts skewed against its training profile at "
                     "60-76 s; all recover"),
        models=(ModelSpec("fraud-scorer", "v7", batch=20),
                ModelSpec("recommender", "v3", next_version="v4"),
                ModelSpec("churn-model", "v2")),
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
                "data_quality", "feature_drift"),
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
               n: int) -> dict[str, Any]:
    median = spec.latency_median_ms * (15 if "latency" in effects else 1)
    version = spec.next_version if "new_version" in effects and spec.next_version else spec.version
    err_rate = 0.25 if "errors" in effects else spec.error_rate
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
                   rng: random.Random, counter: dict[str, float]) -> Iterator[Batch]:
    """Events of each model with elapsed time in ``[a, b)``, ``rate`` per second each.

    Event times are evenly spread in the interval; ``counter`` carries the
    per-model fractional remainder and event numbers between calls.
    """
    for spec in scenario.models:
        due = counter.get(spec.model + "/due", 0.0) + rate * (b - a)
        n = int(due)
        counter[spec.model + "/due"] = due - n
        if n == 0 or "silent" in _effects(scenario, spec.model, a):
            continue
        out = []
        for j in range(n):
            t = a + (b - a) * (j + 0.5) / n
            seq = int(counter.get(spec.model, 0)) + 1
            counter[spec.model] = seq
            out.append(make_event(spec, t0 + t, rng, _effects(scenario, spec.model, t), seq))
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


async def run(bootstrap_servers: str, topic: str, scenario: Scenario, rate: float,
              seed: int = 7, duration_s: float | None = None, tick_s: float = 0.1,
              on_progress: Callable[[float, int], None] | None = None) -> int:
    """Send the scenario in real time; return the number of events sent."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                max_request_size=2_000_000)
    await producer.start()
    total = 0
    counter: dict[str, float] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    end = scenario.duration_s if duration_s is None else duration_s
    t0 = time.time()
    prev = 0.0
    next_bad = scenario.malformed_every_s or math.inf
    bad = 0
    try:
        while prev < end:
            await asyncio.sleep(tick_s)
            now = min(time.time() - t0, end)
            for spec, evs in events_between(scenario, t0, prev, now, rate, rng, counter):
                buf = pending.setdefault(spec.model, [])
                buf.extend(evs)
                key = spec.model.encode()
                while len(buf) >= spec.batch:
                    chunk, buf[:] = buf[:spec.batch], buf[spec.batch:]
                    value = orjson.dumps(chunk if spec.batch > 1 else chunk[0])
                    await producer.send(topic, value, key=key)
                    total += len(chunk)
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
        await producer.stop()
    return total
