"""The ``sentinelle`` command.

Every command that talks to Kafka uses ``--bootstrap-servers``, else
``KAFKA_BOOTSTRAP_SERVERS``, else ``kafka.bootstrap_servers`` from the config
file, else ``127.0.0.1:9092`` (where ``sentinelle broker`` listens by default).
``sentinelle demo`` alone starts its own embedded broker when none of these is set.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click
import orjson

from streams.config import ConfigError, Settings, load_settings
from streams.tools.simulate import SCENARIOS

config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="YAML configuration file (every setting has a default).")
servers_option = click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
                              help="Kafka cluster, host:port[,host:port].")


def _settings(config_path: str | None, servers: str | None) -> Settings:
    try:
        settings = load_settings(config_path, servers)
    except ConfigError as exc:
        click.echo(f"sentinelle: bad configuration\n{exc}", err=True)
        sys.exit(2)
    return settings.with_bootstrap(settings.kafka.servers)


@click.group()
@click.version_option(package_name="sentinelle")
def main() -> None:
    """Sentinelle: streaming monitor for production ML on Kafka."""


@main.command()
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


@main.command()
@config_option
@servers_option
@click.option("--loglevel", default="info", show_default=True)
def worker(config_path: str | None, bootstrap_servers: str | None, loglevel: str) -> None:
    """Run a Sentinelle worker (one member of the consumer group)."""
    settings = _settings(config_path, bootstrap_servers)
    from faust import Worker

    from streams.runtime.agents import register
    from streams.runtime.app import create_app, pool_topic_name, topic_max_bytes
    from streams.runtime.kafka import ensure_topics, is_tansu

    servers = settings.kafka.servers
    t = settings.topics
    asyncio.run(ensure_topics(servers, [*t.all(), pool_topic_name(settings)],
                              settings.kafka.partitions,
                              settings.kafka.replication_factor, compacted=t.compacted(),
                              max_message_bytes=topic_max_bytes(settings)))
    if settings.kafka.producer_batch_bytes is None and asyncio.run(is_tansu(servers)):
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"producer_batch_bytes": 1})})  # one record per batch: see is_tansu
    s = create_app(settings)
    register(s)
    Worker(s.app, loglevel=loglevel).execute_from_commandline()


@main.command()
@config_option
@servers_option
@click.option("--scenario", default="demo", show_default=True,
              type=click.Choice(sorted(SCENARIOS)))
@click.option("--rate", type=float, default=40.0, show_default=True,
              help="events per second per model")
@click.option("--duration", type=float, default=None, help="seconds (default: the scenario's)")
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(config_path: str | None, bootstrap_servers: str | None, scenario: str,
             rate: float, duration: float | None, seed: int) -> None:
    """Produce contract events for a few models, incidents included."""
    from streams.runtime.kafka import ensure_topics
    from streams.tools.simulate import run

    settings = _settings(config_path, bootstrap_servers)
    servers = settings.kafka.servers
    sc = SCENARIOS[scenario]
    click.echo(f"scenario {sc.name}: {sc.description}")

    async def go() -> int:
        t = settings.topics
        await ensure_topics(servers, t.all(), settings.kafka.partitions,
                            settings.kafka.replication_factor, compacted=t.compacted())
        # traffic follows the canary shares a controller announces on ml.deployments
        return await run(servers, t.predictions, sc, rate, seed, duration,
                         deployments_topic=t.deployments, pipeline_topic=t.pipeline)

    sent = asyncio.run(go())
    click.echo(f"sent {sent} events")


@main.group()
def profile() -> None:
    """Reference profiles of training data (ml.references)."""


@profile.command("build")
@click.argument("data")
@click.option("--model", required=True)
@click.option("--version", "version", required=True)
@click.option("--bins", type=int, default=20, show_default=True,
              help="quantile bins per numeric feature")
@click.option("--max-categories", type=int, default=50, show_default=True,
              help="categories kept per categorical feature; the rest become __other__")
@click.option("--out", type=click.Path(dir_okay=False), help="write the profile JSON here")
@click.option("--publish", is_flag=True, help="send it to ml.references")
@config_option
@servers_option
def profile_build(data: str, model: str, version: str, bins: int, max_categories: int,
                  out: str | None, publish: bool, config_path: str | None,
                  bootstrap_servers: str | None) -> None:
    """Profile DATA (Parquet or CSV, read lazily) for MODEL VERSION."""
    from streams.cli.profile import profile_build as build

    settings = _settings(config_path, bootstrap_servers)
    try:
        result = build(data, model, version, settings, bins, max_categories, out, publish)
    except (ValueError, OSError, pl_errors()) as exc:
        click.echo(f"sentinelle: cannot profile {data}: {exc}", err=True)
        sys.exit(2)
    if not out and not publish:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def pl_errors() -> type[Exception]:
    import polars.exceptions

    return polars.exceptions.PolarsError


@main.command()
@config_option
@servers_option
@click.argument("what", type=click.Choice(["alerts", "deadletter", "stats", "commands",
                                           "deployments"]), default="alerts")
@click.option("--from-beginning", is_flag=True, help="start at the oldest message")
def tail(config_path: str | None, bootstrap_servers: str | None, what: str,
         from_beginning: bool) -> None:
    """Follow ml.alerts (or ml.deadletter, ml.stats, ml.deploy.commands, ml.deployments)."""
    from aiokafka import AIOKafkaConsumer

    settings = _settings(config_path, bootstrap_servers)
    topic = getattr(settings.topics, what)

    async def go() -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                                    group_id=None,
                                    auto_offset_reset="earliest" if from_beginning else "latest")
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


@main.group()
def silence() -> None:
    """Hold alerts back for a while (ml.silences): add, list, expire."""


@silence.command("add")
@click.option("--match", "matches", multiple=True, required=True,
              help="FIELD=PATTERN (class, model, version, severity, dedup_key); repeatable")
@click.option("--for", "duration", default="2h", show_default=True, help="30m, 2h, 1d…")
@click.option("--by", "created_by", default="", help="who")
@click.option("--comment", default="", help="why")
@config_option
@servers_option
def silence_add(matches: tuple[str, ...], duration: str, created_by: str, comment: str,
                config_path: str | None, bootstrap_servers: str | None) -> None:
    """Silence the alerts that match every --match."""
    from streams.cli.admin import add_silence, parse_duration, parse_matchers

    settings = _settings(config_path, bootstrap_servers)
    try:
        matchers, seconds = parse_matchers(matches), parse_duration(duration)
    except ValueError as exc:
        click.echo(f"sentinelle: {exc}", err=True)
        sys.exit(2)
    s = asyncio.run(add_silence(settings, matchers, seconds, created_by, comment))
    click.echo(f"silence {s.id}: {matchers} until {_time(s.ends_at)}")


@silence.command("list")
@config_option
@servers_option
def silence_list(config_path: str | None, bootstrap_servers: str | None) -> None:
    """The silences in force."""
    import time

    from streams.cli.admin import read_silences

    settings = _settings(config_path, bootstrap_servers)
    now = time.time()
    active = [s for s in asyncio.run(read_silences(settings)).values() if s.ends_at > now]
    for s in sorted(active, key=lambda s: s.ends_at):
        click.echo(f"{s.id}  until {_time(s.ends_at)}  {s.matchers}  {s.created_by} "
                   f"{s.comment}".rstrip())
    if not active:
        click.echo("no silence in force")


@silence.command("expire")
@click.argument("silence_id")
@config_option
@servers_option
def silence_expire(silence_id: str, config_path: str | None,
                   bootstrap_servers: str | None) -> None:
    """End a silence now: what it held back goes out."""
    from streams.cli.admin import expire_silence

    settings = _settings(config_path, bootstrap_servers)
    try:
        s = asyncio.run(expire_silence(settings, silence_id))
    except ValueError as exc:
        click.echo(f"sentinelle: {exc}", err=True)
        sys.exit(2)
    click.echo(f"silence {s.id} expired")


def _time(epoch: float) -> str:
    from detectors.contract import rfc3339

    return rfc3339(epoch)


@main.command()
@config_option
@servers_option
def alerts(config_path: str | None, bootstrap_servers: str | None) -> None:
    """The alerts firing now (triggered and not resolved, from ml.alerts)."""
    from streams.cli.admin import firing_alerts

    settings = _settings(config_path, bootstrap_servers)
    firing = asyncio.run(firing_alerts(settings))
    for alert in firing:
        click.echo(format_record("alerts", alert))
    if not firing:
        click.echo("nothing is firing")


@main.group()
def bridge() -> None:
    """Forward ml.alerts to an incident tool (at least once, in order)."""


def _bridge(settings: Settings, name: str, url: str, rate: float,
            body_of: Any) -> None:
    import aiohttp

    from alerting.bridge_service import http_poster, run_bridge

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            await run_bridge(settings.kafka.servers,
                             settings.topics.alerts, settings.topics.deadletter,
                             f"{settings.worker.app_id}-bridge-{name}",
                             http_poster(session, url), body_of, rate)

    from alerting.bridge import redact_url

    click.echo(f"forwarding {settings.topics.alerts} to {name} ({redact_url(url)})")
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


@bridge.command("pagerduty")
@click.option("--url", default="https://events.pagerduty.com/v2/enqueue", show_default=True)
@click.option("--routing-key-env", default="PAGERDUTY_ROUTING_KEY", show_default=True,
              help="environment variable holding the integration's routing key")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@config_option
@servers_option
def bridge_pagerduty(url: str, routing_key_env: str, rate: float, config_path: str | None,
                     bootstrap_servers: str | None) -> None:
    """Post every alert to PagerDuty's Events API v2 (routing key added)."""
    import os

    from alerting.bridge import pagerduty_body

    key = os.environ.get(routing_key_env)
    if not key:
        click.echo(f"sentinelle: set {routing_key_env} to the PagerDuty routing key", err=True)
        sys.exit(2)
    settings = _settings(config_path, bootstrap_servers)
    _bridge(settings, "pagerduty", url, rate, lambda alert: pagerduty_body(alert, key))


