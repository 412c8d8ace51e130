"""``sentinelle controller``: the reference deployment controller."""

from __future__ import annotations

import asyncio

import click

from streams.cli.base import fail_on, with_settings
from streams.config import Settings

__all__ = ["controller"]


@click.command()
@click.option("--state", "state_path", type=click.Path(dir_okay=False), required=True,
              help="the rollout state file (JSON), created if missing")
@click.option("--start", "starts", multiple=True,
              help="MODEL:STABLE:CANARY[:PERCENT] starts a canary rollout; repeatable")
@click.option("--environment", help="where the rollouts run (announced on ml.deployments)")
@click.option("--web-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="serve /metrics, /health and /ready on this port (on worker.web_host); "
                   "0: none")
@with_settings
def controller(state_path: str, starts: tuple[str, ...], environment: str | None,
               web_port: int, settings: Settings) -> None:
    """Reference deployment controller: apply ml.deploy.commands, announce ml.deployments."""
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from streams.runtime.kafka import client_options, ensure_topics
    from streams.runtime.logs import setup_logging
    from streams.runtime.pages import ServicePages
    from streams.tools.controller import ControllerWatch, parse_start, run_controller

    setup_logging(settings.worker.log_format)
    with fail_on(ValueError):
        parsed = [parse_start(s) for s in starts]
    servers = settings.kafka.servers
    t = settings.topics

    async def go() -> None:
        registry = CollectorRegistry()
        watch = ControllerWatch(registry)
        pages = ServicePages(registry, watch.waiting_for)
        if web_port:
            host = settings.worker.web_host
            await pages.start(host, web_port)
            click.echo(f"/metrics, /health, /ready on http://{host}:{web_port}")
        try:
            options = client_options(settings)
            await ensure_topics(servers, t.all(), settings.kafka.partitions,
                                settings.kafka.replication_factor, compacted=t.compacted(),
                                options=options)
            await run_controller(servers, t.commands, t.deployments, Path(state_path),
                                 f"{settings.worker.app_id}-controller", parsed, environment,
                                 deadletter_topic=t.deadletter, options=options, watch=watch)
        finally:
            await pages.stop()

    click.echo(f"applying {t.commands} to {state_path}; announcing on {t.deployments}")
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
