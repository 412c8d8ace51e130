"""``sentinelle tail``: follow one of Sentinelle's topics, one line per message."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import orjson

from streams.cli.base import with_settings
from streams.config import Settings

__all__ = ["tail", "format_record"]


@click.command()
@with_settings
@click.argument("what", type=click.Choice(["alerts", "deadletter", "stats", "commands",
                                           "deployments"]), default="alerts")
@click.option("--from-beginning", is_flag=True, help="start at the oldest message")
def tail(settings: Settings, what: str, from_beginning: bool) -> None:
    """Follow ml.alerts (or ml.deadletter, ml.stats, ml.deploy.commands, ml.deployments)."""
    from aiokafka import AIOKafkaConsumer

    from streams.runtime.kafka import client_options

    topic = getattr(settings.topics, what)

    async def go() -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                                    group_id=None,
                                    auto_offset_reset="earliest" if from_beginning else "latest",
                                    **client_options(settings))
        await consumer.start()
        try:
            async for msg in consumer:
                click.echo(format_record(what, orjson.loads(msg.value or b"null")))
        finally:
            await consumer.stop()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


def format_record(what: str, rec: Any) -> str:
    """One line per message, for people."""
    if what == "alerts" and isinstance(rec, dict) and "payload" in rec:
        p = rec["payload"]
        return (f"{p['timestamp']}  {rec['event_action']:<8} {p['severity']:<8} "
                f"{rec['dedup_key']}  {p['summary']}")
    if what == "commands" and isinstance(rec, dict) and "command_id" in rec:
        wait = "  (waits for an approval)" if rec.get("requires_approval") else ""
        return f"{rec['issued_at']}  {rec['command_id']}  {rec['reason']}{wait}"
    return orjson.dumps(rec).decode()
