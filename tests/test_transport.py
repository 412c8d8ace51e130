"""Sentinelle's Faust transport (streams/runtime/transport.py): Faust's aiokafka driver in
every option but the fetch wait, found by Faust through its entry point."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aiokafka
import faust
import pytest
from faust.transport import by_url
from faust.transport.consumer import ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from streams.config import Settings
from streams.runtime import transport
from streams.runtime.app import broker_urls, create_app, transport_registered

WORD = "not-the-real-one"


def _options(obj: Any, seen: frozenset[int] = frozenset()) -> Any:
    """An aiokafka client's options as plain values: scalars as they are, a client's
    attributes recursively, anything else (assignors, loops, futures) by its type."""
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_options(o, seen) for o in obj]
    if isinstance(obj, (aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaClient)) \
            and id(obj) not in seen:
        return {k: _options(v, seen | {id(obj)}) for k, v in vars(obj).items()}
    return type(obj).__name__


def _consumers(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker consumer Sentinelle's transport builds for an app, and the one Faust's
    own driver builds for the same app, as options."""

    async def build() -> tuple[dict[str, Any], dict[str, Any]]:
        app = create_app(settings).app
        thread = app.consumer._thread
        assert isinstance(thread, transport.ConsumerThread)
        ours = thread._create_worker_consumer(app.transport)
        faust_own = AIOKafkaConsumerThread._create_worker_consumer(thread, app.transport)
        try:
            return _options(ours), _options(faust_own)
        finally:
            await ours.stop()
            await faust_own.stop()

    return asyncio.run(build())


@pytest.mark.parametrize("security", [
    {},
    {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "username": "worker",
     "password_env": "SENTINELLE_TEST_KAFKA_PASSWORD"},
])
def test_the_worker_consumer_is_fausts_own_but_for_the_fetch_wait(
        monkeypatch: pytest.MonkeyPatch, security: dict[str, str]) -> None:
    monkeypatch.setenv("SENTINELLE_TEST_KAFKA_PASSWORD", WORD)
    settings = Settings.model_validate({"kafka": {
        "bootstrap_servers": "127.0.0.1:19092,127.0.0.2:19093", "fetch_max_wait_s": 0.25,
        "security": security}})
    ours, faust_own = _consumers(settings)
    assert ours.pop("_fetch_max_wait_ms") == 250
    assert faust_own.pop("_fetch_max_wait_ms") == 1500
    assert ours == faust_own
    # what the comparison covers: the brokers, the group, the credentials
    assert ours["_client"]["_bootstrap_servers"] == ["127.0.0.1:19092", "127.0.0.2:19093"]
    assert ours["_group_id"] == settings.worker.app_id
    assert ours["_partition_assignment_strategy"] == ["PartitionAssignor"]
    if security:
        assert ours["_client"]["_security_protocol"] == "SASL_PLAINTEXT"
        assert ours["_client"]["_sasl_plain_password"] == WORD


def test_faust_finds_the_transport_by_its_scheme() -> None:
    assert transport_registered()
    assert by_url("sentinelle://127.0.0.1:9092?fetch_max_wait_ms=100") is transport.Transport
    app = faust.App("t", broker="sentinelle://127.0.0.1:9092?fetch_max_wait_ms=100")
    assert isinstance(app.transport, transport.Transport)
    # the producer is Faust's own: only the consumer differs
    assert type(app.producer).__module__ == "faust.transport.drivers.aiokafka"


def test_the_worker_uses_the_configured_wait() -> None:
    settings = Settings.model_validate({"kafka": {"bootstrap_servers": "b:9092",
                                                  "fetch_max_wait_s": 0.05}})
    app = create_app(settings).app
    (url,) = app.conf.broker
    assert (url.scheme, url.host, url.port) == ("sentinelle", "b", 9092)
    assert transport.fetch_max_wait_ms(app.conf.broker) == 50


def test_broker_urls() -> None:
    assert broker_urls("a:1, b:2") == ["kafka://a:1", "kafka://b:2"]
    assert broker_urls("a:1,b:2", 0.1) == ["sentinelle://a:1?fetch_max_wait_ms=100",
                                           "sentinelle://b:2?fetch_max_wait_ms=100"]
    assert broker_urls("a:1", 0) == ["sentinelle://a:1?fetch_max_wait_ms=0"]


@pytest.mark.parametrize("value", [-0.1, 31, "soon"])
def test_a_bad_fetch_wait_names_the_field(value: object) -> None:
    with pytest.raises(ValueError, match="fetch_max_wait_s"):
        Settings.model_validate({"kafka": {"fetch_max_wait_s": value}})


class _Thread:
    """The consumer thread's side of a request for records: what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[set[TP], float]] = []

    def assignment(self) -> set[TP]:
        return {TP("ml.predictions", 0)}

    async def getmany(self, active: set[TP] | None, timeout: float) -> dict[TP, list[Any]]:
        self.asked.append((set(active or ()), timeout))
        return {}


@pytest.mark.parametrize("faust_wait, asked", [(1.0, transport.RECORDS_WAIT_S), (0.02, 0.02)])
def test_records_are_asked_for_with_a_short_wait(faust_wait: float, asked: float) -> None:
    """Faust's Fetcher waits 1 s for the partitions active when it asks; a partition its
    agent drains meanwhile would sit unread until then (the stall in the module's
    docstring). Through Faust's own request (``_wait_next_records``), the thread is
    asked with a wait of at most RECORDS_WAIT_S: if Faust stops routing the request
    through ``_getmany``, the thread is not asked at all and this fails."""

    async def ask() -> list[tuple[set[TP], float]]:
        app = create_app(Settings.model_validate({"kafka": {"bootstrap_servers": "b:9092"}})).app
        consumer = app.consumer
        assert isinstance(consumer, transport.Consumer)
        thread = consumer._thread = _Thread()
        consumer._set_active_tps(thread.assignment())  # as on an assignment
        records, active = await consumer._wait_next_records(faust_wait)
        assert records == {} and active == thread.assignment()
        return thread.asked

    assert asyncio.run(ask()) == [({TP("ml.predictions", 0)}, asked)]
    assert transport.RECORDS_WAIT_S < 1.0


def test_the_records_wait_overrides_fausts_own_method() -> None:
    """The override keeps the signature of the method it replaces."""
    ours = inspect.signature(transport.Consumer._getmany)
    fausts = inspect.signature(ThreadDelegateConsumer._getmany)
    assert list(ours.parameters) == list(fausts.parameters) == [
        "self", "active_partitions", "timeout"]
