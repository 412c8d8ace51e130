"""``sentinelle config check|show|schema``: the configuration, checked and shown.

``check F`` loads a file as the worker would (every field validated, unknown
fields refused) and says ``ok`` or what is wrong, naming the field, with status
2; ``show`` prints the effective configuration (defaults, the file, then
``SENTINELLE_…`` variables and ``--bootstrap-servers`` applied) as YAML;
``schema`` prints the JSON Schema of the file, for editors (``# yaml-language-
server: $schema=…``). No secret is ever in the settings: passwords and routing
keys are named by their variable or file only.
"""

from __future__ import annotations

import click
import orjson

from streams.cli.base import fail, with_settings
from streams.config import ConfigError, Settings, load_settings

__all__ = ["config"]


@click.group()
def config() -> None:
    """Check, show or describe the configuration."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Load PATH as a worker would; exit 0 if it is valid, else name each wrong field."""
    try:
        load_settings(path)
    except ConfigError as exc:
        fail(f"bad configuration\n{exc}")
    click.echo(f"{path}: ok")


@config.command("show")
@with_settings
def config_show(settings: Settings) -> None:
    """The effective configuration as YAML: defaults, the file and the environment applied."""
    import yaml

    click.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), nl=False)


@config.command("schema")
def config_schema() -> None:
    """The JSON Schema of the configuration file."""
    schema = Settings.model_json_schema()
    click.echo(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())
