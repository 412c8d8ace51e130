"""Sentinelle's Faust transport: Faust's aiokafka driver, with the fetch wait set.

Faust's driver builds its worker consumer with ``fetch_max_wait_ms=1500``, written
into the code, not a setting. That is how long the broker may hold a fetch request
for partitions with nothing new. A worker catching up on a backlog pays it again and
again (measured in docs/SPEED.md, "Twelfth session"):

1. a busy partition's read-ahead fills up, and aiokafka leaves a partition out of
   its next fetch while it still holds unread records of it;
2. that next fetch carries only the worker's quiet partitions (deployments,
   approvals, pipelines, pool usage), so the broker holds it for the whole wait;
3. aiokafka keeps one fetch in flight per broker, so once the busy partition is
   read, its next records wait for the quiet fetch to come back: up to 1.5 s of an
   idle worker with thousands of messages waiting on the broker.

This driver is Faust's own in everything else, registered under the URL scheme
``sentinelle://`` through Faust's public extension point, the ``faust.transports``
entry points (see ``pyproject.toml``). :func:`streams.runtime.app.broker_urls` writes
the wait into the URL (``sentinelle://host:9092?fetch_max_wait_ms=100``), from
``kafka.fetch_max_wait_s``. ``tests/test_transport.py`` pins the consumer it builds
against the one Faust's driver builds for the same app: the same in every option but
the wait, so a Faust upgrade that changes its consumer fails that test.

A shorter wait costs an idle worker one fetch request per wait (10 a second at
100 ms, Kafka's own default being 500 ms); a busy worker's fetches return at once.

A second stall of the same kind sits one step up, in Faust's Fetcher (measured in
docs/SPEED.md, "Fourteenth session"). Faust asks the consumer thread for records
with a wait of 1 s, written into the code, for the partitions *active when it
asks*. A partition whose stream buffer is under pressure (``worker.read_ahead``)
is left out of that set; when the agent drains the buffer the partition comes
back, but the request already waiting does not see it. If its records were
already fetched (they were: that is why the buffer filled), nothing new arrives to
wake the request, and the worker idles for the rest of the second with a full
partition in memory. A worker that starts on a backlog hits it at once: its
buffers fill while it reads the profiles. :class:`Consumer` asks with a wait of
at most :data:`RECORDS_WAIT_S` instead; an idle worker then asks ten times a
second instead of once, each a hop to the consumer thread and back, nothing on
the wire.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from faust.exceptions import ImproperlyConfigured
from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from yarl import URL

__all__ = ["SCHEME", "DEFAULT_FETCH_MAX_WAIT_MS", "RECORDS_WAIT_S", "fetch_max_wait_ms",
           "Transport"]

#: The URL scheme this transport is registered under (``pyproject.toml``).
SCHEME = "sentinelle"

#: The wait without ``?fetch_max_wait_ms=`` in the URL.
DEFAULT_FETCH_MAX_WAIT_MS = 100

#: The longest a request for records waits on the consumer thread (Faust's: 1 s).
RECORDS_WAIT_S = 0.1


def fetch_max_wait_ms(urls: list[URL]) -> int:
    """The wait the broker URLs ask for (the first URL that names one), else the default.

    >>> fetch_max_wait_ms([URL("sentinelle://a:9092?fetch_max_wait_ms=250")])
    250
    >>> fetch_max_wait_ms([URL("sentinelle://a:9092")])
    100
    """
    for url in urls:
        value = url.query.get("fetch_max_wait_ms")
        if value is not None:
            return int(value)
    return DEFAULT_FETCH_MAX_WAIT_MS


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; its worker consumer is built with the URL's fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        # Faust's AIOKafkaConsumerThread._create_worker_consumer (faust-streaming
        # 0.15), option for option, but fetch_max_wait_ms. tests/test_transport.py
        # compares the two consumers, so a difference after an upgrade shows there.
        conf = self.app.conf
        isolation_level = "read_committed" if self.consumer.in_transaction else "read_uncommitted"
        has_changelog_tables = bool(self.app.tables.changelog_topics)
        self._assignor = (self.app.assignor
                          if conf.table_standby_replicas > 0 or has_changelog_tables
                          else RoundRobinPartitionAssignor)
        auth_settings = faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials,
                                                                    conf.ssl_context)
        max_poll_interval = conf.broker_max_poll_interval or 0
        request_timeout = conf.broker_request_timeout
        session_timeout = conf.broker_session_timeout
        if session_timeout > request_timeout:
            raise ImproperlyConfigured(
                f"Setting broker_session_timeout={session_timeout} cannot be greater than "
                f"broker_request_timeout={request_timeout}")
        consumer_kwargs: dict[str, Any] = {}
        if faust_aiokafka._AIOKAFKA_HAS_API_VERSION:
            consumer_kwargs["api_version"] = conf.consumer_api_version
        return aiokafka.AIOKafkaConsumer(
            **consumer_kwargs,
            client_id=conf.broker_client_id,
            group_id=conf.id,
            group_instance_id=conf.consumer_group_instance_id,
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            partition_assignment_strategy=[self._assignor],
            enable_auto_commit=False,
            auto_offset_reset=conf.consumer_auto_offset_reset,
            max_poll_records=conf.broker_max_poll_records,
            max_poll_interval_ms=int(max_poll_interval * 1000.0),
            max_partition_fetch_bytes=conf.consumer_max_fetch_size,
            fetch_max_wait_ms=fetch_max_wait_ms(transport.url),
            request_timeout_ms=int(request_timeout * 1000.0),
            check_crcs=conf.broker_check_crcs,
            session_timeout_ms=int(session_timeout * 1000.0),
            rebalance_timeout_ms=int(conf.broker_rebalance_timeout * 1000.0),
            heartbeat_interval_ms=int(conf.broker_heartbeat_interval * 1000.0),
            isolation_level=isolation_level,
            metadata_max_age_ms=conf.consumer_metadata_max_age_ms,
            connections_max_idle_ms=conf.consumer_connections_max_idle_ms,
            **auth_settings,
        )


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, running :class:`ConsumerThread`, asking for records with
    a wait of at most :data:`RECORDS_WAIT_S` (see the module's docstring)."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        # Faust's Consumer.getmany -> _wait_next_records -> _getmany (faust-streaming
        # 0.15); tests/test_transport.py pins the chain and this method's signature.
        return await super()._getmany(active_partitions, min(timeout, RECORDS_WAIT_S))


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer` (``sentinelle://`` URLs)."""

    Consumer = Consumer
