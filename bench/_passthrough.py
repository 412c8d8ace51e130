"""A Faust pass-through agent: the stream processor's own ceiling, for ``bench/e2e.py``.

It reads the given topics with a fresh consumer group, decodes each message
with orjson (an event, or the contract's batch form: an array of events) and
counts events, nothing else. When it has counted ``PASSTHROUGH_EXPECT`` events it
prints one JSON line, ``{"first": t, "last": t, "events": n, "messages": m}``
(wall-clock times of the first and the last event), and exits.

Run by the bench as a child process; its settings come from the environment:
``KAFKA_BOOTSTRAP_SERVERS``, ``PASSTHROUGH_TOPICS`` (comma-separated),
``PASSTHROUGH_GROUP``, ``PASSTHROUGH_EXPECT``, ``PASSTHROUGH_PARTITIONS``.
The group settings are the worker's (``streams/runtime/app.py``); the consumer is
Faust's as it ships (its ``kafka://`` driver, its 4,096-message read-ahead), the
ceiling a user gets from Faust. ``PASSTHROUGH_TRANSPORT=sentinelle`` runs it on the
worker's transport instead (``streams/runtime/transport.py``, the fetch wait at
0.1 s), to see what that transport does for Faust alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import faust
import orjson

servers = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
topics = os.environ["PASSTHROUGH_TOPICS"].split(",")
expect = int(os.environ["PASSTHROUGH_EXPECT"])
scheme = os.environ.get("PASSTHROUGH_TRANSPORT", "kafka")

app = faust.App(
    os.environ["PASSTHROUGH_GROUP"],
    broker=[f"kafka://{s}" if scheme == "kafka" else f"{scheme}://{s}?fetch_max_wait_ms=100"
            for s in servers.split(",")],
    store="memory://", web_enabled=False,
    topic_partitions=int(os.environ["PASSTHROUGH_PARTITIONS"]),
    consumer_auto_offset_reset="earliest", broker_session_timeout=10.0,
    broker_rebalance_timeout=10.0, broker_heartbeat_interval=3.0,
    datadir=os.path.join(tempfile.gettempdir(), f"passthrough-{os.getpid()}"))
source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                   value_serializer="raw")
seen: dict[str, Any] = {"first": None, "events": 0, "messages": 0}


@app.agent(source)
async def passthrough(stream: Any) -> None:
    async for value in stream:
        if seen["first"] is None:
            seen["first"] = time.time()
        decoded = orjson.loads(value)
        seen["events"] += len(decoded) if isinstance(decoded, list) else 1
        seen["messages"] += 1
        if seen["events"] >= expect:
            print(orjson.dumps({**seen, "last": time.time()}).decode(), flush=True)
            os._exit(0)  # the measurement is done: no orderly leave needed


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
