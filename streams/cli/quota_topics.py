"""The recorded history ``quota estimate`` reads: whole topics, as Kafka holds them.

:func:`read_topic` gives every ``(key, value)`` of a topic, read with
:func:`streams.runtime.follow.read_all`; ``ml.pipeline`` messages go as they are
to the contract's parser (:func:`streams.cli.quota_usage.parse_runs`), and
``ml.stats`` messages, Sentinelle's own output, are decoded by
:func:`decode_values`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import orjson
from aiokafka.admin import AIOKafkaAdminClient

from streams.runtime.follow import read_all

__all__ = ["Message", "Decoded", "read_topic", "decode_values"]

Message = tuple[bytes | None, bytes | None]  # key, value


class Decoded(NamedTuple):
    """Records decoded from a topic and how many messages (or batch elements) were not."""

    records: list[dict[str, Any]]
    undecodable: int


async def _exists(servers: str, topic: str, options: dict[str, Any]) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **options)
    await admin.start()
    try:
        return topic in set(await admin.list_topics())
    finally:
        await admin.close()


async def read_topic(servers: str, topic: str, options: dict[str, Any] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> list[Message]:
    """Every message now in ``topic``, oldest first per partition.

    A topic that does not exist holds no messages (it is not created: this is a
    read-only report). ``options``: :func:`streams.runtime.kafka.client_options`.
    """
    if not await _exists(servers, topic, options or {}):
        return []
    return await read_all(servers, topic, options, progress)


def decode_values(values: Iterable[bytes | None]) -> Decoded:
    """JSON objects, and the objects of JSON arrays (the contract's batch form).

    A message that is not JSON, or not an object or array, counts as one
    undecodable record, and so does each element of a batch that is not an object.
    Tombstones (``None``) are not records and are not counted.

    >>> decode_values([b'{"a": 1}', b'[{"b": 2}, 3]', b'nope', None])
    Decoded(records=[{'a': 1}, {'b': 2}], undecodable=2)
    """
    out: list[dict[str, Any]] = []
    bad = 0
    for value in values:
        if value is None:
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if isinstance(item, dict):
                out.append(item)
            else:
                bad += 1
    return Decoded(out, bad)