@bridge.command("webhook")
@click.option("--url", required=True, help="the endpoint; its query string is never printed")
@click.option("--slack", is_flag=True, help="send a Slack-compatible {'text': …} body")
@click.option("--rate", type=float, default=10.0, show_default=True, help="requests/s at most")
@config_option
@servers_option
def bridge_webhook(url: str, slack: bool, rate: float, config_path: str | None,
                   bootstrap_servers: str | None) -> None:
    """Post every alert, as published (or as a Slack message), to any HTTP endpoint."""
    from alerting.bridge import slack_body

    settings = _settings(config_path, bootstrap_servers)
    _bridge(settings, "webhook", url, rate, slack_body if slack else (lambda alert: alert))


@main.group()
def rollout() -> None:
    """Step into a canary rollout by hand (ml.deploy.commands, ml.deploy.approvals)."""


def _rollout_action(action: str, model: str, by: str, to_percent: int | None,
                    canary: str | None, stable: str | None, config_path: str | None,
                    bootstrap_servers: str | None) -> None:
    from streams.cli.rollout import latest_deployment, manual_command, publish

    settings = _settings(config_path, bootstrap_servers)
    deployment = ({"stable_version": stable, "canary_version": canary}
                  if canary and stable else asyncio.run(latest_deployment(settings, model)))
    try:
        if deployment is None:
            raise ValueError(f"no rollout of {model} on {settings.topics.deployments} "
                             f"(pass --canary and --stable)")
        cmd = manual_command(settings, action, model, deployment, by, to_percent)
    except ValueError as exc:
        click.echo(f"sentinelle: {exc}", err=True)
        sys.exit(2)
    asyncio.run(publish(settings, settings.topics.commands, model, cmd))
    click.echo(f"published {cmd['command_id']} to {settings.topics.commands}")


