"""``sentinelle demo``: the whole system on one machine, in about two minutes.

1. a broker: the embedded Tansu broker on a free loopback port (or the cluster
   in ``KAFKA_BOOTSTRAP_SERVERS``, with topic names made unique for this run);
2. a Sentinelle worker, as a child process, with a demo configuration that
   shrinks windows to 5 s so incidents show within seconds;
3. training profiles of the three model versions, published to ``ml.references``;
4. the ``demo`` simulator scenario: a latency regression, an error spike, an
   outage and training/serving skew on three models, then recovery, with
   malformed messages mixed in;
5. a live view of ``ml.alerts`` and ``ml.deadletter``, then a summary.

Exits 0 when every expected alert class was triggered and then resolved and
the malformed messages were dead-lettered; 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import yaml
from aiokafka import AIOKafkaConsumer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from detectors.profile import build_profile
from streams.broker import EmbeddedBroker, ensure_topics
from streams.config import load_settings
from streams.profile_cli import publish_profile
from streams.simulate import SCENARIOS, run, training_rows

__all__ = ["run_demo", "demo_config"]

GRACE_S = 30.0  # after the scenario, wait this long at most for the last resolves


def demo_config(prefix: str = "") -> dict[str, Any]:
    """Settings that make a 95-second scenario tell its story (5 s windows)."""
    return {
        "topics": {name: f"{prefix}ml.{name}"
                   for name in ("predictions", "feedback", "alerts", "deadletter", "stats",
                                   "references", "silences")},
        "worker": {"app_id": f"{prefix}sentinelle-demo", "batch_within_s": 0.2, "tick_s": 0.5,
                   "idle_close_s": 8, "web_port": 0,
                   # recommender v3 is replaced by v4 mid-demo: forget it (and resolve
                   # what it still had firing) after 20 s of silence
                   "series_ttl_s": 20},
        "windows": {"size_s": 5, "allowed_lateness_s": 1},
        "latency": {"p99_threshold_ms": 400, "min_events": 20},
        "error_rate": {"threshold": 0.05, "min_events": 20},
        "outage": {"k": 10, "floor_s": 6, "min_arrivals": 10},
        "skew": {"window_events": 400, "hop_events": 100, "run_length_events": 1_000_000},
        "quality": {"window_events": 200},
        "drift": {"baseline_factor": 1},  # 400 recent values against the 400 before
        # a flapping alert resolves after 15 s of quiet (10 min in production)
        "alerts": {"flap_window_s": 120, "flap_hold_s": 15},
        "burn_rate": {"slow_ms": 400, "rules": [
            {"name": "page", "long_s": 60, "short_s": 10, "factor": 14.4, "severity": "critical"},
            {"name": "ticket", "long_s": 180, "short_s": 30, "factor": 6, "severity": "error"},
        ]},
    }


class _View:
    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.elapsed = 0.0
        self.sent = 0
        self.alerts: list[dict[str, Any]] = []
        self.dead: Counter[str] = Counter()
        self.status = "starting"

    def render(self) -> Group:
        table = Table(title="ml.alerts", expand=True)
        for col in ("event time", "action", "severity", "dedup_key", "summary"):
            table.add_column(col, overflow="fold")
        for a in self.alerts[-14:]:
            p = a["payload"]
            colour = "red" if a["event_action"] == "trigger" else "green"
            table.add_row(p["timestamp"][11:19], f"[{colour}]{a['event_action']}[/]",
                          p["severity"], a["dedup_key"], p["summary"])
        dead = ", ".join(f"{k} x{v}" for k, v in sorted(self.dead.items())) or "none yet"
        header = Table.grid(padding=(0, 2))
        header.add_row(
            ProgressBar(total=self.duration, completed=min(self.elapsed, self.duration), width=40),
            f"t={self.elapsed:5.1f}s of {self.duration:.0f}s   events sent: {self.sent:,}   "
            f"{self.status}")
        return Group(
            Panel(header, title="Sentinelle demo"),
            table,
            Panel(dead, title="ml.deadletter (by reason)"),
        )


def _wait_ready(log_path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}); see {log_path}")
        if "Worker]: Ready" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the worker was not ready after {timeout:.0f} s; see {log_path}")


def run_demo(rate: float = 40.0, bootstrap_servers: str | None = None) -> int:
    console = Console()
    scenario = SCENARIOS["demo"]
    workdir = Path(tempfile.mkdtemp(prefix="sentinelle-demo-"))
    broker: EmbeddedBroker | None = None
    prefix = ""
    if bootstrap_servers:
        prefix = f"demo-{uuid.uuid4().hex[:6]}."  # a shared cluster: keep our topics apart
        servers = bootstrap_servers
        console.print(f"using the Kafka cluster at {servers}")
    else:
        broker = EmbeddedBroker().start()
        servers = broker.bootstrap_servers
        console.print(f"started the embedded broker (Tansu) on {servers}")
    cfg = demo_config(prefix)
    cfg_path = workdir / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log_path = workdir / "worker.log"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers}
    worker: subprocess.Popen[bytes] | None = None
    view = _View(scenario.duration_s)
    try:
        topics = cfg["topics"]
        asyncio.run(ensure_topics(servers, topics.values(), 4, compacted=[topics["references"]]))
        settings = load_settings(cfg_path, servers)
        profiles = [(spec, v) for spec in scenario.models for v in spec.versions]
        for spec, version in profiles:  # what each version was trained on
            profile = build_profile(pl.LazyFrame(training_rows(spec, 5000)), spec.model, version)
            asyncio.run(publish_profile(settings, profile))
        console.print(f"published training profiles of {len(profiles)} model versions")
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--config", str(cfg_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        console.print(f"starting a Sentinelle worker (pid {worker.pid}, log {log_path}) ...")
        _wait_ready(log_path, worker, timeout=90)
        console.print(f"worker ready; scenario: {scenario.description}")
        asyncio.run(_live(servers, topics, scenario, rate, view, console))
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=20)
            if worker.poll() is None:
                worker.kill()
        if broker is not None:
            broker.stop()
    return _summary(console, view, scenario.expect)


async def _live(servers: str, topics: dict[str, str], scenario: Any, rate: float, view: _View,
                console: Console) -> None:
    consumer = AIOKafkaConsumer(topics["alerts"], topics["deadletter"], bootstrap_servers=servers,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()

    def progress(t: float, sent: int) -> None:
        view.elapsed, view.sent = t, sent

    async def watch() -> None:
        async for msg in consumer:
            rec = orjson.loads(msg.value or b"null")
            if msg.topic == topics["alerts"]:
                view.alerts.append(rec)
            else:
                view.dead[rec["reason"].split(":", 1)[0]] += 1

    watcher = asyncio.create_task(watch())
    try:
        with Live(view.render(), console=console, refresh_per_second=4) as live:
            view.status = "traffic flowing"
            # Healthy traffic goes on after the scenario (silence would be an outage)
            # until every alert has resolved, GRACE_S at most.
            sim = asyncio.create_task(run(servers, topics["predictions"], scenario, rate,
                                          duration_s=scenario.duration_s + GRACE_S,
                                          on_progress=progress))
            while not sim.done():
                if view.elapsed >= scenario.duration_s:
                    if not _firing(view.alerts):
                        sim.cancel()
                        break
                    view.status = "scenario over, healthy traffic: waiting for the last resolves"
                live.update(view.render())
                await asyncio.sleep(0.25)
            with contextlib.suppress(asyncio.CancelledError):
                await sim
            view.status = "done"
            live.update(view.render())
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await consumer.stop()


def _firing(alerts: list[dict[str, Any]]) -> set[str]:
    firing: set[str] = set()
    for a in alerts:
        (firing.add if a["event_action"] == "trigger" else firing.discard)(a["dedup_key"])
    return firing


def _summary(console: Console, view: _View, expect: tuple[str, ...]) -> int:
    triggered: Counter[str] = Counter()
    resolved: Counter[str] = Counter()
    for a in view.alerts:
        (triggered if a["event_action"] == "trigger" else resolved)[a["payload"]["class"]] += 1
    table = Table(title="Summary")
    for col in ("alert class", "triggered", "resolved"):
        table.add_column(col)
    for cls in sorted(set(triggered) | set(resolved) | set(expect)):
        table.add_row(cls, str(triggered[cls]), str(resolved[cls]))
    console.print(table)
    console.print(f"dead-lettered: {sum(view.dead.values())} "
                  f"({', '.join(f'{k} x{v}' for k, v in sorted(view.dead.items()))})")
    still = _firing(view.alerts)
    if still:
        console.print(f"still firing: {', '.join(sorted(still))}")
    missing = [c for c in expect if not (triggered[c] and resolved[c])]
    ok = not missing and sum(view.dead.values()) > 0
    if ok:
        console.print("[bold green]demo passed[/]: every incident was caught and resolved")
        return 0
    console.print(f"[bold red]demo incomplete[/]: not triggered and resolved: {missing}")
    return 1
