"""``sentinelle schema [TOPIC]``: the JSON Schema of a wire message, for producers."""

from __future__ import annotations

import click
import orjson

from streams.cli.base import fail

__all__ = ["schema"]


@click.command()
@click.argument("topic", required=False)
def schema(topic: str | None) -> None:
    """Print the JSON Schema of one message of TOPIC (its default name, e.g.
    ml.predictions), or of every message of the contract."""
    from sentinelle.schemas import MESSAGES, schemas
    from sentinelle.schemas import schema as one

    if topic is None:
        out = schemas()
    elif topic not in MESSAGES:
        fail(f"no schema for {topic!r}; one of {', '.join(sorted(MESSAGES))}")
    else:
        out = one(topic)
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
