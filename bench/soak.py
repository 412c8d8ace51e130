"""Two workers, one consumer group, a steady real-time load for minutes: what held, what it cost.

Starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates the
run's topics (those that are not compacted with ``retention.ms``), publishes the
training profiles of half the models, starts two Sentinelle workers with one
``worker.app_id`` (one consumer group: they share the partitions of
``ml.predictions``) and waits until both hold partitions. Then it produces for
``--minutes`` (10 by default) at a steady real-time rate, tick by tick, never in
a burst: ``--models`` models at ``--rate`` events/s each, half of them one event
per message and half the contract's batch form, keyed by model and named so
that every partition carries as many models as the others. Every few seconds
it reads the group's committed offsets against the end offsets (the consumer
lag); every second it samples the workers' and the broker's resident memory.

It prints the rate held, the lag over time, each worker's resident memory once
warm and at the end, the broker's, the partitions each worker held and the
events it folded, and whether every event was counted once in ``ml.stats``,
with terminal charts. It exits non-zero, with the workers' log tails, when a
worker died, the rate was not held, the lag did not drain, a worker held no
partition, an event was not counted once, or a worker's memory grew by more
than ``--tolerance`` once warm.

Two things about the embedded broker (Tansu 0.6):

- it reports a partition's end offset as its last record batch's base offset
  + 1 (see :func:`streams.runtime.kafka.is_tansu`), short of the true end by
  the rest of that batch. The lag is read against the larger of that and the
  producer's acknowledged offsets, which are exact: this run is the only writer
  of its input topic;
- it keeps every record in memory and does not honour ``retention.ms`` (it
  stores the setting, and closes the connection on DeleteRecords), so its
  memory grows with everything written: inputs, outputs and the state
  changelogs. The run prints that growth and what an hour would cost at the
  same rate. On Apache Kafka the topics keep ``--retention-minutes`` (with
  one-minute segments, so that it applies within the run).

    python bench/soak.py [--minutes 10] [--models 8] [--rate 100] [--tolerance 0.15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

from bench.load import Worker  # noqa: E402
from streams.cli.profile import publish_profile  # noqa: E402
from streams.config import Settings, TopicSettings, load_settings  # noqa: E402
from streams.runtime.app import pool_topic_name, topic_max_bytes  # noqa: E402
from streams.runtime.kafka import is_tansu  # noqa: E402
from streams.tools.broker import EmbeddedBroker, free_port, wait_for_port  # noqa: E402
from streams.tools.simulate import ModelSpec, Scenario, events_between, training_rows  # noqa: E402

__all__ = ["SoakPlan", "SoakReport", "soak", "render", "model_names", "held_partitions", "rss_mb"]

TICK_S = 0.1          # production is paced in ticks of this much wall clock
BUCKET_S = 10.0       # the rate held is judged per bucket of this much wall clock
AROUND_S = 10.0       # a resident-memory reading is the median of the samples this close


@dataclass(frozen=True)
class SoakPlan:
    """What to run. ``warmup_s`` unset: half the run, at least 60 s.

    Warm means the detectors' state is full: a model's windows, drift baselines
    and sequential tests fill over its first ~30,000 events (measured offline:
    resident memory then stays within 2 %), so at the default 100 events/s per
    model the second half of a 10-minute run is warm; at 25 events/s it takes
    20 minutes."""

    minutes: float = 10.0
    models: int = 8
    rate: float = 100.0            # events per second per model, in real time
    batch: int = 20                # events per message of the batch-form models
    partitions: int = 4
    window_s: float = 60.0         # the workers' windows.size_s (the production default)
    warmup_s: float | None = None
    tolerance: float = 0.15        # a worker's end RSS at most warm RSS x (1 + tolerance)
    lag_every_s: float = 5.0
    retention_minutes: float = 10.0
    drain_timeout_s: float = 90.0  # after the last message, for the lag and ml.stats
    seed: int = 7

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warm_at(self) -> float:
        if self.warmup_s is not None:
            return self.warmup_s
        return max(60.0, self.seconds / 2)

    @property
    def total_rate(self) -> float:
        return self.rate * self.models

    def specs(self) -> tuple[ModelSpec, ...]:
        """The models: even ones one event per message, odd ones in batches."""
        return tuple(ModelSpec(name, "v1", batch=1 if i % 2 == 0 else self.batch)
                     for i, name in enumerate(model_names(self.models, self.partitions)))

    def messages_per_s(self) -> float:
        return sum(self.rate / s.batch for s in self.specs())


def model_names(n: int, partitions: int) -> list[str]:
    """``n`` model names whose keys the producer's default partitioner spreads evenly.

    >>> names = model_names(8, 4)
    >>> sorted(Counter(DefaultPartitioner()(m.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
    ...                for m in names).values())
    [2, 2, 2, 2]
    """
    each = -(-n // partitions)
    parts = list(range(partitions))
    taken: Counter[int] = Counter()
    names: list[str] = []
    i = 0
    while len(names) < n:
        name = f"soak-{i:03d}"
        p = DefaultPartitioner()(name.encode(), parts, parts)
        if taken[p] < each:
            names.append(name)
            taken[p] += 1
        i += 1
    return names


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class Memory:
    """A process's resident memory: warm (once the load has run a while) and at the end."""

    name: str
    samples: list[tuple[float, float]]  # (seconds since the load started, MB)
    warm: float
    end: float
    warm_at: float
    per_hour: float                     # trend after warm (least squares), MB per hour

    @property
    def growth(self) -> float:
        return self.end / self.warm - 1 if self.warm > 0 else 0.0


@dataclass
class SoakReport:
    """What the run measured, and what did not hold (``problems``)."""

    plan: SoakPlan
    tansu: bool
    seconds: float = 0.0                                  # production, wall clock
    produced: Counter[str] = field(default_factory=Counter)  # events per model
    messages: int = 0
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (t, events/s)
    lag: list[tuple[float, int]] = field(default_factory=list)  # (t, messages behind)
    drained_after: float | None = None                  # s after the last message
    counted: Counter[str] = field(default_factory=Counter)  # ml.stats, per model
    assignments: list[dict[str, list[int]]] = field(default_factory=list)  # at start, end
    folded: list[float] = field(default_factory=list)   # events each worker folded
    cpu: list[float] = field(default_factory=list)      # CPU seconds of each worker
    workers: list[Memory] = field(default_factory=list)
    broker: Memory | None = None
    alive: list[bool] = field(default_factory=list)
    log_tails: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def events(self) -> int:
        return sum(self.produced.values())

    @property
    def rate_held(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def slowest_bucket(self) -> float:
        return min((r for _, r in self.buckets), default=0.0)

    @property
    def lag_end(self) -> int | None:
        return self.lag[-1][1] if self.lag else None


class _Production:
    """What the producer sent: events, messages, acknowledged end offsets, a timeline."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.messages = 0
        self.acked: dict[TopicPartition, int] = {}   # the offset after the last one acked
        self.timeline: list[tuple[float, int]] = []  # (t, events sent so far)
        self.failed = 0

    def ack(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.failed += 1
            return
        md = fut.result()
        tp = TopicPartition(md.topic, md.partition)
        self.acked[tp] = max(self.acked.get(tp, 0), md.offset + 1)


def _topics(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}.{t}" for name, t in TopicSettings().model_dump().items()}


async def _create_topics(settings: Settings, partitions: int, retention_ms: int) -> None:
    """Every topic of the run, before the workers (which then find them): the compacted
    ones as the worker makes them, the others with ``retention.ms``."""
    t = settings.topics
    compacted = set(t.compacted())
    sized = {"max.message.bytes": str(topic_max_bytes(settings))}
    kept = {"retention.ms": str(retention_ms), "segment.ms": str(min(retention_ms, 60_000))}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.servers)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(name, partitions, settings.kafka.replication_factor,
                     topic_configs={**sized, **({"cleanup.policy": "compact"}
                                                if name in compacted else kept)})
            for name in [*t.all(), pool_topic_name(settings)]])
    finally:
        await admin.close()


def held_partitions(log: str, topic: str) -> list[int]:
    """The partitions of ``topic`` a worker holds, from the last assignment its log shows.

    Faust logs each assignment of the group as a table ("Setting newly assigned
    partitions"); read from the logs, it works on any broker (Tansu answers
    DescribeGroups without the members' assignments).

    >>> held_partitions("Setting newly assigned partitions\\n| x.ml.predictions | {0-1,3} |\\n"
    ...                 "+---+ for group g", "x.ml.predictions")
    [0, 1, 3]
    """
    at = log.rfind("Setting newly assigned partitions")
    if at < 0:
        return []
    table = log[at:].split(" for group ", 1)[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == topic:
            out: list[int] = []
            for part in cells[1].strip("{}").split(","):
                a, _, b = part.partition("-")
                if a.strip().isdigit():
                    out.extend(range(int(a), int(b or a) + 1))
            return sorted(out)
    return []


def _assignment(workers: list[Worker], topic: str) -> dict[str, list[int]]:
    return {f"worker {i + 1}": held_partitions(w.log(), topic) for i, w in enumerate(workers)}


def _shared(assignment: dict[str, list[int]], workers: int, partitions: int) -> bool:
    """Each worker a member holding partitions, none twice, all of them held."""
    held = [p for ps in assignment.values() for p in ps]
    return (len(assignment) == workers and all(assignment.values())
            and sorted(held) == list(range(partitions)))


async def _lag(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str,
               parts: list[TopicPartition], acked: dict[TopicPartition, int]) -> int:
    """Messages of ``parts`` the group has not committed: end offset minus committed one.

    The end is the larger of the broker's and the producer's acknowledged one (Tansu
    reports the last batch's base offset + 1, short of the true end)."""
    committed = await admin.list_consumer_group_offsets(group, partitions=parts)
    ends = await consumer.end_offsets(parts)
    behind = 0
    for tp in parts:
        c = committed.get(tp)
        done = c.offset if c is not None and c.offset >= 0 else 0
        behind += max(0, max(ends.get(tp, 0), acked.get(tp, 0)) - done)
    return behind


async def _folded(port: int) -> float | None:
    """``sentinelle_events_total`` from a worker's /metrics (None if it does not answer)."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    except (TimeoutError, aiohttp.ClientError):
        return None
    return sum(s.value for fam in text_string_to_metric_families(text)
               if fam.name == "sentinelle_events" for s in fam.samples
               if s.name == "sentinelle_events_total")


async def _produce(servers: str, topic: str, plan: SoakPlan, stop: asyncio.Event,
                   prod: _Production) -> float:
    """Send ``plan.rate`` events/s per model in real time until the plan's end or ``stop``;
    return the seconds it took. Each tick sends the events whose time has come."""
    scenario = Scenario(name="soak", description="steady", models=plan.specs())
    rng = random.Random(plan.seed)
    counter: dict[str, float] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5,
                                max_request_size=2_000_000)
    await producer.start()
    t0 = time.time()
    began = time.monotonic()
    prev = 0.0
    tick = 0
    try:
        while prev < plan.seconds and not stop.is_set():
            tick += 1
            await asyncio.sleep(max(0.0, began + tick * TICK_S - time.monotonic()))
            now = min(time.monotonic() - began, plan.seconds)
            for spec, evs in events_between(scenario, t0, prev, now, plan.rate, rng, counter):
                buf = pending.setdefault(spec.model, [])
                buf.extend(evs)
                while len(buf) >= spec.batch:
                    chunk, buf[:] = buf[:spec.batch], buf[spec.batch:]
                    value = orjson.dumps(chunk if spec.batch > 1 else chunk[0])
                    fut = await producer.send(topic, value, key=spec.model.encode())
                    fut.add_done_callback(prod.ack)
                    prod.events[spec.model] += len(chunk)
                    prod.messages += 1
            prev = now
            prod.timeline.append((now, sum(prod.events.values())))
        await producer.flush()
    finally:
        await producer.stop()
    return time.monotonic() - began


def _buckets(timeline: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """Events per second in each whole ``BUCKET_S`` of the timeline."""
    out: list[tuple[float, float]] = []
    edge, last = BUCKET_S, 0
    for t, n in timeline:
        if t >= edge:
            out.append((edge, (n - last) / BUCKET_S))
            edge, last = edge + BUCKET_S, n
    return out


def _memory(name: str, samples: list[tuple[float, float]], warm_at: float,
            end_at: float) -> Memory:
    """Warm: the median of the samples within ``AROUND_S`` of ``warm_at``; end: of the last
    ``2 * AROUND_S`` before ``end_at``; the trend between the two by least squares."""
    near = [m for t, m in samples if abs(t - warm_at) <= AROUND_S] or [m for _, m in samples]
    last = [m for t, m in samples if end_at - 2 * AROUND_S <= t <= end_at] or \
        [m for _, m in samples]
    after = [(t, m) for t, m in samples if warm_at <= t <= end_at]
    per_hour = 0.0
    if len(after) >= 3:
        ts, ms = [t for t, _ in after], [m for _, m in after]
        mt, mm = statistics.fmean(ts), statistics.fmean(ms)
        var = sum((t - mt) ** 2 for t in ts)
        if var > 0:
            per_hour = sum((t - mt) * (m - mm) for t, m in after) / var * 3600
    return Memory(name, samples, statistics.median(near) if near else 0.0,
                  statistics.median(last) if last else 0.0, warm_at, per_hour)


async def soak(servers: str, plan: SoakPlan, workdir: Path, broker_pid: int | None = None,
               say: Callable[[str], None] = print) -> SoakReport:
    """Run the plan against the brokers at ``servers``; ``broker_pid``: the embedded
    broker's process, to sample its memory."""
    prefix = f"soak{uuid.uuid4().hex[:8]}"
    topics = _topics(prefix)
    app_id = f"{prefix}-sentinelle"
    report = SoakReport(plan, tansu=await is_tansu(servers))
    ports = [free_port(), free_port()]
    workers = []
    for i, port in enumerate(ports):
        (workdir / f"worker-{i + 1}").mkdir(parents=True, exist_ok=True)
        workers.append(Worker(servers, {
            "topics": topics, "kafka": {"partitions": plan.partitions},
            "worker": {"app_id": app_id, "web_port": port, "idle_close_s": 3.0},
            "windows": {"size_s": plan.window_s}}, workdir / f"worker-{i + 1}"))
    settings = load_settings(workers[0].config_path, servers)
    specs = plan.specs()
    say(f"plan: {plan.models} models at {plan.rate:g} events/s each ({plan.total_rate:g} "
        f"events/s, {plan.messages_per_s():.0f} messages/s: "
        f"{sum(s.batch == 1 for s in specs)} models one event per message, the others "
        f"{plan.batch} per message) for {plan.minutes:g} min, in real time; "
        f"{plan.partitions} partitions, 2 workers in consumer group {app_id}; "
        f"{'the embedded broker (Tansu)' if report.tansu else servers}")
    await _create_topics(settings, plan.partitions, int(plan.retention_minutes * 60_000))
    for spec in specs[::2]:
        await publish_profile(settings, build_profile_of(spec))
    parts = [TopicPartition(topics["predictions"], p) for p in range(plan.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None)
    stats = AIOKafkaConsumer(topics["stats"], bootstrap_servers=servers, group_id=None,
                             auto_offset_reset="earliest")
    await admin.start()
    await consumer.start()
    await stats.start()
    broker_samples: list[tuple[float, float]] = []
    started: list[float] = []
    stop = asyncio.Event()
    sampling = threading.Event()  # set: the broker's sampler stops
    prod = _Production()
    t0 = time.monotonic()
    counting = asyncio.create_task(_count(stats, report.counted))
    try:
        began = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers))
        started = [time.monotonic()] * len(workers)
        say(f"both workers ready in {time.monotonic() - began:.1f} s; waiting for each to "
            f"hold partitions of {topics['predictions']}")
        deadline = time.monotonic() + 90
        while True:
            held = _assignment(workers, topics["predictions"])
            if _shared(held, len(workers), plan.partitions):
                break
            if time.monotonic() > deadline or not all(w.alive() for w in workers):
                report.problems.append(f"the workers never shared the partitions: {held}")
                break
            await asyncio.sleep(1.0)
        report.assignments.append(held)
        say("partitions: " + "; ".join(f"{m}: {ps}" for m, ps in sorted(held.items())))
        if report.problems:
            return _finish(report, workers, say)

        t0 = time.monotonic()
        sampler = threading.Thread(target=_sample_broker, args=(broker_pid, t0, broker_samples,
                                                                sampling), daemon=True)
        if broker_pid is not None:
            sampler.start()
        producing = asyncio.create_task(_produce(servers, topics["predictions"], plan, stop,
                                                 prod))
        said = 0.0
        every = max(10.0, plan.seconds / 20)
        while not producing.done():
            await asyncio.wait({producing}, timeout=plan.lag_every_s)
            t = time.monotonic() - t0
            behind = await _lag(admin, consumer, app_id, parts, prod.acked)
            report.lag.append((t, behind))
            dead = [i + 1 for i, w in enumerate(workers) if not w.alive()]
            if dead:
                report.problems.append(f"worker {', '.join(map(str, dead))} died at {t:.0f} s")
                stop.set()
            if t - said >= every or dead:
                said = t
                rss = ", ".join(f"w{i + 1} {w.samples[-1][1]:.0f}" if w.samples else "-"
                                for i, w in enumerate(workers))
                b = f", broker {broker_samples[-1][1]:.0f}" if broker_samples else ""
                say(f"  [{t:6.0f} s] sent {sum(prod.events.values()):,} events "
                    f"({prod.messages:,} messages), lag {behind:,} messages, "
                    f"counted in ml.stats {sum(report.counted.values()):,}; RSS MB {rss}{b}")
        report.seconds = await producing
        end_t = time.monotonic() - t0
        report.produced = prod.events
        report.messages = prod.messages
        report.buckets = _buckets(prod.timeline)
        if prod.failed:
            report.problems.append(f"{prod.failed} messages were not acknowledged")
        # drain: the lag back to zero, every event counted in ml.stats
        last = time.monotonic()
        deadline = last + plan.drain_timeout_s
        while time.monotonic() < deadline and all(w.alive() for w in workers):
            behind = await _lag(admin, consumer, app_id, parts, prod.acked)
            report.lag.append((time.monotonic() - t0, behind))
            if behind == 0 and report.drained_after is None:
                report.drained_after = time.monotonic() - last
            if report.drained_after is not None and \
                    sum(report.counted.values()) >= report.events:
                break
            await asyncio.sleep(1.0)
        report.assignments.append(_assignment(workers, topics["predictions"]))
        report.folded = [f if f is not None else float("nan")
                         for f in await asyncio.gather(*(_folded(p) for p in ports))]
        report.workers = [
            _memory(f"worker {i + 1}", [(started[i] - t0 + t, m) for t, m, _ in w.samples],
                    plan.warm_at, end_t) for i, w in enumerate(workers)]
        report.cpu = [w.samples[-1][2] if w.samples else float("nan") for w in workers]
        if broker_samples:
            report.broker = _memory("broker", list(broker_samples), plan.warm_at, end_t)
    finally:
        stop.set()
        sampling.set()
        counting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counting
        for c in (stats, consumer):
            await c.stop()
        await admin.close()
    return _finish(report, workers, say)


def build_profile_of(spec: ModelSpec) -> dict[str, Any]:
    """The training profile of ``spec`` (what the demo publishes for its models)."""
    import polars as pl

    from detectors.profile import build_profile

    return build_profile(pl.LazyFrame(training_rows(spec, 5000)), spec.model, spec.version)


async def _count(stats: AIOKafkaConsumer, counted: Counter[str]) -> None:
    """Events counted in ``ml.stats``, per model, as the windows close."""
    while True:
        for msgs in (await stats.getmany(timeout_ms=500, max_records=5000)).values():
            for m in msgs:
                rec = orjson.loads(m.value or b"null")
                if isinstance(rec, dict):
                    counted[str(rec.get("model"))] += int(rec.get("count") or 0)


def _sample_broker(pid: int | None, t0: float, out: list[tuple[float, float]],
                   stop: threading.Event) -> None:
    while pid is not None and not stop.is_set():
        mb = rss_mb(pid)
        if mb is None:
            return
        out.append((time.monotonic() - t0, mb))
        stop.wait(1.0)


def _finish(report: SoakReport, workers: list[Worker], say: Callable[[str], None]) -> SoakReport:
    """Stop the workers and judge what the run measured."""
    report.alive = [w.alive() for w in workers]
    for w in workers:
        w.stop()
    report.log_tails = [w.log()[-3000:] for w in workers]
    plan, p = report.plan, report.problems
    if not all(report.alive) and not any("died" in x for x in p):
        p.append(f"worker(s) {[i + 1 for i, a in enumerate(report.alive) if not a]} died")
    if report.seconds:
        want = plan.total_rate
        if report.rate_held < 0.98 * want:
            p.append(f"rate not held: {report.rate_held:,.1f} events/s of {want:,.1f}")
        if report.slowest_bucket < 0.8 * want:
            p.append(f"a {BUCKET_S:g} s stretch at {report.slowest_bucket:,.1f} events/s "
                     f"(< 80 % of {want:,.1f})")
        if report.drained_after is None:
            p.append(f"the lag did not drain within {plan.drain_timeout_s:g} s: "
                     f"{report.lag_end} messages behind")
        missing = {m: (report.counted[m], n) for m, n in report.produced.items()
                   if report.counted[m] != n}
        if missing:
            p.append("not every event counted once in ml.stats (counted, sent): "
                     f"{missing}")
        for i, held in enumerate(report.assignments):
            if not _shared(held, len(workers), plan.partitions):
                p.append(f"partitions not shared by both workers "
                         f"{'at the start' if i == 0 else 'at the end'}: {held}")
        if not all(f > 0 for f in report.folded):  # NaN (no answer) fails too
            p.append(f"events folded per worker: {report.folded}")
        for m in report.workers:
            if m.growth > plan.tolerance:
                p.append(f"{m.name}'s memory grew {m.growth:+.1%} once warm "
                         f"({m.warm:.0f} -> {m.end:.0f} MB; tolerance {plan.tolerance:.0%})")
    return report


def chart(series: dict[str, list[tuple[float, float]]], title: str, width: int = 90,
          height: int = 14) -> str:
    """Several series as one terminal chart (plain text unless stdout is a terminal)."""
    import plotext

    fig = plotext.figure
    fig.clear()
    try:
        fig.plot_size(width, height)
        markers = ("hd", "x", "•", "+")
        for (label, points), marker in zip(series.items(), markers, strict=False):
            if points:
                fig.draw(fig.signal([t for t, _ in points], [v for _, v in points],
                                    marker=marker).lines().label(label))
        fig.legend(len(series) > 1)
        fig.title(title)
        text = str(fig.build())
    finally:
        fig.clear()
    return text if sys.stdout.isatty() else re.sub(r"\x1b\[[0-9;]*m", "", text)


def render(report: SoakReport, say: Callable[[str], None] = print) -> None:
    """The report, as the bench prints it."""
    plan = report.plan
    if report.lag:
        say(chart({"lag": [(t, float(n)) for t, n in report.lag]},
                  "consumer lag of ml.predictions (messages) over seconds of load"))
    if report.workers:
        series = {m.name: m.samples for m in report.workers}
        if report.broker is not None:
            series["broker"] = report.broker.samples
        say(chart(series, "resident memory (MB) over seconds of load"))
    if report.buckets:
        say(chart({"events/s": report.buckets},
                  f"events produced per second, per {BUCKET_S:g} s"))
    if report.seconds:
        say(f"rate held: {report.rate_held:,.1f} events/s for {report.seconds:,.0f} s "
            f"(target {plan.total_rate:,.1f}; slowest {BUCKET_S:g} s: "
            f"{report.slowest_bucket:,.1f}); {report.events:,} events in "
            f"{report.messages:,} messages ({report.messages / report.seconds:,.1f}/s)")
        during = [n for t, n in report.lag if t <= report.seconds]
        if during:
            worst = max(report.lag[: len(during)], key=lambda x: x[1])
            say(f"lag (ml.predictions, committed vs end offsets, every "
                f"{plan.lag_every_s:g} s): mean {statistics.fmean(during):,.0f}, max "
                f"{worst[1]:,} messages at {worst[0]:.0f} s; at the end {report.lag_end} "
                + (f"(drained {report.drained_after:.1f} s after the last message)"
                   if report.drained_after is not None else "(NOT drained)")
                + ("; ends read as the producer acknowledged them (Tansu)"
                   if report.tansu else ""))
        say(f"counted in ml.stats: {sum(report.counted.values()):,} of {report.events:,} "
            f"events")
    for i, held in enumerate(report.assignments):
        say(f"partitions {'at the start' if i == 0 else 'at the end'}: "
            + "; ".join(f"{m}: {ps}" for m, ps in sorted(held.items())))
    if report.folded:
        say("events folded (sentinelle_events_total): "
            + ", ".join(f"worker {i + 1} {f:,.0f}" for i, f in enumerate(report.folded))
            + "; CPU " + ", ".join(f"worker {i + 1} {c:.0f} s ({c / max(report.seconds, 1):.2f}"
                                  " cores)" for i, c in enumerate(report.cpu)))
    for m in report.workers:
        say(f"{m.name} RSS: {m.warm:.0f} MB warm (at {m.warm_at:.0f} s), {m.end:.0f} MB at "
            f"the end ({m.growth:+.1%}; tolerance {plan.tolerance:.0%}); trend after warm "
            f"{m.per_hour:+.1f} MB/h")
    if report.broker is not None and report.seconds:
        b = report.broker
        first = b.samples[0][1] if b.samples else 0.0
        per_min = (b.end - first) / (report.seconds / 60)
        say(f"broker RSS (Tansu, every record in memory, retention.ms not honoured): "
            f"{first:.0f} MB at the start, {b.end:.0f} MB at the end: {per_min:+.1f} MB/min "
            f"at {plan.total_rate:g} events/s, ~{per_min * 60:,.0f} MB per hour of soak")
    if not all(report.alive) or not report.ok:
        for i, tail in enumerate(report.log_tails):
            say(f"--- worker {i + 1} log tail ---\n{tail}")
    say("held." if report.ok else "DID NOT HOLD:\n  " + "\n  ".join(report.problems))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    d = SoakPlan()
    ap.add_argument("--minutes", type=float, default=d.minutes)
    ap.add_argument("--models", type=int, default=d.models)
    ap.add_argument("--rate", type=float, default=d.rate, help="events/s per model")
    ap.add_argument("--batch", type=int, default=d.batch,
                    help="events per message of the batch-form models")
    ap.add_argument("--partitions", type=int, default=d.partitions)
    ap.add_argument("--window-s", type=float, default=d.window_s,
                    help="the workers' windows.size_s")
    ap.add_argument("--warmup-s", type=float, default=None,
                    help="when a worker's memory counts as warm (default: half the run, at "
                         "least 60 s)")
    ap.add_argument("--tolerance", type=float, default=d.tolerance,
                    help="end RSS at most warm RSS x (1 + tolerance)")
    ap.add_argument("--retention-minutes", type=float, default=d.retention_minutes)
    args = ap.parse_args()
    plan = SoakPlan(minutes=args.minutes, models=args.models, rate=args.rate, batch=args.batch,
                    partitions=args.partitions, window_s=args.window_s, warmup_s=args.warmup_s,
                    tolerance=args.tolerance, retention_minutes=args.retention_minutes)
    with tempfile.TemporaryDirectory(prefix="sentinelle-soak-") as tmp:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if servers:
            report = asyncio.run(soak(servers, plan, Path(tmp)))
        else:
            broker = EmbeddedBroker(port=free_port())  # run here, to sample its memory
            proc = subprocess.Popen(broker.command(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                wait_for_port(broker.host, broker.port)
                report = asyncio.run(soak(broker.bootstrap_servers, plan, Path(tmp), proc.pid))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        render(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
