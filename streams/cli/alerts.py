"""``sentinelle alerts``: the alerts firing now, for the person on call."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import orjson

from streams.cli.base import with_settings
from streams.cli.tail import format_record
from streams.config import Settings
from streams.runtime.follow import read_all
from streams.runtime.kafka import client_options

__all__ = ["alerts", "firing_alerts"]


@click.command()
@with_settings
def alerts(settings: Settings) -> None:
    """The alerts firing now (triggered and not resolved, from ml.alerts)."""
    firing = asyncio.run(firing_alerts(settings))
    for alert in firing:
        click.echo(format_record("alerts", alert))
    if not firing:
        click.echo("nothing is firing")


async def firing_alerts(settings: Settings) -> list[dict[str, Any]]:
    """Alerts triggered and not resolved, from the whole ``ml.alerts`` topic."""
    servers = settings.kafka.servers
    firing: dict[str, dict[str, Any]] = {}
    for _, value in await read_all(servers, settings.topics.alerts, client_options(settings)):
        try:
            alert = orjson.loads(value or b"null")
            key, action = alert["dedup_key"], alert["event_action"]
        except (ValueError, KeyError, TypeError):
            continue
        if action == "trigger":
            firing[key] = alert
        else:
            firing.pop(key, None)
    return sorted(firing.values(), key=lambda a: a["payload"]["timestamp"])
