"""``sentinelle bridge pagerduty|webhook``: forward ml.alerts to an incident tool."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from streams.cli.base import fail, kafka_options, load, with_settings
from streams.config import Settings

__all__ = ["bridge"]

Body = Callable[[dict[str, Any]], dict[str, Any]]  # an alert to the body posted


@click.group()
def bridge() -> None:
    """Forward ml.alerts to an incident tool (at least once, in order)."""


@bridge.command("pagerduty")
@click.option("--url", default="https://events.pagerduty.com/v2/enqueue", show_default=True)
@click.option("--routing-key-env", default="PAGERDUTY_ROUTING_KEY", show_default=True,
              help="environment variable holding the integration's routing key")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@kafka_options  # the routing key is checked before the configuration is read
def bridge_pagerduty(url: str, routing_key_env: str, rate: float, config_path: str | None,
                     bootstrap_servers: str | None) -> None:
    """Post every alert to PagerDuty's Events API v2 (routing key added)."""
    from alerting.bridge import pagerduty_body

    key = os.environ.get(routing_key_env)
    if not key:
        fail(f"set {routing_key_env} to the PagerDuty routing key")
    settings = load(config_path, bootstrap_servers)
    _forward(settings, "pagerduty", url, rate, lambda alert: pagerduty_body(alert, key))


@bridge.command("webhook")
@click.option("--url", required=True, help="the endpoint; its query string is never printed")
@click.option("--slack", is_flag=True, help="send a Slack-compatible {'text': …} body")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@with_settings
def bridge_webhook(url: str, slack: bool, rate: float, settings: Settings) -> None:
    """Post every alert, as published (or as a Slack message), to any HTTP endpoint."""
    from alerting.bridge import slack_body

    _forward(settings, "webhook", url, rate, slack_body if slack else (lambda alert: alert))


def _forward(settings: Settings, name: str, url: str, rate: float, body_of: Body) -> None:
    """Run the bridge named ``name`` until Ctrl-C (its own consumer group)."""
    import aiohttp

    from alerting.bridge import redact_url
    from alerting.bridge_service import http_poster, run_bridge
    from streams.runtime.kafka import client_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            await run_bridge(settings.kafka.servers,
                             settings.topics.alerts, settings.topics.deadletter,
                             f"{settings.worker.app_id}-bridge-{name}",
                             http_poster(session, url), body_of, rate,
                             options=client_options(settings))

    click.echo(f"forwarding {settings.topics.alerts} to {name} ({redact_url(url)})")
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
