"""Kafka administration the worker and the tools need: topics, and what broker this is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

__all__ = ["ensure_topics", "is_tansu"]

log = logging.getLogger("sentinelle.kafka")


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
    :func:`streams.runtime.app.topic_max_bytes`).
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
