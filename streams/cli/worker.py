"""``sentinelle broker``, ``worker`` and ``demo``: run Sentinelle itself."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from streams.cli.base import fail, servers_option, with_settings
from streams.config import Settings

__all__ = ["broker", "worker", "demo"]


@click.command()
@click.option("--port", type=int, default=9092, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def broker(port: int, host: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    import subprocess

    from streams.tools.broker import EmbeddedBroker

    b = EmbeddedBroker(port=port, host=host)
    click.echo(f"embedded broker (Tansu, in memory) on {b.bootstrap_servers}; Ctrl-C stops it")
    try:
        subprocess.run(b.command(), check=False)
    except KeyboardInterrupt:
        pass


@click.command()
@with_settings
@click.option("--loglevel", default="info", show_default=True)
def worker(settings: Settings, loglevel: str) -> None:
    """Run a Sentinelle worker (one member of the consumer group)."""
    from faust import Worker

    from streams.runtime.agents import register
    from streams.runtime.app import (
        copartition_groups,
        create_app,
        pool_topic_name,
        topic_max_bytes,
    )
    from streams.runtime.kafka import (
        client_options,
        copartitioning_problems,
        ensure_topics,
        is_tansu,
        partition_counts,
    )
    from streams.runtime.tuning import limit_threads

    servers = settings.kafka.servers
    t = settings.topics
    options = client_options(settings)
    groups = copartition_groups(settings)
    counts = asyncio.run(partition_counts(servers, [n for g in groups.values() for n in g],
                                          options, timeout=None))
    problems = copartitioning_problems(counts, groups, settings.kafka.partitions)
    if problems:
        fail("existing topics break co-partitioning (a model's state lives on the changelog "
             "partition of its input partition):\n  " + "\n  ".join(problems) +
             "\nIf the inputs have N partitions and the changelogs do not exist yet, set "
             "kafka.partitions: N. If the inputs were repartitioned after the changelogs were "
             "created, stop every worker, delete the changelog topics (state is rebuilt from "
             "new traffic) or repartition them alike, then start again. docs/RUNNING.md, "
             "\"Scaling and state\", says more.")
    asyncio.run(ensure_topics(servers, [*t.all(), pool_topic_name(settings)],
                              settings.kafka.partitions,
                              settings.kafka.replication_factor, compacted=t.compacted(),
                              max_message_bytes=topic_max_bytes(settings), options=options,
                              timeout=None))  # waits for a broker that is not up yet
    if settings.kafka.producer_batch_bytes is None and asyncio.run(is_tansu(servers, options)):
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"producer_batch_bytes": 1})})  # one record per batch: see is_tansu
    limit_threads(settings.worker.blas_threads)
    s = create_app(settings)
    register(s)
    from streams.runtime.logs import logging_config

    as_json = logging_config(loglevel) if settings.worker.log_format == "json" else None
    Worker(s.app, loglevel=loglevel, logging_config=as_json).execute_from_commandline()


@click.command()
@click.option("--rate", type=float, default=40.0, show_default=True,
              help="events per second per model")
@servers_option
def demo(rate: float, bootstrap_servers: str | None) -> None:
    """Broker + worker + simulator; shows alerts live; ends with a summary."""
    from streams.tools.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_demo(rate=rate, bootstrap_servers=bootstrap_servers))