def _rollout_options(f: Any) -> Any:
    for option in reversed([
            click.argument("model"),
            click.option("--by", default="someone", show_default=True, help="who"),
            click.option("--canary", help="canary version (default: from ml.deployments)"),
            click.option("--stable", help="stable version (default: from ml.deployments)"),
            config_option, servers_option]):
        f = option(f)
    return f


@rollout.command("fail")
@_rollout_options
def rollout_fail(model: str, by: str, canary: str | None, stable: str | None,
                 config_path: str | None, bootstrap_servers: str | None) -> None:
    """Roll MODEL's canary back to the stable version now."""
    _rollout_action("fail", model, by, None, canary, stable, config_path, bootstrap_servers)


@rollout.command("pause")
@_rollout_options
def rollout_pause(model: str, by: str, canary: str | None, stable: str | None,
                  config_path: str | None, bootstrap_servers: str | None) -> None:
    """Freeze MODEL's canary at its current traffic share."""
    _rollout_action("pause", model, by, None, canary, stable, config_path, bootstrap_servers)


@rollout.command("promote")
@_rollout_options
@click.option("--to", "to_percent", type=click.IntRange(1, 100),
              help="traffic percent (default: the next step of canary.ladder)")
def rollout_promote(model: str, by: str, canary: str | None, stable: str | None,
                    to_percent: int | None, config_path: str | None,
                    bootstrap_servers: str | None) -> None:
    """Move MODEL's canary to the next traffic step now."""
    _rollout_action("promote", model, by, to_percent, canary, stable, config_path,
                    bootstrap_servers)


