"""Hours of production-shaped event time through the real broker: what the worker held.

Starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``) and one
Sentinelle worker with default settings (only ``worker.idle_close_s`` is
shortened, so the last windows close once the run's traffic stops), publishes
the training profiles of half the models, then sends the run of
:mod:`streams.tools.loadtest` (by default 10 models at 20 events/s for 2 hours of
event time: 1.44 million predictions, half of them labelled five minutes
later, one metrics source with 20 metrics, both wire forms, hostile inputs and
three incidents) as fast as the broker takes it, and waits until every event
is counted in ``ml.stats``.

It prints what held and what it cost: events and messages sent, events per
second from the first message to the last count, the worker's CPU time and
peak resident memory, dead letters by reason, the incidents' alerts, and the
largest record written to the state changelogs against
``limits.max_record_bytes``; with a terminal chart of events counted and the
worker's memory over the run. It exits non-zero, with the worker's log tail,
when anything did not hold or the worker died.

    python bench/load.py [--models 10] [--rate 20] [--hours 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.cli.profile import publish_profile  # noqa: E402
from streams.config import TopicSettings, load_settings  # noqa: E402
from streams.tools.broker import EmbeddedBroker  # noqa: E402
from streams.tools.loadtest import LoadPlan, check, produce, profiles  # noqa: E402


class Worker:
    """A ``sentinelle worker`` child process, its log, and samples of its CPU and memory."""

    def __init__(self, servers: str, config: dict[str, Any], workdir: Path) -> None:
        self.config_path = workdir / "worker.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "worker.log"
        self.servers = servers
        self.samples: list[tuple[float, float, float]] = []  # (wall s, RSS MB, CPU s)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.servers}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--config",
                 str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while "Worker]: Ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        assert self.proc is not None
        t0 = time.monotonic()
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set() and self.proc.poll() is None:
            try:
                status = Path(f"/proc/{self.proc.pid}/status").read_text()
                stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return
            rss = next(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")) / 1024
            cpu = (int(stat[11]) + int(stat[12])) / tick
            self.samples.append((time.monotonic() - t0, rss, cpu))
            self._stop.wait(1.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def chart(xs: list[float], ys: list[float], title: str, width: int = 90,
          height: int = 14) -> str:
    """One series as a terminal chart (plotext's figure is global: cleared after)."""
    import plotext

    fig = plotext.figure
    fig.clear()
    try:
        fig.plot_size(width, height)
        if xs:
            fig.draw(fig.signal(xs, ys).lines())
        fig.legend(False)
        fig.title(title)
        return str(fig.build())
    finally:
        fig.clear()


async def run(args: argparse.Namespace, servers: str, workdir: Path) -> int:
    prefix = f"load{uuid.uuid4().hex[:8]}"
    topics = {name: f"{prefix}.{t}" for name, t in TopicSettings().model_dump().items()}
    app_id = f"{prefix}-sentinelle"
    worker = Worker(servers, {"topics": topics, "worker": {"app_id": app_id,
                                                           "idle_close_s": 3.0,
                                                           "web_port": 0}}, workdir)
    plan = LoadPlan(models=args.models, rate=args.rate, hours=args.hours, seed=args.seed)
    print(f"plan: {plan.models} models at {plan.rate:g} events/s for {plan.hours:g} h of event "
          f"time ({plan.models * plan.rate * plan.seconds:,.0f} predictions), "
          f"{plan.single_models} of them one event per message, the others "
          f"{plan.batch} per message; labels for {plan.label_share:.0%} of predictions "
          f"{plan.label_delay_s:g} s later; {plan.metrics} metrics every "
          f"{plan.metric_every_s:g} s", flush=True)
    worker.start()
    began = time.monotonic()
    try:
        settings = load_settings(worker.config_path, servers)
        now = time.time()
        for profile in profiles(plan, created_at=now):
            await publish_profile(settings, profile)
        while worker.log().count("reference profile for ") < (plan.models + 1) // 2:
            await asyncio.sleep(0.2)
        counted: list[tuple[float, int]] = []

        def progress(line: str) -> None:
            print(f"  [{time.monotonic() - began:6.1f} s] {line}", flush=True)
            if line.startswith("ml.stats"):
                counted.append((time.monotonic() - began, int(line.split()[1].replace(",", ""))))

        sent_at = time.monotonic()
        produced = await produce(servers, topics, plan, now - plan.seconds - 60, progress)
        print(f"sent {produced.messages:,} messages in {produced.seconds:.1f} s", flush=True)
        report = await check(servers, topics, app_id, plan, produced,
                             settings.limits.max_record_bytes, timeout=args.timeout,
                             progress=progress)
        done_at = time.monotonic()
    finally:
        alive = worker.alive()
        worker.stop()
    events = sum(produced.events.values())
    total = sum(report.counted.values())
    print()
    print(chart([t for t, _ in counted], [n / 1000 for _, n in counted],
                "events counted in ml.stats (thousands) over seconds since the worker started"))
    print(chart([t for t, _, _ in worker.samples], [r for _, r, _ in worker.samples],
                "worker resident memory (MB) over seconds since the worker started"))
    cpu = worker.samples[-1][2] if worker.samples else float("nan")
    peak = max((r for _, r, _ in worker.samples), default=float("nan"))
    print(f"events: {events:,} predictions ({produced.labels:,} labels, "
          f"{produced.metric_points:,} metric points, "
          f"{sum(produced.hostile.values())} hostile) in {produced.messages:,} messages")
    print(f"counted in ml.stats: {total:,} over {report.windows:,} windows "
          f"({'each once' if total == events else 'NOT each once'})")
    print(f"throughput: {events / (done_at - sent_at):,.0f} events/s from the first message "
          f"to the last count ({done_at - sent_at:.1f} s); worker CPU {cpu:.1f} s "
          f"({cpu / max(done_at - began, 1e-9):.2f} cores); peak RSS {peak:,.0f} MB")
    print(f"dead letters: {dict(report.deadletters)} (hostile inputs sent: "
          f"{dict(produced.hostile)})")
    for key in plan.expected_alerts():
        print(f"incident {key}: {report.alerts.get(key)}")
    print(f"state changelogs: {report.records:,} records read, the largest "
          f"{report.largest_record:,} bytes (bound: limits.max_record_bytes = "
          f"{settings.limits.max_record_bytes:,})")
    if not alive:
        print(f"THE WORKER DIED; its log ends with:\n{worker.log()[-4000:]}")
        return 1
    if not report.ok:
        print("DID NOT HOLD:\n  " + "\n  ".join(report.problems))
        print(f"worker log tail:\n{worker.log()[-3000:]}")
        return 1
    print("held.")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--rate", type=float, default=20.0, help="events/s per model")
    ap.add_argument("--hours", type=float, default=2.0, help="of event time")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds to wait for every event to be counted")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sentinelle-load-") as tmp:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if servers:
            return asyncio.run(run(args, servers, Path(tmp)))
        with EmbeddedBroker() as broker:
            return asyncio.run(run(args, broker.bootstrap_servers, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
