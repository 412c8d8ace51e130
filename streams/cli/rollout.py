"""``sentinelle rollout fail|pause|promote|approve MODEL``: a person steps in.

``fail``, ``pause`` and ``promote`` publish the same commands the worker
would (same shape, same ``command_id`` scheme, so a controller that already
got the worker's command for that decision acts once), straight to
``ml.deploy.commands``: a person must be able to roll back while the worker
is down. The canary in flight is read from ``ml.deployments`` (its latest
record for the model), unless ``--canary`` and ``--stable`` say it; so is the
record's ``rollout`` number, which the ``command_id`` names from the second
rollout of a version on (``rollback:M:V:5:r2``, see
:func:`alerting.rollout.make_command`), as the worker's do.
``approve`` publishes an approval on ``ml.deploy.approvals``, which the
worker holding the model uses to release a promotion waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson
from aiokafka import AIOKafkaProducer

from detectors.contract import dedup_key, rfc3339
from streams.cli.base import fail, fail_on, with_settings
from streams.config import Settings
from streams.runtime.follow import read_all
from streams.runtime.kafka import client_options, ensure_topics

__all__ = ["rollout", "latest_deployment", "manual_command", "publish", "approval"]

F = TypeVar("F", bound=Callable[..., Any])


# -- the commands ---------------------------------------------------------------------------


@click.group()
def rollout() -> None:
    """Step into a canary rollout by hand (ml.deploy.commands, ml.deploy.approvals)."""


def _action_options(f: F) -> F:
    """What ``fail``, ``pause`` and ``promote`` share: MODEL, who, the versions, Kafka."""
    decorators: list[Callable[[Any], Any]] = [
        click.argument("model"),
        click.option("--by", default="someone", show_default=True, help="who"),
        click.option("--canary", help="canary version (default: from ml.deployments)"),
        click.option("--stable", help="stable version (default: from ml.deployments)"),
        with_settings]
    for decorate in reversed(decorators):
        f = decorate(f)
    return f


@rollout.command("fail")
@_action_options
def rollout_fail(model: str, by: str, canary: str | None, stable: str | None,
                 settings: Settings) -> None:
    """Roll MODEL's canary back to the stable version now."""
    _act(settings, "fail", model, by, None, canary, stable)


@rollout.command("pause")
@_action_options
def rollout_pause(model: str, by: str, canary: str | None, stable: str | None,
                  settings: Settings) -> None:
    """Freeze MODEL's canary at its current traffic share."""
    _act(settings, "pause", model, by, None, canary, stable)


@rollout.command("promote")
@_action_options
@click.option("--to", "to_percent", type=click.IntRange(1, 100),
              help="traffic percent (default: the next step of canary.ladder)")
def rollout_promote(model: str, by: str, canary: str | None, stable: str | None,
                    to_percent: int | None, settings: Settings) -> None:
    """Move MODEL's canary to the next traffic step now."""
    _act(settings, "promote", model, by, to_percent, canary, stable)


@rollout.command("approve")
@click.argument("model")
@click.option("--by", required=True, help="who approves")
@click.option("--version", "version", help="the canary version (default: from ml.deployments)")
@click.option("--rollback", is_flag=True, help="approve a rollback instead of a promotion")
@with_settings
def rollout_approve(model: str, by: str, version: str | None, rollback: bool,
                    settings: Settings) -> None:
    """Approve the promotion of MODEL's canary that waits (ml.deploy.approvals)."""
    if version is None:
        d = asyncio.run(latest_deployment(settings, model)) or {}
        version = d.get("canary_version")
    if not version:
        fail(f"no canary of {model} known; pass --version")
    rec = approval(model, version, by, "rollback" if rollback else "promote")
    asyncio.run(publish(settings, settings.topics.approvals, model, rec))
    click.echo(f"approved {rec['action']} of {model} {version} by {by}")


