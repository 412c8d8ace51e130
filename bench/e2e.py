"""Speed end to end: a Sentinelle worker through the real broker, beside Faust's own ceiling.

What a user would measure. A broker (the embedded one, or
``KAFKA_BOOTSTRAP_SERVERS``); ``--models`` models (5) with 12 features each
(8 numeric, 4 categorical), a training profile published for every version;
10 % of the traffic from a canary version announced on ``ml.deployments``;
labels for half the predictions on ``ml.feedback``; a metrics source of 20
series on ``ml.metrics``. Every check on, the default settings (the label
join included).

Runs, each on its own freshly produced topics, timed from the arrival of the
worker's first slice (its log) to the fold of its last message (the gauge
``sentinelle_last_fold_timestamp_seconds``, set when the messages are counted):

1. **batch form**: ``--events`` predictions (1,000,000; 100 per message), and
   their labels in the batch form too;
2. **single-event form**: ``--single-events`` predictions (60,000), one per
   message, labels likewise;
3. **sentinelle.client**: events of the same single-event producer, batched by
   :class:`sentinelle.client.Client` (the fast path for services that log one
   prediction at a time): ``--client-events`` predictions (600,000, ten times
   the single-event run's, so that the run lasts long enough for a steady
   rate rather than the worker's first slices), and their labels.

For (1) and (2), a Faust pass-through agent (``bench/_passthrough.py``: it only
decodes each message) reads the same topics in the same run, so the ratio
"worker / pass-through" compares like with like on this machine at this
moment. Per run it prints events/s, the ratio, the worker's cores busy
(CPU seconds / wall seconds), its peak resident memory (VmHWM) and the
consumer lag over the run (plotted in the terminal; ``--plot F.png`` writes
the charts when matplotlib is there).

4. **memory per model version**: the batch form's worker alone for
   ``--memory-models`` models (2 and 10), ``--memory-events`` predictions per
   model (100,000) and their labels: peak resident memory per model count, and
   the slope, MB per model version (each model has a stable and a canary
   version), beside the fixed part (imports, input in flight).

5. **end-to-end delay**: a worker fed in real time (``--delay-seconds``, 40,
   at 200 events/s per model, 5 s windows, every model 20 times slower two
   windows in four, so that latency alerts trigger and resolve all along);
   for each closed window, the time from the window's close (its end plus the
   allowed lateness, on the wall clock: events carry the time they were
   produced) to its statistics on ``ml.stats``, and to each alert on
   ``ml.alerts``: p50 and p99, against ``2 x batch_within_s`` + the close.
   Windows that closed before the worker read its first slice (it was still
   joining its consumer group) are left out.

It exits non-zero, with the worker's log tail, if a worker dies or a run does
not finish within ``--timeout`` seconds. ``--quick`` (what the test suite
runs) is the same with 20,000 / 3,000 events, memory runs of 1 and 2 models of 1,000
predictions, and a 15 s delay run: it checks
that everything completes and the table prints, not the figures.

``--only RUN`` (repeatable: ``batch``, ``single-event``, ``client``, ``memory``,
``delay``)
does only those runs; ``--set KEY=VALUE`` (repeatable; a dotted key, the value
read as YAML) changes the workers' configuration, so configurations compare
without editing code between runs, e.g. ``--only single-event --set
worker.faust_metrics=false``.

    .venv/bin/python bench/e2e.py [--quick] [--events N] [--single-events N] [--client-events N]
        [--only RUN]... [--set KEY=VALUE]...
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from bench.soak import chart  # noqa: E402
from detectors.profile import build_profile  # noqa: E402
from sentinelle.client import Client  # noqa: E402
from streams.config import TopicSettings  # noqa: E402
from streams.runtime.app import pool_topic_name, topic_max_bytes  # noqa: E402
from streams.runtime.kafka import ensure_topics  # noqa: E402
from streams.tools.broker import EmbeddedBroker, free_port  # noqa: E402
from streams.tools.processes import stop_process  # noqa: E402

PARTITIONS = 4
LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
NUMERIC = [f"x{i}" for i in range(8)]
CATEGORICAL = {f"c{i}": ["a", "b", "c", "d", "e"] for i in range(4)}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- traffic ------------------------------------------------------------------------


def model_names(n: int) -> list[str]:
    return [f"e2e-{i:02d}" for i in range(n)]


def frame(rng: np.random.Generator, n: int) -> dict[str, Any]:
    cols: dict[str, Any] = {name: rng.normal(i, 1 + i / 4, n) for i, name in enumerate(NUMERIC)}
    for name, values in CATEGORICAL.items():
        cols[name] = rng.choice(values, n, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    z = 0.4 * cols["x0"] - 0.3 * (cols["x1"] - 1)
    cols["prediction"] = 1 / (1 + np.exp(-z))
    return cols


def events(models: list[str], n: int, t0: float, rate: float, seed: int,
           slow: Callable[[str, float], bool] | None = None) -> list[dict[str, Any]]:
    """``n`` predictions round-robin over ``models`` from ``t0`` at ``rate`` per model;
    10 % of each model's traffic from canary version v2; 20 times slower where
    ``slow(model, ts)``."""
    rng = np.random.default_rng(seed)
    cols = frame(rng, n)
    latency = rng.gamma(4.0, 10.0, n)
    out = []
    for i in range(n):
        model = models[i % len(models)]
        ts = t0 + (i // len(models)) / rate
        canary = rng.random() < 0.1
        lat = float(latency[i])
        if slow is not None and slow(model, ts):
            lat *= 20
        out.append({
            "event_id": f"{model}-{seed}-{i}", "ts": ts, "model": model,
            "version": "v2" if canary else "v1", "cohort": "canary" if canary else "stable",
            "latency_ms": round(lat, 2), "status": "ok",
            "features": {**{k: round(float(cols[k][i]), 4) for k in NUMERIC},
                         **{k: str(cols[k][i]) for k in CATEGORICAL}},
            "prediction": round(float(cols["prediction"][i]), 4)})
    return out


def labels(preds: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Labels for half the predictions, 30 s of event time later."""
    rng = np.random.default_rng(seed + 1)
    return [{"event_id": p["event_id"], "ts": p["ts"] + 30, "model": p["model"],
             "version": p["version"], "label": int(rng.random() < p["prediction"])}
            for p in preds[::2]]


