"""The Faust application: broker, topics and the state table, built from Settings.

Only :mod:`streams.runtime.agents` adds behaviour to it. Inputs are read as raw bytes
(``value_serializer="raw"``) because parsing, validation and dead-lettering are
Sentinelle's own (:mod:`streams.core.parse`); outputs are JSON written with orjson.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import socket
import tempfile
from dataclasses import dataclass

import faust

from streams.config import Settings
from streams.runtime.kafka import faust_options
from streams.runtime.transport import SCHEME

__all__ = ["Sentinelle", "create_app", "broker_urls", "pool_topic_name", "topic_max_bytes",
           "copartition_groups", "transport_registered"]

log = logging.getLogger("sentinelle.worker")

#: Room for a record's key, headers and batch framing above its value.
RECORD_OVERHEAD = 64 * 1024


def topic_max_bytes(settings: Settings) -> int:
    """``max.message.bytes`` of every topic Sentinelle creates (changelogs included), and
    its producer's ``max_request_size``: set together, from ``limits.max_record_bytes``,
    so a record the worker accepts to write is one the broker accepts to store."""
    return settings.limits.max_record_bytes + RECORD_OVERHEAD


def pool_topic_name(settings: Settings) -> str:
    """The internal topic that re-keys pool usage by pool (see streams/core/operations.py)."""
    return f"{settings.worker.app_id}-pool-usage"


def broker_urls(servers: str, fetch_max_wait_s: float | None = None) -> list[str]:
    """``host:port,host:port`` to Faust broker URLs.

    With a fetch wait, the URLs name Sentinelle's transport (``sentinelle://``, see
    :mod:`streams.runtime.transport`) and carry the wait; without one, or when the
    transport is not registered (the package run without being installed), Faust's
    own ``kafka://`` driver, which waits 1.5 s.

    >>> broker_urls("a:9092,b:9093")
    ['kafka://a:9092', 'kafka://b:9093']
    >>> broker_urls("a:9092", 0.1)
    ['sentinelle://a:9092?fetch_max_wait_ms=100']
    """
    hosts = [s.strip() for s in servers.split(",") if s.strip()]
    if fetch_max_wait_s is None or not transport_registered():
        return [f"kafka://{h}" for h in hosts]
    wait_ms = round(fetch_max_wait_s * 1000)
    return [f"{SCHEME}://{h}?fetch_max_wait_ms={wait_ms}" for h in hosts]


@functools.cache
def transport_registered() -> bool:
    """Whether Faust finds Sentinelle's transport (the ``faust.transports`` entry point of
    the installed package). Logged once when it does not."""
    found = any(ep.name == SCHEME
                for ep in importlib.metadata.entry_points(group="faust.transports"))
    if not found:
        log.warning("the %s:// transport is not registered (is the package installed? "
                    "`pip install -e .`): Faust's kafka:// driver is used, whose 1.5 s fetch "
                    "wait slows a worker catching up", SCHEME)
    return found


@dataclass(frozen=True)
class Sentinelle:
    """The app and what hangs off it."""

    app: faust.App
    settings: Settings
    # ml.predictions, ml.feedback, ml.deployments and ml.deploy.approvals: all keyed
    # (so co-partitioned) by model, read by one agent
    inputs: faust.TopicT
    predictions: faust.TopicT
    alerts: faust.TopicT
    deadletter: faust.TopicT
    stats: faust.TopicT
    commands: faust.TopicT
    state: faust.types.TableT
    # ml.pipeline, ml.metrics and the internal pool-usage topic, read by one agent
    operations: faust.TopicT
    pool_usage: faust.TopicT
    ops_state: faust.types.TableT


def copartition_groups(settings: Settings) -> dict[str, list[str]]:
    """Each state table's input topics and its changelog (Faust names it
    ``<app_id>-<table>-changelog``): topics that must have as many partitions as
    each other (see :func:`streams.runtime.kafka.copartitioning_problems`)."""
    t, app_id = settings.topics, settings.worker.app_id
    return {
        "model state": [t.predictions, t.feedback, t.deployments, t.approvals,
                        f"{app_id}-model-state-changelog"],
        "operations state": [t.pipeline, t.metrics, pool_topic_name(settings),
                             f"{app_id}-ops-state-changelog"],
    }


def create_app(settings: Settings) -> Sentinelle:
    k, w, t = settings.kafka, settings.worker, settings.topics
    if not k.bootstrap_servers:
        raise ValueError("kafka.bootstrap_servers is not set")
    app = faust.App(
        w.app_id,
        broker=broker_urls(k.bootstrap_servers, k.fetch_max_wait_s),
        # State lives in memory and is rebuilt from its changelog topic on start or
        # takeover; writes are one per model per micro-batch (see agents.py).
        store="memory://",
        # Faust's data directory holds nothing we need (the store is in memory);
        # keep it out of the working directory.
        datadir=os.path.join(tempfile.gettempdir(), f"sentinelle-{w.app_id}-data"),
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication_factor,
        broker_rebalance_timeout=k.rebalance_timeout_s,
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=min(3.0, k.session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        web_enabled=w.web_port > 0,
        web_port=w.web_port or 6066,
        web_bind=w.web_host,
        # The URL other workers use to reach this one (GET /v1/canary/... asks the
        # owner of a model's partition): the bound address, unless it is a wildcard.
        web_host=(w.web_host if w.web_host not in ("0.0.0.0", "::", "")  # noqa: S104
                  else socket.gethostname()),
        web_in_thread=False,
        # Only Sentinelle's own pages (/metrics, /health, /ready): Faust's generic
        # ones would show the tables' contents (the label-join buffer among them)
        # and the app's internals to anyone who can reach the port.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        # Input in flight behind a backlog: this read-ahead and the micro-batch being
        # folded (worker.batch_max), in messages (docs/RUNNING.md, "Input in flight").
        stream_buffer_maxsize=w.read_ahead,
        producer_max_request_size=topic_max_bytes(settings),
        producer_max_batch_size=k.producer_batch_bytes or 16384,
        **faust_options(settings),  # kafka.security: SASL and TLS
    )
    table_configs = {"max.message.bytes": str(topic_max_bytes(settings))}

    def raw(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=k.partitions)

    state = app.Table("model-state", partitions=k.partitions, help="ModelMonitor checkpoints",
                      extra_topic_configs=table_configs)
    ops_state = app.Table("ops-state", partitions=k.partitions,
                          help="pipeline, metric series and pool checkpoints",
                          extra_topic_configs=table_configs)
    pool = pool_topic_name(settings)
    return Sentinelle(app=app, settings=settings,
                      inputs=raw(t.predictions, t.feedback, t.deployments, t.approvals),
                      predictions=raw(t.predictions), alerts=raw(t.alerts),
                      deadletter=raw(t.deadletter), stats=raw(t.stats),
                      commands=raw(t.commands), state=state,
                      operations=raw(t.pipeline, t.metrics, pool), pool_usage=raw(pool),
                      ops_state=ops_state)
