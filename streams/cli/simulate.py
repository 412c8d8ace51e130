"""``sentinelle simulate``: contract traffic, incidents and malformed messages included."""

from __future__ import annotations

import asyncio

import click

from streams.cli.base import with_settings
from streams.config import Settings
from streams.tools.simulate import SCENARIOS

__all__ = ["simulate"]


@click.command()
@with_settings
@click.option("--scenario", default="demo", show_default=True,
              type=click.Choice(sorted(SCENARIOS)))
@click.option("--rate", type=float, default=40.0, show_default=True,
              help="events per second per model")
@click.option("--duration", type=float, default=None, help="seconds (default: the scenario's)")
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(settings: Settings, scenario: str, rate: float, duration: float | None,
             seed: int) -> None:
    """Produce contract events for a few models, incidents included."""
    from streams.runtime.kafka import client_options, ensure_topics
    from streams.tools.simulate import run

    servers = settings.kafka.servers
    sc = SCENARIOS[scenario]
    click.echo(f"scenario {sc.name}: {sc.description}")

    async def go() -> int:
        t = settings.topics
        options = client_options(settings)
        await ensure_topics(servers, t.all(), settings.kafka.partitions,
                            settings.kafka.replication_factor, compacted=t.compacted(),
                            options=options)
        # traffic follows the canary shares a controller announces on ml.deployments
        return await run(servers, t.predictions, sc, rate, seed, duration,
                         deployments_topic=t.deployments, pipeline_topic=t.pipeline,
                         options=options)

    sent = asyncio.run(go())
    click.echo(f"sent {sent} events")
