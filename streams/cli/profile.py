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

__all__ = ["profile", "scan", "make_profile", "calibration_table", "publish_profile",
           "with_columns", "score_calibration_line"]


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
@click.option("--prediction-column", default="prediction", show_default=True,
              help="the model's output in DATA (a probability calibrates the label-free "
                   "accuracy estimate)")
@click.option("--label-column", default="label", show_default=True,
              help="the true label in DATA")
@click.option("--decision-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.5, show_default=True,
              help="a probability at or above it predicts 1 (for the calibration)")
@click.option("--calibration-knots", type=click.IntRange(2, 200), default=50, show_default=True,
              help="at most this many knots in the score calibration")
@click.option("--out", type=click.Path(dir_okay=False), help="write the profile JSON here")
@click.option("--publish", is_flag=True, help="send it to ml.references")
@with_settings
def profile_build(data: str, model: str, version: str, bins: int, max_categories: int,
                  prediction_column: str, label_column: str, decision_threshold: float,
                  calibration_knots: int, out: str | None, publish: bool,
                  settings: Settings) -> None:
    """Profile DATA (Parquet or CSV, read lazily) for MODEL VERSION.

    With a prediction and a label column, the profile also carries the model's
    accuracy on DATA and, for probabilities and 0/1 labels, what a score means
    (score -> P(label = 1)), which calibrates the accuracy estimated without labels.
    """
    from polars.exceptions import PolarsError

    with fail_on(ValueError, OSError, PolarsError, prefix=f"cannot profile {data}: "):
        result = make_profile(data, model, version, settings, bins, max_categories, out,
                              publish, columns={"prediction": prediction_column,
                                                "label": label_column},
                              decision_threshold=decision_threshold,
                              calibration_knots=calibration_knots)
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


def with_columns(lf: pl.LazyFrame, columns: dict[str, str] | None) -> pl.LazyFrame:
    """``lf`` with its prediction and label columns under the profile's names
    (``columns``: profile name -> DATA's column; a missing one is left out)."""
    names = set(lf.collect_schema().names())
    rename = {src: dst for dst, src in (columns or {}).items() if src != dst and src in names}
    clash = sorted(dst for dst in rename.values() if dst in names and dst not in rename)
    if clash:
        raise ValueError(f"DATA already has a column named {clash[0]!r}: rename it, or pass "
                         f"--{clash[0]}-column {clash[0]}")
    return lf.rename(rename) if rename else lf


def score_calibration_line(profile: dict[str, Any]) -> str:
    """One line about the profile's score calibration, or why there is none."""
    cal = (profile.get("performance") or {}).get("score_calibration")
    if not cal:
        return ("no score calibration (needs probabilities in 'prediction' and 0/1 'label'): "
                "accuracy estimates without labels will be uncalibrated")
    return (f"score calibration: {len(cal['scores'])} knots on {cal['rows']:,} labelled rows; "
            f"reference accuracy {cal['accuracy']:.3f} at threshold {cal['threshold']:g}, "
            f"expected from calibrated scores {cal['expected_accuracy']:.3f}, from raw "
            f"confidence {cal['raw_accuracy']:.3f}")


def make_profile(data: str, model: str, version: str, settings: Settings, bins: int,
                 max_categories: int, out: str | None, publish: bool,
                 columns: dict[str, str] | None = None, decision_threshold: float = 0.5,
                 calibration_knots: int = 50) -> dict[str, Any]:
    """Profile ``data``, show its calibration (on stderr), write it to ``out`` and/or
    publish it; returns the profile."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from detectors.profile import build_profile
    from streams.core.references import Reference

    console = Console(stderr=True)
    # a pass over the data per column: a bar on a terminal, nothing in a pipe
    with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[column]}"),
                  console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(f"profiling {Path(data).name}", total=None, column="")

        def show(column: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, column=column)

        profile = build_profile(with_columns(scan(data), columns), model, version, bins=bins,
                                max_categories=max_categories,
                                decision_threshold=decision_threshold,
                                calibration_knots=calibration_knots, progress=show)
    ref = Reference.from_profile(profile, settings.skew, settings.drift.baseline_factor)
    profile["calibration"] = {name: {"skew": fr.skew.to_dict(), "drift": fr.drift.to_dict()}
                              for name, fr in ref.features.items()}
    console.print(calibration_table(ref))
    console.print(score_calibration_line(profile))
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