def _act(settings: Settings, action: str, model: str, by: str, to_percent: int | None,
         canary: str | None, stable: str | None) -> None:
    """Publish the command of a person's ``fail``, ``pause`` or ``promote``."""
    deployment = ({"stable_version": stable, "canary_version": canary}
                  if canary and stable else asyncio.run(latest_deployment(settings, model)))
    if deployment is None:
        fail(f"no rollout of {model} on {settings.topics.deployments} "
             f"(pass --canary and --stable)")
    with fail_on(ValueError):
        cmd = manual_command(settings, action, model, deployment, by, to_percent)
    asyncio.run(publish(settings, settings.topics.commands, model, cmd))
    click.echo(f"published {cmd['command_id']} to {settings.topics.commands}")


# -- what they publish ----------------------------------------------------------------------


async def latest_deployment(settings: Settings, model: str) -> dict[str, Any] | None:
    """The newest ``ml.deployments`` record of ``model``, if any."""
    servers = settings.kafka.servers
    t = settings.topics
    options = client_options(settings)
    await ensure_topics(servers, [t.deployments], settings.kafka.partitions,
                        settings.kafka.replication_factor, compacted=[t.deployments],
                        options=options)
    latest = None
    for key, value in await read_all(servers, t.deployments, options):
        if key == model.encode() and value is not None:
            latest = orjson.loads(value)
    return latest


def manual_command(settings: Settings, action: str, model: str, deployment: dict[str, Any],
                   by: str, to_percent: int | None = None, now: float | None = None
                   ) -> dict[str, Any]:
    """The command a person's ``fail``/``pause``/``promote`` publishes.

    >>> s = Settings()
    >>> d = {"stable_version": "v7", "canary_version": "v8", "traffic_percent": 25}
    >>> c = manual_command(s, "promote", "m", d, "ana", now=0)
    >>> c["command_id"], c["traffic_percent"], c["reason"]
    ('promote:m:v8:50', 50, 'promoted by hand by ana')
    >>> manual_command(s, "fail", "m", d, "ana", now=0)["command_id"]
    'rollback:m:v8:25'
    >>> manual_command(s, "fail", "m", {**d, "rollout": 2}, "ana", now=0)["command_id"]
    'rollback:m:v8:25:r2'
    """
    from alerting.rollout import make_command, rollout_number  # brings scipy: only when used

    canary, stable = deployment.get("canary_version"), deployment.get("stable_version")
    if not canary or not stable:
        raise ValueError(f"no canary of {model} is in flight (pass --canary and --stable)")
    pct = int(round(deployment.get("traffic_percent") or 0))
    t = time.time() if now is None else now
    env = deployment.get("environment")
    n = rollout_number(deployment) or 1
    if action == "promote":
        later = [s for s in settings.canary.ladder if s > pct]
        step = to_percent if to_percent is not None else (later[0] if later else 100)
        return make_command("promote", model, stable, canary, step, f"promoted by hand by {by}",
                            t, env, rollout=n, traffic_percent=step)
    act = "pause" if action == "pause" else "rollback"
    return make_command(act, model, stable, canary, pct, f"{act} by hand by {by}", t, env,
                        rollout=n, alert_dedup_keys=[dedup_key("canary_regression", model, canary)])


def approval(model: str, version: str, by: str, action: str = "promote",
             now: float | None = None) -> dict[str, Any]:
    """An ``ml.deploy.approvals`` record."""
    return {"model": model, "version": version, "action": action, "approved_by": by,
            "ts": rfc3339(time.time() if now is None else now)}


async def publish(settings: Settings, topic: str, model: str, record: dict[str, Any]) -> None:
    servers = settings.kafka.servers
    options = client_options(settings)
    await ensure_topics(servers, [topic], settings.kafka.partitions,
                        settings.kafka.replication_factor, options=options)
    producer = AIOKafkaProducer(bootstrap_servers=servers, **options)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps(record), key=model.encode())
    finally:
        await producer.stop()
