"""``sentinelle verdict wait MODEL VERSION``: a canary's verdict as an exit status.

For Argo Rollouts' ``job`` metric and for CI: reads ``ml.deploy.commands``,
``ml.deployments`` and ``ml.alerts`` from the beginning (no consumer group: it
commits nothing), folds them (:mod:`alerting.verdict`), and follows them until
the version has a verdict or ``--timeout`` runs out. Exit status: 0 pass, 1
fail, 2 inconclusive or timed out (also 2, with ``sentinelle: …``, for a bad
configuration or an unreachable broker).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
import orjson

from streams.cli.base import with_settings
from streams.config import Settings

__all__ = ["verdict", "wait_for_verdict"]


@click.group()
def verdict() -> None:
    """A canary version's verdict (pass, fail, inconclusive, pending)."""


@verdict.command("wait")
@click.argument("model")
@click.argument("version")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True,
              help="seconds to wait for a verdict; then exit 2")
@click.option("--json", "as_json", is_flag=True, help="print the verdict as one JSON object")
@with_settings
def verdict_wait(model: str, version: str, timeout_s: float, as_json: bool,
                 settings: Settings) -> None:
    """Wait for MODEL VERSION's canary verdict: exit 0 on pass, 1 on fail, 2 on
    inconclusive or timeout."""
    from alerting.verdict import EXIT_CODES

    view = asyncio.run(wait_for_verdict(settings, model, version, timeout_s))
    if as_json:
        click.echo(orjson.dumps(view).decode())
    else:
        command = view.get("command") or {}
        why = f" ({command.get('command_id')}: {command.get('reason', '')})" if command else ""
        state = view["verdict"] if view["verdict"] != "pending" else "no verdict (timed out)"
        click.echo(f"{model} {version}: {state}{why}")
    raise SystemExit(EXIT_CODES[view["verdict"]])


async def wait_for_verdict(settings: Settings, model: str, version: str,
                           timeout_s: float) -> dict[str, Any]:
    """The version's view (:meth:`alerting.verdict.CanaryView.as_dict`) once it has a
    verdict, or as it stands when ``timeout_s`` runs out (``pending``)."""
    from aiokafka import AIOKafkaConsumer

    from alerting.verdict import Verdicts
    from streams.runtime.kafka import client_options

    t = settings.topics
    kinds = {t.commands: "commands", t.deployments: "deployments", t.alerts: "alerts"}
    folded = Verdicts()
    deadline = time.monotonic() + timeout_s
    consumer = AIOKafkaConsumer(*kinds, bootstrap_servers=settings.kafka.servers,
                                group_id=None, auto_offset_reset="earliest",
                                **client_options(settings))
    await consumer.start()
    try:
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        backlog: list[tuple[str, Any]] = []  # what is there already: folded in time order
        caught_up = False
        while time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=300)
            records = [(kinds[tp.topic], _json(m.value)) for tp, msgs in got.items()
                       for m in msgs]
            if not caught_up:
                backlog.extend(records)
                if got or not all([await consumer.position(tp) >= end
                                   for tp, end in ends.items()]):
                    continue
                caught_up = True
                records, backlog = backlog, []
                folded.feed_all(records)
            else:
                for kind, rec in records:
                    folded.feed(kind, rec)
            view = folded.get(model, version)
            if view is not None and view.verdict != "pending":
                return view.as_dict()
        if not caught_up:
            folded.feed_all(backlog)
        view = folded.get(model, version)
        if view is not None and view.verdict != "pending":
            return view.as_dict()
        out = view.as_dict() if view is not None else {"model": model, "version": version}
        return {**out, "verdict": "pending"}
    finally:
        await consumer.stop()


def _json(value: bytes | None) -> Any:
    try:
        return orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return None
