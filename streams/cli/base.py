"""What every ``sentinelle`` command shares: the Kafka options and the error exit.

Commands that talk to Kafka take ``--config`` and ``--bootstrap-servers`` (else
``KAFKA_BOOTSTRAP_SERVERS``, else ``kafka.bootstrap_servers`` from the config
file, else ``127.0.0.1:9092``). :func:`with_settings` adds both and hands the
command its loaded :class:`~streams.config.Settings`; a configuration that
does not load ends the command with ``sentinelle: bad configuration …`` and
status 2, as does every error a person can fix (:func:`fail`, :func:`fail_on`).

Command modules import only what ``sentinelle --help`` needs at the top (click,
orjson, the settings); Polars, rich, Faust and the detectors are imported by
the code that uses them, so every command starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from streams.config import ConfigError, Settings, load_settings

__all__ = ["config_option", "servers_option", "kafka_options", "with_settings",
           "load", "fail", "fail_on", "Commands"]

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="YAML configuration file (every setting has a default).")
servers_option = click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
                              show_envvar=True, help="Kafka cluster, host:port[,host:port].")


def fail(message: str) -> NoReturn:
    """``sentinelle: MESSAGE`` on stderr, then exit with status 2 (what click uses for
    a usage error): the way every command stops on something a person can fix."""
    click.echo(f"sentinelle: {message}", err=True)
    sys.exit(2)


@contextmanager
def fail_on(*errors: type[Exception], prefix: str = "") -> Iterator[None]:
    """:func:`fail` with ``PREFIX + str(error)`` when the block raises one of ``errors``
    (default: :class:`ValueError`, how the helpers say an input is wrong)."""
    try:
        yield
    except (errors or (ValueError,)) as exc:
        fail(f"{prefix}{exc}")


def _kafka_error(exc: BaseException) -> bool:
    """Whether ``exc`` is aiokafka's (imported only if a command used Kafka)."""
    errors = sys.modules.get("aiokafka.errors")
    return errors is not None and isinstance(exc, errors.KafkaError)


class Commands(click.Group):
    """The ``sentinelle`` group: a Kafka client that cannot connect or is refused (no
    credentials, wrong ones, no TLS where it is required) ends its command with
    ``sentinelle: Kafka: …`` and status 2, naming ``kafka.security``, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        # the command about to run (click keeps it first among the unparsed arguments)
        args = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        if not args or args[0] not in ("worker", "demo", "broker"):
            # a command's own one-line error says it; aiokafka's connection log and its
            # "Unclosed" warning for a client that never started would only add noise
            for noisy in ("aiokafka", "asyncio"):
                logging.getLogger(noisy).setLevel(logging.CRITICAL)
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not _kafka_error(exc):
                raise
            fail(f"Kafka: {exc} (is the cluster reachable, and does it "
                 f"need authentication or TLS? see kafka.security in docs/RUNNING.md, "
                 f"\"Security\")")


def load(config_path: str | None, servers: str | None) -> Settings:
    """The settings, or :func:`fail` naming what is wrong with the configuration."""
    try:
        settings = load_settings(config_path, servers)
    except ConfigError as exc:
        fail(f"bad configuration\n{exc}")
    return settings.with_bootstrap(settings.kafka.servers)


def kafka_options(f: F) -> F:
    """``--config`` and ``--bootstrap-servers``, passed on as ``config_path`` and
    ``bootstrap_servers`` (for a command that must check something first, then
    :func:`load`)."""
    return config_option(servers_option(f))


def with_settings(f: Callable[..., None]) -> Callable[..., None]:
    """:func:`kafka_options`, loaded: the command gets ``settings`` instead.

    Put it where the two options go in ``--help``; the options declared above and
    below it keep their order.
    """
    @wraps(f)  # also carries the click parameters declared below this decorator
    def command(*args: Any, config_path: str | None, bootstrap_servers: str | None,
                **kwargs: Any) -> None:
        f(*args, settings=load(config_path, bootstrap_servers), **kwargs)

    return kafka_options(command)