@rollout.command("approve")
@click.argument("model")
@click.option("--by", required=True, help="who approves")
@click.option("--version", "version", help="the canary version (default: from ml.deployments)")
@click.option("--rollback", is_flag=True, help="approve a rollback instead of a promotion")
@config_option
@servers_option
def rollout_approve(model: str, by: str, version: str | None, rollback: bool,
                    config_path: str | None, bootstrap_servers: str | None) -> None:
    """Approve the promotion of MODEL's canary that waits (ml.deploy.approvals)."""
    from streams.cli.rollout import approval, latest_deployment, publish

    settings = _settings(config_path, bootstrap_servers)
    if version is None:
        d = asyncio.run(latest_deployment(settings, model)) or {}
        version = d.get("canary_version")
    if not version:
        click.echo(f"sentinelle: no canary of {model} known; pass --version", err=True)
        sys.exit(2)
    rec = approval(model, version, by, "rollback" if rollback else "promote")
    asyncio.run(publish(settings, settings.topics.approvals, model, rec))
    click.echo(f"approved {rec['action']} of {model} {version} by {by}")


@main.command()
@click.option("--state", "state_path", type=click.Path(dir_okay=False), required=True,
              help="the rollout state file (JSON), created if missing")
@click.option("--start", "starts", multiple=True,
              help="MODEL:STABLE:CANARY[:PERCENT] starts a canary rollout; repeatable")
@click.option("--environment", help="where the rollouts run (announced on ml.deployments)")
@config_option
@servers_option
def controller(state_path: str, starts: tuple[str, ...], environment: str | None,
               config_path: str | None, bootstrap_servers: str | None) -> None:
    """Reference deployment controller: apply ml.deploy.commands, announce ml.deployments."""
    from pathlib import Path

    from streams.runtime.kafka import ensure_topics
    from streams.tools.controller import parse_start, run_controller

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = _settings(config_path, bootstrap_servers)
    try:
        parsed = [parse_start(s) for s in starts]
    except ValueError as exc:
        click.echo(f"sentinelle: {exc}", err=True)
        sys.exit(2)
    servers = settings.kafka.servers
    t = settings.topics

    async def go() -> None:
        await ensure_topics(servers, t.all(), settings.kafka.partitions,
                            settings.kafka.replication_factor, compacted=t.compacted())
        await run_controller(servers, t.commands, t.deployments, Path(state_path),
                             f"{settings.worker.app_id}-controller", parsed, environment,
                             deadletter_topic=t.deadletter)

    click.echo(f"applying {t.commands} to {state_path}; announcing on {t.deployments}")
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


@main.group()
def quota() -> None:
    """What pipelines and serving use: the numbers a team asks for quota with."""


@quota.command("estimate")
@click.option("--capacity-qps", type=float, required=True,
              help="queries per second one serving replica sustains within its latency SLO")
@click.option("--headroom", type=float, default=0.3, show_default=True,
              help="spare capacity on top of the peak")
@click.option("--days", type=float, default=None, help="history to use (default: all)")
@click.option("--plot", default=None,
              help="usage against the limit: '-' in the terminal, or a .txt/.ansi/.html/.png file")
@click.option("--every", type=click.Choice(["1d", "1h"]), default="1d", show_default=True,
              help="chart granularity")
@config_option
@servers_option
def quota_estimate(capacity_qps: float, headroom: float, days: float | None, plot: str | None,
                   every: str, config_path: str | None, bootstrap_servers: str | None) -> None:
    """Per pipeline and pool: use per run and per day; per model: peak qps and replicas."""
    from streams.cli.quota import estimate

    settings = _settings(config_path, bootstrap_servers)
    try:
        report = asyncio.run(estimate(settings, capacity_qps, days, plot, headroom, every))
    except ValueError as exc:
        click.echo(f"sentinelle: {exc}", err=True)
        sys.exit(2)
    click.echo(report)


@main.command()
@click.option("--rate", type=float, default=40.0, show_default=True,
              help="events per second per model")
@servers_option
def demo(rate: float, bootstrap_servers: str | None) -> None:
    """Broker + worker + simulator; shows alerts live; ends with a summary."""
    from streams.tools.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_demo(rate=rate, bootstrap_servers=bootstrap_servers))

