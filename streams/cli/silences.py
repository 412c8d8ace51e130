"""``sentinelle silence add|list|expire``: hold matching alerts back for a while.

Silences live on the compacted ``ml.silences`` topic (key: the silence id), which
every worker follows; expiring one republishes it with ``ends_at`` = now, so the
worker releases what it held back at its next tick.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import click
import orjson
from aiokafka import AIOKafkaProducer

from alerting.manager import Silence
from detectors.contract import rfc3339
from streams.cli.base import fail_on, with_settings
from streams.config import Settings
from streams.runtime.follow import read_all
from streams.runtime.kafka import client_options, ensure_topics

__all__ = ["silence", "parse_duration", "parse_matchers", "add_silence", "read_silences",
           "expire_silence"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- the commands ---------------------------------------------------------------------------


@click.group()
def silence() -> None:
    """Hold alerts back for a while (ml.silences): add, list, expire."""


@silence.command("add")
@click.option("--match", "matches", multiple=True, required=True,
              help="FIELD=PATTERN (class, model, version, severity, dedup_key); repeatable")
@click.option("--for", "duration", default="2h", show_default=True, help="30m, 2h, 1d…")
@click.option("--by", "created_by", default="", help="who")
@click.option("--comment", default="", help="why")
@with_settings
def silence_add(matches: tuple[str, ...], duration: str, created_by: str, comment: str,
                settings: Settings) -> None:
    """Silence the alerts that match every --match."""
    with fail_on(ValueError):
        matchers, seconds = parse_matchers(matches), parse_duration(duration)
    s = asyncio.run(add_silence(settings, matchers, seconds, created_by, comment))
    click.echo(f"silence {s.id}: {matchers} until {rfc3339(s.ends_at)}")


@silence.command("list")
@with_settings
def silence_list(settings: Settings) -> None:
    """The silences in force."""
    now = time.time()
    active = [s for s in asyncio.run(read_silences(settings)).values() if s.ends_at > now]
    for s in sorted(active, key=lambda s: s.ends_at):
        click.echo(f"{s.id}  until {rfc3339(s.ends_at)}  {s.matchers}  {s.created_by} "
                   f"{s.comment}".rstrip())
    if not active:
        click.echo("no silence in force")


@silence.command("expire")
@click.argument("silence_id")
@with_settings
def silence_expire(silence_id: str, settings: Settings) -> None:
    """End a silence now: what it held back goes out."""
    with fail_on(ValueError):
        s = asyncio.run(expire_silence(settings, silence_id))
    click.echo(f"silence {s.id} expired")


# -- what they do -----------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` (or a number of seconds) to seconds.

    >>> parse_duration("2h"), parse_duration("90")
    (7200.0, 90.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (try 30m, 2h, 1d)")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)


def parse_matchers(items: tuple[str, ...]) -> dict[str, str]:
    """``class=latency_slo model=fraud-*`` to a dict; only the fields alerts have."""
    allowed = {"class", "model", "version", "severity", "dedup_key"}
    out = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or name not in allowed or not pattern:
            raise ValueError(f"bad matcher {item!r}: use FIELD=PATTERN with FIELD one of "
                             f"{', '.join(sorted(allowed))}")
        out[name] = pattern
    if not out:
        raise ValueError("a silence needs at least one --match")
    return out


async def _publish(settings: Settings, silence: Silence) -> Silence:
    """Write ``silence`` to the compacted silences topic (created if missing)."""
    servers = settings.kafka.servers
    options = client_options(settings)
    await ensure_topics(servers, [settings.topics.silences], settings.kafka.partitions,
                        settings.kafka.replication_factor, compacted=[settings.topics.silences],
                        options=options)
    producer = AIOKafkaProducer(bootstrap_servers=servers, **options)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.silences, orjson.dumps(silence.to_dict()),
                                     key=silence.id.encode())
    finally:
        await producer.stop()
    return silence


async def add_silence(settings: Settings, matchers: dict[str, str], duration_s: float,
                      created_by: str = "", comment: str = "",
                      now: float | None = None) -> Silence:
    start = time.time() if now is None else now
    return await _publish(settings, Silence(uuid.uuid4().hex[:12], matchers, start,
                                            start + duration_s, created_by, comment))


async def read_silences(settings: Settings) -> dict[str, Silence]:
    servers = settings.kafka.servers
    options = client_options(settings)
    await ensure_topics(servers, [settings.topics.silences], settings.kafka.partitions,
                        settings.kafka.replication_factor, compacted=[settings.topics.silences],
                        options=options)
    found: dict[str, Silence] = {}
    for key, value in await read_all(servers, settings.topics.silences, options):
        if value is None:
            found.pop((key or b"").decode(), None)
            continue
        try:
            s = Silence.from_dict(orjson.loads(value))
        except (ValueError, KeyError, TypeError):
            continue
        found[s.id] = s
    return found


async def expire_silence(settings: Settings, silence_id: str) -> Silence:
    current = (await read_silences(settings)).get(silence_id)
    if current is None:
        raise ValueError(f"no silence {silence_id!r}")
    return await _publish(settings, Silence(
        current.id, current.matchers, current.starts_at, min(current.ends_at, time.time()),
        current.created_by, current.comment))
