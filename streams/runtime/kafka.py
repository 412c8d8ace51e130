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

__all__ = ["ensure_topics", "partition_counts", "copartitioning_problems", "is_tansu",
           "client_options", "faust_options", "ssl_context"]

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


async def _admin(servers: str, options: ClientOptions | None,
                 timeout: float | None) -> AIOKafkaAdminClient:
    """A started admin client, the broker waited for as :func:`ensure_topics` says."""
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff, tries = 0.2, 0
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers, **(options or {}))
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            # Nothing listening yet: a broker starting, worth waiting for. A broker that
            # listens and still cannot be used refused us (credentials, TLS): say so now.
            if (deadline is not None and time.monotonic() > deadline) \
                    or await _listening(servers):
                raise
            tries += 1
            if tries > 1:
                log.warning("Kafka at %s does not answer; trying again in %.1f s", servers,
                            backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


async def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int,
                        replication_factor: int = 1, compacted: Iterable[str] = (),
                        timeout: float | None = 30.0, max_message_bytes: int | None = None,
                        options: ClientOptions | None = None) -> None:
    """Create the topics that do not exist yet (idempotent).

    Topics are created explicitly, never by a producer's first send: a broker's
    auto-created topic may get a different partition count, and the state table's
    changelog must have exactly as many partitions as the input topic.
    ``max_message_bytes`` sets their ``max.message.bytes`` (see
    :func:`streams.runtime.app.topic_max_bytes`). ``options``: :func:`client_options`.

    A broker that does not answer yet is waited for, with a doubling backoff (up
    to 30 s between tries, each logged) for ``timeout`` seconds, or for ever when
    ``timeout`` is None (the worker: a worker started before its broker, or
    while it restarts, waits instead of dying). A broker that accepts the
    connection and refuses the client (credentials, TLS) is an error at once.
    """
    compact = set(compacted)
    admin = await _admin(bootstrap_servers, options, timeout)
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


async def partition_counts(bootstrap_servers: str, names: Iterable[str],
                           options: ClientOptions | None = None,
                           timeout: float | None = 30.0) -> dict[str, int]:
    """How many partitions each of ``names`` has, for those that exist (the broker
    waited for as in :func:`ensure_topics`)."""
    admin = await _admin(bootstrap_servers, options, timeout)
    try:
        wanted = list(dict.fromkeys(names))
        existing = set(await admin.list_topics())
        found = [n for n in wanted if n in existing]
        if not found:
            return {}
        described = await admin.describe_topics(found)
        return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
    finally:
        await admin.close()


def copartitioning_problems(counts: dict[str, int], groups: dict[str, list[str]],
                            partitions: int) -> list[str]:
    """What breaks co-partitioning, one sentence each (none: all is well).

    A state table's changelog partition *p* holds the state of the keys that
    arrive on partition *p* of the table's input topics, so, in each group (a
    table's changelog and the inputs it is keyed by), every topic must have the
    same number of partitions, and that is ``kafka.partitions`` (what a missing
    topic of the group will be created with).

    >>> copartitioning_problems({"in": 8, "app-state-changelog": 4},
    ...                         {"model state": ["in", "app-state-changelog"]}, 4)[0]
    "model state: topic 'in' has 8 partitions, kafka.partitions is 4 (app-state-changelog has 4)"
    """
    out = []
    for group, names in groups.items():
        wrong = {n: counts[n] for n in names if n in counts and counts[n] != partitions}
        if not wrong:
            continue
        right = [f"{n} has {counts[n]}" for n in names if counts.get(n) == partitions]
        for name, n in wrong.items():
            out.append(f"{group}: topic {name!r} has {n} partitions, kafka.partitions is "
                       f"{partitions}" + (f" ({', '.join(right)})" if right else ""))
    return out
