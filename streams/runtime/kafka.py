"""Kafka administration the worker and the tools need: topics, what broker this is, and
how every client connects (``kafka.security``: :func:`client_options`, :func:`faust_options`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.config import KafkaSecuritySettings, Settings

__all__ = ["ensure_topics", "is_tansu", "client_options", "faust_options", "ssl_context"]

log = logging.getLogger("sentinelle.kafka")

#: Keyword arguments of an aiokafka client (``AIOKafkaProducer``, ``AIOKafkaConsumer``,
#: ``AIOKafkaAdminClient``), as :func:`client_options` gives them.
ClientOptions = dict[str, Any]


def _security(settings: Settings | KafkaSecuritySettings) -> KafkaSecuritySettings:
    return settings.kafka.security if isinstance(settings, Settings) else settings


def ssl_context(settings: Settings | KafkaSecuritySettings) -> ssl.SSLContext | None:
    """The TLS context of ``kafka.security`` (None unless the protocol is SSL or SASL_SSL):
    the brokers checked against ``ssl_cafile`` (else the system's CAs), the client
    certificate ``ssl_certfile``/``ssl_keyfile`` presented when given."""
    sec = _security(settings)
    if not sec.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None)
    if sec.ssl_certfile is not None:
        ctx.load_cert_chain(str(sec.ssl_certfile),
                            str(sec.ssl_keyfile) if sec.ssl_keyfile else None)
    ctx.check_hostname = sec.ssl_check_hostname
    return ctx


def client_options(settings: Settings | KafkaSecuritySettings) -> ClientOptions:
    """The keyword arguments that make an aiokafka client connect as ``kafka.security`` says.

    Empty for PLAINTEXT, so ``AIOKafkaConsumer(topic, bootstrap_servers=s,
    **client_options(settings))`` is what every client of every command does. The
    password is read here (from ``password_env`` or ``password_file``), at each call:
    the dict holds it, so it is handed to a client and never logged.

    >>> client_options(Settings())
    {}
    """
    sec = _security(settings)
    if sec.protocol == "PLAINTEXT":
        return {}
    out: ClientOptions = {"security_protocol": sec.protocol}
    if sec.tls:
        out["ssl_context"] = ssl_context(sec)
    if sec.sasl:
        out.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.username,
                   sasl_plain_password=sec.password())
    return out


def faust_options(settings: Settings | KafkaSecuritySettings) -> dict[str, Any]:
    """The ``faust.App`` keyword arguments of ``kafka.security`` (``broker_credentials``):
    empty for PLAINTEXT; Faust hands them to each of its aiokafka clients."""
    import faust

    sec = _security(settings)
    if sec.sasl:
        return {"broker_credentials": faust.SASLCredentials(
            username=sec.username, password=sec.password(), mechanism=sec.sasl_mechanism,
            ssl_context=ssl_context(sec))}  # a context makes it SASL_SSL
    if sec.tls:
        ctx = ssl_context(sec)
        return {"broker_credentials": faust.SSLCredentials(ctx), "ssl_context": ctx}
    return {}


async def is_tansu(bootstrap_servers: str, options: ClientOptions | None = None) -> bool:
    """Whether the broker is Tansu (by its cluster id, ``tansu_cluster`` by default).

    Tansu 0.6 reports a partition's end offset as its last record batch's base
    offset + 1, so a reader that stops at the end (Faust's state recovery, a
    follower reading a topic to its end) misses the rest of a batch of several
    records. The worker then writes one record per batch (see ``create_app``).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(options or {}))
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return str(cluster.get("cluster_id") or "").startswith("tansu")
    except Exception:  # an old broker, or none: decided elsewhere
        log.debug("cannot describe the cluster", exc_info=True)
        return False
    finally:
        await admin.close()


async def _listening(servers: str, timeout: float = 1.0) -> bool:
    """Whether one of ``servers`` (``host:port,...``) accepts a TCP connection."""
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), timeout)
        except (OSError, ValueError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int,
                        replication_factor: int = 1, compacted: Iterable[str] = (),
                        timeout: float = 30.0, max_message_bytes: int | None = None,
                        options: ClientOptions | None = None) -> None:
    """Create the topics that do not exist yet (idempotent).

    Topics are created explicitly, never by a producer's first send: a broker's
    auto-created topic may get a different partition count, and the state table's
    changelog must have exactly as many partitions as the input topic.
    ``max_message_bytes`` sets their ``max.message.bytes`` (see
    :func:`streams.runtime.app.topic_max_bytes`). ``options``: :func:`client_options`.
    """
    compact = set(compacted)
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(options or {}))
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await admin.close()
            # Nothing listening yet: a broker starting, worth waiting for. A broker that
            # listens and still cannot be used refused us (credentials, TLS): say so now.
            if time.monotonic() > deadline or await _listening(bootstrap_servers):
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
