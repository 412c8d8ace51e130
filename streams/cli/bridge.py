"""``sentinelle bridge pagerduty|webhook``: forward ml.alerts to an incident tool."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from streams.cli.base import fail, fail_on, kafka_options, load, with_settings
from streams.config import Settings

__all__ = ["bridge"]

Body = Callable[[dict[str, Any]], Any]  # an alert to the body posted (None: skip it)


@click.group()
def bridge() -> None:
    """Forward ml.alerts to an incident tool (at least once, in order)."""


@bridge.command("pagerduty")
@click.option("--url", default="https://events.pagerduty.com/v2/enqueue", show_default=True)
@click.option("--change-url", default=None,
              help="the Change Events endpoint  [default: --url's /v2/change/enqueue]")
@click.option("--routing-key-env", default=None,
              help="environment variable holding the default routing key  "
                   "[default: bridges.pagerduty.routing_key_env, PAGERDUTY_ROUTING_KEY]")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@kafka_options  # the routing keys are checked before anything connects
def bridge_pagerduty(url: str, change_url: str | None, routing_key_env: str | None,
                     rate: float, config_path: str | None,
                     bootstrap_servers: str | None) -> None:
    """Post every alert to PagerDuty's Events API v2, and rollbacks and promotions as
    Change Events (routing keys from bridges.pagerduty: environment or secret files,
    never printed; links, client and limits from the same section)."""
    from alerting.pagerduty import Route, Router, change_event, event_body, per_key_rate
    from alerting.pagerduty import change_url as changes_at

    if routing_key_env is not None:
        key = os.environ.get(routing_key_env)
        if not key:  # before the configuration: the key's absence is the likelier mistake
            fail(f"set {routing_key_env} to the PagerDuty routing key")
    settings = load(config_path, bootstrap_servers)
    pd = settings.bridges.pagerduty
    default = _secret(routing_key_env or pd.routing_key_env,
                      None if routing_key_env else pd.routing_key_file, "default routing key")
    routes = [Route({str(k): v for k, v in r.match.items()},
                    _secret(r.routing_key_env, r.routing_key_file,
                            f"routing key of the rule matching {dict(r.match)}"))
              for r in pd.routes]
    router, links = Router(routes, default), _links(settings)

    def alert_body(alert: dict[str, Any]) -> dict[str, Any]:
        return event_body(alert, router, links, pd.client, pd.client_url)

    limit = 60.0 * rate  # the bridge's own rate, per minute
    buckets: dict[str, Any] = {}  # per routing key, shared by alerts and Change Events
    streams = [_Stream("pagerduty", settings.topics.alerts, url, alert_body)]
    if pd.change_events:
        streams.append(_Stream("pagerduty-changes", settings.topics.commands,
                               change_url or changes_at(url),
                               lambda command: change_event(command, router, links)))
    _forward(settings, streams, rate,
             wrap=lambda post: per_key_rate(post, min(pd.rate_per_key, limit),
                                            buckets=buckets))


@bridge.command("alertmanager")
@click.option("--url", required=True,
              help="Alertmanager, e.g. http://alertmanager:9093 (/api/v2/alerts is added)")
@click.option("--repost", "repost_s", type=float, default=None,
              help="re-post firing alerts every S seconds  [default: "
                   "bridges.alertmanager.repost_s, 60]")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@with_settings
def bridge_alertmanager(url: str, repost_s: float | None, rate: float,
                        settings: Settings) -> None:
    """Post every alert to Alertmanager's /api/v2/alerts (labels, annotations, startsAt and
    endsAt), re-posting firing alerts before Alertmanager's resolve_timeout, so its route
    tree, receivers, inhibitions and silences apply."""
    import time

    from alerting.alertmanager import API_PATH, Firing, am_body

    if repost_s is not None and repost_s <= 0:
        fail("--repost must be > 0")
    every = repost_s or settings.bridges.alertmanager.repost_s
    links = _links(settings)
    firing = Firing(every, links)
    endpoint = url if url.rstrip("/").endswith(API_PATH) else url.rstrip("/") + API_PATH

    def body_of(alert: dict[str, Any]) -> list[dict[str, Any]]:
        return am_body(alert, time.time(), every, links, firing.starts_at(alert))

    _forward(settings, [_Stream("alertmanager", settings.topics.alerts, endpoint, body_of,
                                firing)], rate)


@bridge.command("webhook")
@click.option("--url", required=True, help="the endpoint; its query string is never printed")
@click.option("--slack", is_flag=True, help="send a Slack-compatible {'text': …} body")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@with_settings
def bridge_webhook(url: str, slack: bool, rate: float, settings: Settings) -> None:
    """Post every alert, as published (or as a Slack message), to any HTTP endpoint."""
    from alerting.bridge import slack_body

    _forward(settings, [_Stream("webhook", settings.topics.alerts, url,
                                slack_body if slack else (lambda alert: alert))], rate)


def _secret(env: str | None, path: Path | None, what: str) -> str:
    """A routing key from its file (first line) or its variable; :func:`fail` naming
    the variable or the file, never showing a key."""
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError):
            fail(f"{what}: cannot read a key from the first line of {str(path)!r}")
        if not key:
            fail(f"{what}: the first line of {str(path)!r} is empty")
        return key
    key = os.environ.get(env or "", "")
    if not key:
        fail(f"{what}: set {env} to the PagerDuty routing key")
    return key


def _links(settings: Settings) -> Any:
    from alerting.links import Links

    b = settings.bridges
    with fail_on(prefix="bridges: "):
        return Links({str(k): v for k, v in b.runbooks.items()}, b.dashboard_url)


@dataclass
class _Stream:
    """One topic forwarded to one endpoint, in its own consumer group."""

    name: str
    topic: str
    url: str
    body_of: Body
    firing: Any = None  # alerting.alertmanager.Firing: re-post what fires


def _forward(settings: Settings, streams: list[_Stream], rate: float,
             wrap: Callable[[Any], Any] = lambda post: post) -> None:
    """Run the bridges until Ctrl-C (each stream in its own consumer group)."""
    import aiohttp
    from prometheus_client import CollectorRegistry

    from alerting.bridge import redact_url
    from alerting.bridge_service import BridgeMetrics, http_poster, run_bridge
    from streams.runtime.kafka import client_options
    from streams.runtime.logs import setup_logging
    from streams.runtime.pages import ServicePages

    setup_logging(settings.worker.log_format)
    b = settings.bridges
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    watches = {s.name: metrics.watch(s.name) for s in streams}

    def waiting() -> list[str]:
        return [f"{name}: joining its consumer group" for name, w in watches.items()
                if not w.joined]

    async def one(session: aiohttp.ClientSession, stream: _Stream) -> None:
        post = wrap(http_poster(session, stream.url))
        options = client_options(settings)
        firing, periodic = stream.firing, None
        if firing is not None:
            from streams.runtime.follow import read_all_partitions

            firing.seed(await read_all_partitions(settings.kafka.servers, stream.topic,
                                                  options))
            periodic = _reposter(firing, post, stream.name)
        await run_bridge(settings.kafka.servers, stream.topic, settings.topics.deadletter,
                         f"{settings.worker.app_id}-bridge-{stream.name}", post,
                         stream.body_of, rate, options=options, max_age_s=b.max_age_s,
                         metrics=watches[stream.name],
                         on_delivery=firing.settled if firing is not None else None,
                         periodic=periodic)

    async def go() -> None:
        pages = ServicePages(registry, waiting)
        if b.metrics_port:
            host = settings.worker.web_host
            await pages.start(host, b.metrics_port)
            click.echo(f"/metrics, /health, /ready on http://{host}:{b.metrics_port}")
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(*(one(session, s) for s in streams))
        finally:
            await pages.stop()

    for s in streams:
        click.echo(f"forwarding {s.topic} to {s.name} ({redact_url(s.url)})")
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


def _reposter(firing: Any, post: Any, name: str) -> Any:
    """Post each firing alert that is due again, once; on the first failure, stop the
    round (the next one tries again)."""
    log = logging.getLogger("sentinelle.bridge")

    async def repost(partitions: set[Any]) -> None:
        for key, body in firing.due({tp.partition for tp in partitions}):
            status, text, _ = await post(body)
            if status is None or not 200 <= status < 300:
                # the rest wait for the next round (their endsAt is 4 rounds ahead), not
                # for a timeout each while the deliveries wait behind them
                log.warning("%s: re-posting %.200s: answered %s; next round in %.0f s", name,
                            key, status or text, firing.repost_s)
                return

    return repost
