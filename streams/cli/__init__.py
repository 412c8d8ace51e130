"""The ``sentinelle`` command: the group here, one module per command or group.

==========================  =====================================================
module                      commands
==========================  =====================================================
:mod:`.worker`              ``broker``, ``worker``, ``demo``
:mod:`.simulate`            ``simulate``
:mod:`.tail`                ``tail``
:mod:`.alerts`              ``alerts``
:mod:`.silences`            ``silence add|list|expire``
:mod:`.bridge`              ``bridge pagerduty|alertmanager|webhook``
:mod:`.controller`          ``controller``
:mod:`.rollout`             ``rollout fail|pause|promote|approve``
:mod:`.verdict`             ``verdict wait``
:mod:`.config`              ``config check|show|schema``
:mod:`.profile`             ``profile build``
:mod:`.quota`               ``quota estimate`` (numbers: :mod:`.quota_usage`,
                            reading: :mod:`.quota_topics`)
==========================  =====================================================

What they share is in :mod:`.base`: ``--config`` and ``--bootstrap-servers``
(else ``KAFKA_BOOTSTRAP_SERVERS``, else ``kafka.bootstrap_servers`` from the
config file, else ``127.0.0.1:9092``, where ``sentinelle broker`` listens by
default), loading the settings, and the error exit (``sentinelle: …``, status 2).
``sentinelle demo`` alone starts its own embedded broker when none of these is set.
"""

from __future__ import annotations

from streams.runtime.tuning import cap_malloc_arenas

cap_malloc_arenas()  # first, before numpy and Polars start threads: see its docstring

import click

from streams.cli import (
    alerts,
    bridge,
    config,
    controller,
    explain,
    profile,
    quota,
    rollout,
    schema,
    silences,
    simulate,
    tail,
    verdict,
    worker,
)
from streams.cli.base import Commands

__all__ = ["main"]


@click.group(cls=Commands)
@click.version_option(package_name="sentinelle")
def main() -> None:
    """Sentinelle: streaming monitor for production ML on Kafka."""


for _command in (worker.broker, worker.worker, worker.demo, simulate.simulate, tail.tail,
                 alerts.alerts, silences.silence, bridge.bridge, controller.controller,
                 rollout.rollout, profile.profile, quota.quota, verdict.verdict,
                 config.config, schema.schema, explain.explain):
    main.add_command(_command)
