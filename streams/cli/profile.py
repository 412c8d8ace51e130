"""``sentinelle profile build``: a reference profile from training data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from streams.cli.base import fail_on, with_settings
from streams.config import Settings

if TYPE_CHECKING:
    import polars as pl
    from rich.table import Table

    from streams.core.references import Reference

__all__ = ["profile", "scan", "make_profile", "calibration_table", "publish_profile"]


@click.group()
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
@with_settings
def profile_build(data: str, model: str, version: str, bins: int, max_categories: int,
                  out: str | None, publish: bool, settings: Settings) -> None:
    """Profile DATA (Parquet or CSV, read lazily) for MODEL VERSION."""
    from polars.exceptions import PolarsError

    with fail_on(ValueError, OSError, PolarsError, prefix=f"cannot profile {data}: "):
        result = make_profile(data, model, version, settings, bins, max_categories, out,
                              publish)
    if not out and not publish:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def scan(path: str) -> pl.LazyFrame:
    """A lazy frame over a Parquet or CSV file (or a glob of them)."""
    import polars as pl

    suffix = Path(path.replace("*", "x")).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.scan_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pl.scan_csv(path, separator="\t" if suffix == ".tsv" else ",",
                           infer_schema_length=10_000)
    raise ValueError(f"{path}: expected a .parquet or .csv file")


def calibration_table(ref: Reference) -> Table:
    from rich.table import Table

    table = Table(title=f"{ref.model} {ref.version}: calibrated skew thresholds "
                        f"({ref.rows:,} reference rows)")
    for col in ("feature", "type", "bins", "JS threshold", "false alarm per test",
                "target run length", "bootstrap check", "achieved run length"):
        table.add_column(col, justify="right" if col != "feature" else "left")
    for name, fr in sorted(ref.features.items()):
        bins, cal = fr.bins, fr.skew
        table.add_row(name, bins.kind, str(bins.size), f"{cal.threshold:.4f}",
                      f"{cal.alpha:.2e}", f"{cal.run_length:,.0f} ev",
                      f"x{cal.check_ratio:.2f}", f"{cal.achieved_run_length:,.0f} ev")
    return table


def make_profile(data: str, model: str, version: str, settings: Settings, bins: int,
                 max_categories: int, out: str | None, publish: bool) -> dict[str, Any]:
    """Profile ``data``, show its calibration (on stderr), write it to ``out`` and/or
    publish it; returns the profile."""
    from rich.console import Console

    from detectors.profile import build_profile
    from streams.core.references import Reference

    console = Console(stderr=True)
    profile = build_profile(scan(data), model, version, bins=bins,
                            max_categories=max_categories)
    ref = Reference.from_profile(profile, settings.skew, settings.drift.baseline_factor)
    profile["calibration"] = {name: {"skew": fr.skew.to_dict(), "drift": fr.drift.to_dict()}
                              for name, fr in ref.features.items()}
    console.print(calibration_table(ref))
    body = orjson.dumps(profile, option=orjson.OPT_INDENT_2)
    if out:
        Path(out).write_bytes(body)
        console.print(f"wrote {out}")
    if publish:
        asyncio.run(publish_profile(settings, profile))
        console.print(f"published to {settings.topics.references} as {model}:{version}")
    return profile


async def publish_profile(settings: Settings, profile: dict[str, Any]) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.runtime.kafka import client_options, ensure_topics

    servers = settings.kafka.servers
    topic = settings.topics.references
    options = client_options(settings)
    await ensure_topics(servers, [topic], settings.kafka.partitions,
                        settings.kafka.replication_factor, compacted=[topic], options=options)
    producer = AIOKafkaProducer(bootstrap_servers=servers, max_request_size=8 * 1024 * 1024,
                                **options)
    await producer.start()
    try:
        key = f"{profile['model']}:{profile['version']}".encode()
        await producer.send_and_wait(topic, orjson.dumps(profile), key=key)
    finally:
        await producer.stop()