def metric_points(source: str, t0: float, seconds: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    return [{"source": source, "metric": f"m{j}", "ts": t0 + s, "value": float(rng.normal(50, 5))}
            for s in range(0, int(seconds), 5) for j in range(20)]


def profile_of(model: str, version: str) -> dict[str, Any]:
    cols = frame(np.random.default_rng(11), 20_000)
    cols["label"] = (np.random.default_rng(12).random(20_000) < cols["prediction"]).astype(int)
    return build_profile(pl.DataFrame(cols).lazy(), model, version, created_at=time.time())


def grouped(items: list[dict[str, Any]], key: str, per: int) -> list[tuple[bytes, bytes, int]]:
    """Messages of ``per`` events (per key, in order): (key, value, events)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by.setdefault(it[key], []).append(it)
    out = []
    for k, rows in by.items():
        for i in range(0, len(rows), per):
            chunk = rows[i:i + per]
            value = orjson.dumps(chunk if per > 1 else chunk[0])
            out.append((k.encode(), value, len(chunk)))
    return out


async def send(servers: str, topic: str, messages: list[tuple[bytes, bytes, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=20,
                                max_request_size=2_000_000, max_batch_size=1_000_000)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v, _ in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# -- the processes ------------------------------------------------------------------


def rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Worker:
    servers: str
    config: dict[str, Any]
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> Worker:
        self.config["worker"]["web_port"] = self.port
        path = self.workdir / f"{self.config['worker']['app_id']}.yaml"
        path.write_text(yaml.safe_dump(self.config))
        self.log_path = path.with_suffix(".log")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.servers})
        deadline = time.monotonic() + timeout
        while self.metrics() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Failed("the worker did not start", self)
            time.sleep(0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def first_slice_at(self) -> float | None:
        """When the predictions agent got its first slice (the worker logs it once), as
        Unix time; None before."""
        for line in self.log().splitlines():
            if "predictions: the first slice arrived" not in line:
                continue
            if line.startswith("{"):  # worker.log_format: json
                stamp = str(orjson.loads(line)["ts"]).replace("Z", "+00:00")
                return datetime.fromisoformat(stamp).timestamp()
            found = LOG_TIME.match(line)  # Faust's text format, local time
            if found:
                return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    def metrics(self) -> dict[str, float] | None:
        """``name{labels}`` → value from /metrics (None: no answer)."""
        try:
            page = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", None, 5)
        except OSError:
            return None
        out = {}
        for line in page.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        stop_process(self.proc, grace_s=30)


class Failed(SystemExit):
    def __init__(self, why: str, worker: Worker | None = None) -> None:
        tail = f"\nworker log tail:\n{worker.log()[-4000:]}" if worker is not None else ""
        super().__init__(f"e2e: {why}{tail}")


# -- one run -------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    events: int
    messages: int
    seconds: float = float("nan")
    cores: float = float("nan")
    peak_mb: float = float("nan")
    lag: list[tuple[float, int]] = field(default_factory=list)
    passthrough: float = float("nan")   # events/s
    processing_s: float = float("nan")  # the worker's time in process(), whole run
    publishing_s: float = float("nan")  # ... and publishing outputs and state, acknowledged

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def topics_for(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}.{t}" for name, t in TopicSettings().model_dump().items()}


RUNS = {"batch": "batch form", "single-event": "single-event",
        "client": "sentinelle.client", "memory": "memory per model version",
        "delay": "end-to-end delay"}
EXTRA: dict[str, Any] = {}  # --set: merged into every worker's configuration, last


def merge(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` merged into ``into`` (nested dicts key by key), in place."""
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def setting(text: str) -> dict[str, Any]:
    """``a.b=VALUE`` → ``{"a": {"b": VALUE}}``, the value read as YAML."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    out: Any = yaml.safe_load(value)
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


def config(topics: dict[str, str], app_id: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"topics": topics, "kafka": {"partitions": PARTITIONS},
                           "worker": {"app_id": app_id}}
    merge(cfg, overrides)
    return merge(cfg, copy.deepcopy(EXTRA))


async def prepare(servers: str, prefix: str, models: list[str]) -> dict[str, str]:
    """Topics, profiles and the canary announcement of a run."""
    from streams.cli.profile import publish_profile
    from streams.config import Settings

    topics = topics_for(prefix)
    settings = Settings(topics=topics, kafka={"partitions": PARTITIONS}).with_bootstrap(servers)
    await ensure_topics(servers, [*topics.values(), pool_topic_name(settings)], PARTITIONS,
                        compacted=settings.topics.compacted(),
                        max_message_bytes=topic_max_bytes(settings))
    for m in models:
        for v in ("v1", "v2"):
            await publish_profile(settings, profile_of(m, v))
    await send(servers, topics["deployments"], [
        (m.encode(), orjson.dumps({"model": m, "stable_version": "v1", "canary_version": "v2",
                                   "traffic_percent": 10, "phase": "started",
                                   "ts": time.time() - 7200}), 1) for m in models])
    return topics


async def lag_of(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str,
                 parts: list[TopicPartition]) -> int:
    ends = await consumer.end_offsets(parts)
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=parts)
    except Exception:
        return -1
    return sum(max(0, ends[tp] - (committed[tp].offset if tp in committed and
                                  committed[tp].offset >= 0 else 0)) for tp in parts)


async def time_worker(servers: str, run: Run, topics: dict[str, str], total_messages: int,
                      workdir: Path, timeout: float) -> None:
    app_id = f"{topics['predictions'].split('.')[0]}-w-{uuid.uuid4().hex[:6]}"
    w = Worker(servers, config(topics, app_id), workdir).start()
    inputs = ("predictions", "feedback", "deployments")  # what total_messages counts
    parts = [TopicPartition(topics[t], p) for t in ("predictions", "feedback")
             for p in range(PARTITIONS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        cpu0 = cpu_seconds(w.proc.pid)  # type: ignore[union-attr]
        first = last = None
        read = 0.0
        t0 = time.monotonic()
        deadline = t0 + timeout
        next_lag = 0.0
        while True:
            m = w.metrics()
            if w.proc is None or w.proc.poll() is not None:
                raise Failed(f"the worker died during the {run.name} run", w)
            if time.monotonic() > deadline:
                raise Failed(f"the {run.name} run did not finish in {timeout:.0f} s", w)
            if m is not None:
                read = sum(v for k, v in m.items() if k.startswith("sentinelle_messages_total")
                           and any(f'"{topics[t]}"' in k for t in inputs))
                if first is None:  # the predictions agent's first slice (its log says when)
                    first = w.first_slice_at()
                if read >= total_messages and first is not None:
                    # messages are counted once folded, with the time of the fold
                    last = m['sentinelle_last_fold_timestamp_seconds{agent="predictions"}']
                    busy_s = {k: v for k, v in m.items() if k.startswith(
                        ("sentinelle_batch_seconds_sum", "sentinelle_publish_seconds_sum"))
                        and 'agent="predictions"' in k}
                    run.processing_s = sum(v for k, v in busy_s.items() if "_batch_" in k)
                    run.publishing_s = sum(v for k, v in busy_s.items() if "_publish_" in k)
                    break
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + 1.0
                run.lag.append((time.monotonic() - t0,
                                await lag_of(admin, consumer, app_id, parts)))
            # /metrics is no free page (about 10 ms of the worker's CPU per scrape for 5
            # models' series, which the pass-through does not pay: 2 % of the worker's
            # samples at one scrape per 0.5 s): every 2 s, still far more often than a
            # Prometheus scrapes. The times do not depend on it: the first slice's from
            # the worker's log, the last fold's from its gauge.
            await asyncio.sleep(2.0)
        assert first is not None and last is not None
        run.seconds = last - first
        run.cores = (cpu_seconds(w.proc.pid) - cpu0) / max(run.seconds, 1e-9)
        run.peak_mb = rss_peak_mb(w.proc.pid)
    finally:
        await consumer.stop()
        await admin.close()
        w.stop()


def time_passthrough(servers: str, topics: list[str], expect: int, timeout: float) -> float:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers,
           "PASSTHROUGH_TOPICS": ",".join(topics), "PASSTHROUGH_EXPECT": str(expect),
           "PASSTHROUGH_GROUP": f"pass-{uuid.uuid4().hex[:8]}",
           "PASSTHROUGH_PARTITIONS": str(PARTITIONS)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "_passthrough.py")],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    # Faust's worker sends what the agent prints to its log (stderr)
    lines = [x[x.index('{"first"'):].strip() for x in (done.stdout + done.stderr).splitlines()
             if '{"first"' in x]
    if not lines:
        raise Failed(f"the Faust pass-through did not finish: {done.stderr[-2000:]}")
    r = orjson.loads(lines[-1])
    return r["events"] / max(r["last"] - r["first"], 1e-9)


async def throughput_run(servers: str, name: str, per: int, n: int, models: list[str],
                         workdir: Path, timeout: float, via_client: bool = False,
                         passthrough: bool = True) -> Run:
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    topics = await prepare(servers, prefix, models)
    t0 = time.time() - 3 * 3600
    preds = events(models, n, t0, rate=1000.0, seed=len(name))
    labs = labels(preds, seed=len(name))
    pts = metric_points("e2e-host", t0, n / len(models) / 1000.0)
    say(f"{name}: producing {len(preds):,} predictions, {len(labs):,} labels, "
        f"{len(pts):,} metric points")
    if via_client:
        msgs = 0
        for topic, items in ((topics["predictions"], preds), (topics["feedback"], labs)):
            async with Client(servers, topic, max_events=1000, linger_s=0.2) as client:
                for e in items:
                    await client.send(e)
            msgs += client.sent_messages
    else:
        pm, lm = grouped(preds, "model", per), grouped(labs, "model", per)
        await send(servers, topics["predictions"], pm)
        await send(servers, topics["feedback"], lm)
        msgs = len(pm) + len(lm)
    await send(servers, topics["metrics"], grouped(pts, "source", per))
    run = Run(name, len(preds) + len(labs), msgs)
    if passthrough and not via_client:
        say(f"{name}: Faust pass-through")
        run.passthrough = time_passthrough(servers, [topics["predictions"], topics["feedback"]],
                                           run.events, timeout)
    say(f"{name}: Sentinelle worker")
    # every input message: predictions and labels, plus the deployments announcement
    await time_worker(servers, run, topics, msgs + len(models), workdir, timeout)
    return run


async def memory_runs(servers: str, counts: list[int], per_model: int, workdir: Path,
                      timeout: float) -> list[tuple[int, Run]]:
    """The batch form's worker alone (no pass-through) for each number of models, the
    same predictions per model: its peak memory against the model versions it holds
    (each model has a stable and a canary version)."""
    out = []
    for k in counts:
        name = f"batch form, {k} models"
        out.append((k, await throughput_run(servers, name, 100, per_model * k,
                                            model_names(k), workdir, timeout,
                                            passthrough=False)))
    return out


def memory_report(sweep: list[tuple[int, Run]], per_model: int) -> None:
    """Peak RSS per model count, and the slope: MB per model version."""
    print(f"\nmemory: the batch form's worker alone, {per_model:,} predictions per model "
          f"(and labels for half), each model a stable and a canary version\n")
    print("| models | model versions | events | peak RSS MB |")
    print("|---:|---:|---:|---:|")
    for k, r in sweep:
        print(f"| {k} | {2 * k} | {r.events:,} | {r.peak_mb:,.0f} |")
    if len(sweep) >= 2:
        (k0, r0), (k1, r1) = sweep[0], sweep[-1]
        slope = (r1.peak_mb - r0.peak_mb) / (2 * (k1 - k0))
        fixed = r0.peak_mb - slope * 2 * k0
        print(f"\nabout {slope:.1f} MB per model version on top of {fixed:.0f} MB "
              f"(the fit through {k0} and {k1} models)")


# -- end-to-end delay ----------------------------------------------------------------


async def delay_run(servers: str, models: list[str], seconds: float, workdir: Path,
                    ) -> tuple[list[float], list[float], float]:
    """(window-close → ml.stats delays, window-close → alert delays, the bound), seconds."""
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    topics = await prepare(servers, prefix, models)
    size, lateness, within = 5.0, 1.0, 0.5
    w = Worker(servers, config(topics, f"{prefix}-delay",
                               windows={"size_s": size, "allowed_lateness_s": lateness},
                               worker={"batch_within_s": within, "idle_close_s": 30.0},
                               latency={"p99_threshold_ms": 400, "min_events": 20},
                               burn_rate={"enabled": False}), workdir).start()
    got: list[tuple[float, dict[str, Any], str]] = []

    async def collect(topic: str, kind: str) -> None:
        # fetches answered at once (the broker may otherwise hold one up to 0.5 s
        # waiting for data, which would count as the worker's delay)
        c = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                             auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await c.start()
        try:
            while True:
                for recs in (await c.getmany(timeout_ms=100)).values():
                    now = time.time()
                    got.extend((now, orjson.loads(r.value), kind) for r in recs)
        finally:
            await c.stop()

    collectors = [asyncio.create_task(collect(topics["stats"], "stats")),
                  asyncio.create_task(collect(topics["alerts"], "alert"))]
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5)
    await producer.start()
    try:
        rate, tick = 200.0, 0.05
        start = time.time()
        def slow(model: str, ts: float) -> bool:
            # every model slow for 2 windows, then fast for 2, each a window after the
            # previous one: alerts trigger and resolve at most window closes, so the
            # delays are many samples, not one
            k = models.index(model)
            return (ts - start) > 2 * size and int((ts - start) / size - k) // 2 % 2 == 1

        i = 0
        while time.time() - start < seconds:
            now = time.time()
            batch = []
            for m in models:
                for _ in range(int(rate * tick)):
                    e = events([m], 1, now, rate, seed=i, slow=slow)[0]
                    e["event_id"] = f"{m}-d{i}"
                    i += 1
                    batch.append(e)
                await producer.send(topics["predictions"], key=m.encode(),
                                    value=orjson.dumps([b for b in batch if b["model"] == m]))
            await asyncio.sleep(max(0.0, tick - (time.time() - now)))
            if w.proc is None or w.proc.poll() is not None:
                raise Failed("the worker died during the delay run", w)
        await producer.flush()
        await asyncio.sleep(size + lateness + 3 * within)  # the last closes arrive
        # windows that closed before the worker read anything (it was joining its
        # group: ~5 s on the embedded broker) measure the start, not the worker
        began = w.first_slice_at() or start
    finally:
        await producer.stop()
        for c in collectors:
            c.cancel()
        w.stop()
    stats_d, alert_d = [], []
    for arrived, rec, kind in got:
        if kind == "stats":
            end = pl.Series([rec["window"]["end"]]).str.to_datetime().dt.epoch("ms")[0] / 1000
            if end + lateness >= began:
                stats_d.append(arrived - (end + lateness))
        elif rec.get("event_action") in ("trigger", "resolve"):
            ts = pl.Series([rec["payload"]["timestamp"]]).str.to_datetime().dt.epoch("ms")[0]
            if ts / 1000 + lateness >= began:
                alert_d.append(arrived - (ts / 1000 + lateness))
    return stats_d, alert_d, 2 * within


# -- report ----------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def report(runs: list[Run], delays: tuple[list[float], list[float], float] | None,
           models: int, plot: str | None) -> None:
    if not runs and delays is None:  # --only memory: memory_report prints its own
        return
    print(f"\nSentinelle worker vs Faust pass-through, {models} models x 12 features, every "
          f"check on (profiles, labels for half, canary cohort, metrics source); "
          f"{PARTITIONS} partitions, one worker\n")
    if EXTRA:
        print(f"worker settings changed (--set): {orjson.dumps(EXTRA).decode()}\n")
    print("| run | events | messages | worker events/s | pass-through events/s | ratio | "
          "worker cores | peak RSS MB | max lag (messages) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        timed = r.seconds >= 1.0  # shorter than a second: polling /metrics cannot time it
        ratio = r.rate / r.passthrough if r.passthrough == r.passthrough else float("nan")
        rate = f"{r.rate:,.0f}" if timed else f"(in {r.seconds:.2f} s: too short to time)"
        print(f"| {r.name} | {r.events:,} | {r.messages:,} | {rate} | "
              f"{r.passthrough:,.0f} | {ratio:.0%} | {r.cores if timed else float('nan'):.2f} | "
              f"{r.peak_mb:,.0f} | {max((v for _, v in r.lag), default=0):,} |")
    for r in runs:
        if r.seconds >= 1.0 and r.processing_s == r.processing_s:
            print(f"\n{r.name}: of the worker's {r.seconds:.1f} s, {r.processing_s:.1f} s "
                  f"processing micro-batches, {r.publishing_s:.1f} s publishing their outputs "
                  f"and state (acknowledged), the rest Faust and waiting")
    single = next((r for r in runs if r.name == "single-event"), None)
    client = next((r for r in runs if r.name == "sentinelle.client"), None)
    if single and client and client.seconds >= 1.0 and single.seconds >= 1.0:
        print(f"\nsentinelle.client batching a single-event producer's events: "
              f"{client.rate / single.rate:.1f}x the single-event rate")
    stats_d: list[float] = []
    alert_d: list[float] = []
    if delays is not None:
        stats_d, alert_d, bound = delays
        print(f"\nend-to-end delay from a window's close (end + allowed lateness) to its "
              f"output, {len(stats_d)} windows, {len(alert_d)} alerts; bound 2 x "
              f"batch_within_s = {bound:.1f} s:")
        print(f"  ml.stats: p50 {pct(stats_d, 50):.2f} s, p99 {pct(stats_d, 99):.2f} s")
        print(f"  ml.alerts: p50 {pct(alert_d, 50):.2f} s, p99 {pct(alert_d, 99):.2f} s")
    print()
    if runs:
        print(chart({r.name: [(t, float(v)) for t, v in r.lag] for r in runs},
                    "consumer lag (messages) over seconds, per run"))
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            say("--plot needs matplotlib; skipped")
            return
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
        for r in runs:
            a.plot([t for t, _ in r.lag], [v for _, v in r.lag], label=r.name)
        a.set_title("consumer lag (messages)")
        a.legend()
        b.hist([stats_d, alert_d], bins=30, label=["ml.stats", "ml.alerts"])
        b.set_title("delay after the window's close (s)")
        b.legend()
        fig.savefig(plot, dpi=120, bbox_inches="tight")
        say(f"plot written to {plot}")


async def main_async(args: argparse.Namespace, servers: str, workdir: Path) -> None:
    models = model_names(args.models)
    only = set(args.only or RUNS)
    runs = []
    if "batch" in only:
        runs.append(await throughput_run(servers, "batch form", 100, args.events, models,
                                         workdir, args.timeout))
    if "single-event" in only:
        runs.append(await throughput_run(servers, "single-event", 1, args.single_events,
                                         models, workdir, args.timeout))
    if "client" in only:
        runs.append(await throughput_run(servers, "sentinelle.client", 1, args.client_events,
                                         models, workdir, args.timeout, via_client=True))
    sweep = None
    if "memory" in only:
        sweep = await memory_runs(servers, args.memory_models, args.memory_events, workdir,
                                  args.timeout)
    delays = None
    if "delay" in only:
        say("end-to-end delay run")
        delays = await delay_run(servers, models, args.delay_seconds, workdir)
    report(runs, delays, args.models, args.plot)
    if sweep is not None:
        memory_report(sweep, args.memory_events)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small volumes: completes, prints")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--single-events", type=int, default=60_000)
    ap.add_argument("--client-events", type=int, default=600_000,
                    help="predictions of the sentinelle.client run (default 600,000)")
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--memory-models", type=lambda v: [int(x) for x in v.split(",")],
                    default=[2, 10], help="model counts of the memory runs (default 2,10)")
    ap.add_argument("--memory-events", type=int, default=100_000,
                    help="predictions per model in the memory runs (default 100,000)")
    ap.add_argument("--delay-seconds", type=float, default=40.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--only", action="append", choices=sorted(RUNS),
                    help="do only this run (repeatable); all of them by default")
    ap.add_argument("--set", action="append", type=setting, default=[], metavar="KEY=VALUE",
                    help="a worker setting by dotted key, the value read as YAML (repeatable), "
                         "e.g. worker.faust_metrics=false")
    args = ap.parse_args()
    for s in args.set:
        merge(EXTRA, s)
    if args.quick:
        args.events, args.single_events, args.delay_seconds = 20_000, 3_000, 15.0
        args.client_events = 3_000
        args.memory_models, args.memory_events = [1, 2], 1_000
    with tempfile.TemporaryDirectory(prefix="sentinelle-e2e-") as tmp:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if servers:
            asyncio.run(main_async(args, servers, Path(tmp)))
        else:
            with EmbeddedBroker() as broker:
                say(f"embedded broker (Tansu) on {broker.bootstrap_servers}")
                asyncio.run(main_async(args, broker.bootstrap_servers, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
