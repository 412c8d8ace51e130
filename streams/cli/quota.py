"""``sentinelle quota estimate``: what a team has used, to ask for quota.

The command reads ``ml.pipeline`` and ``ml.stats`` whole
(:mod:`streams.cli.quota_topics`), sums them up (:mod:`streams.cli.quota_usage`,
whose docstring gives the choices behind every number) and shows the result
here: two tables, and a chart of each pool's cumulative use against its limit
(``plotext``, as text; or a PNG with matplotlib when it is installed).

``ml.pipeline`` is read with the worker's parser and the worker's limits, at
the moment the report is made (:func:`streams.core.predictions.parse_limits`):
an event the worker would dead-letter is not counted, and the report says how
many were skipped (not JSON objects, or not in the contract's shape).
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from streams.cli.base import fail_on, with_settings
from streams.cli.quota_topics import decode_values, read_topic
from streams.config import Settings

if TYPE_CHECKING:
    import polars as pl
    from rich.table import Table

__all__ = ["quota", "estimate", "render", "pipeline_table", "serving_table", "plot_usage",
           "plot_formats"]

PLOT_TEXT = (".txt", ".html", ".ansi")  # what plotext writes; ".png" needs matplotlib
_LABELS = {"1d": "%Y-%m-%d", "1h": "%m-%d %H:00"}  # a period on the chart's x axis
_NOT_OBJECTS = ("not_json", "not_object")  # the parser's codes for what holds no object


@click.group()
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
@click.option("--every", type=click.Choice(list(_LABELS)), default="1d", show_default=True,
              help="chart granularity")
@with_settings
def quota_estimate(capacity_qps: float, headroom: float, days: float | None, plot: str | None,
                   every: str, settings: Settings) -> None:
    """Per pipeline and pool: use per run and per day; per model: peak qps and replicas."""
    with fail_on(ValueError):
        report = asyncio.run(estimate(settings, capacity_qps, days, plot, headroom, every))
    click.echo(report)


async def estimate(settings: Settings, capacity_qps: float, days: float | None,
                   plot: str | None, headroom: float = 0.3, every: str = "1d") -> str:
    """The printable report of ``sentinelle quota estimate``.

    Reads ``settings.topics.stats`` and the pipeline topic whole. ``plot``: None
    for no chart, ``-`` for terminal charts in the report, else a file (see
    :func:`plot_usage`); one chart per pool and resource with a known limit (with
    several, the file name gets ``-POOL-RESOURCE`` before its extension).
    """
    from rich.console import Console
    from rich.progress import Progress

    from streams.cli.quota_usage import parse_runs, replicas, serving_usage
    from streams.core.predictions import parse_limits

    replicas(0.0, capacity_qps, headroom)
    if days is not None and not days > 0:
        raise ValueError("days must be > 0")
    if plot not in (None, "-"):
        _check_plot_path(plot)
    from streams.runtime.kafka import client_options

    servers = settings.kafka.servers
    pipeline_topic = settings.topics.pipeline
    options = client_options(settings)
    # both topics are read whole: a bar each on a terminal, nothing in a pipe
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        def reading(topic: str) -> Callable[[int, int], None]:
            task = bar.add_task(f"reading {topic}", total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        messages, stats_messages = await asyncio.gather(
            read_topic(servers, pipeline_topic, options, reading(pipeline_topic)),
            read_topic(servers, settings.topics.stats, options,
                       reading(settings.topics.stats)))
    runs = parse_runs(messages, parse_limits(settings, time.time()))  # once: table and charts
    undecodable = sum(reason.split(":", 1)[0] in _NOT_OBJECTS for reason in runs.rejected)
    malformed = runs.skipped - undecodable
    stats = decode_values(value for _, value in stats_messages)
    pipelines = runs.usage(days)
    serving = serving_usage(stats.records, capacity_qps, headroom, days)
    span = (f"the last {_num(days)} days of each topic's history" if days is not None
            else "all history")
    notes = [f"Quota estimate from {span}, generated "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
             f"{pipeline_topic}: {runs.events + malformed:,} records"
             + _skipped(undecodable, malformed),
             f"{settings.topics.stats}: {len(stats.records):,} records"
             + _skipped(stats.undecodable, serving.skipped)]
    out = [render(pipelines.frame, serving.frame, capacity_qps, headroom, notes)]
    if plot is not None:
        pairs = runs.pool_pairs()
        if not pairs:
            out.append("no chart: no pipeline event carries a quota with a limit")
        for pool, resource in pairs:
            series = runs.series(pool, resource, every, days)
            target = None if plot == "-" else _plot_path(plot, pool, resource, len(pairs) > 1)
            out.append(plot_usage(series, path=target, every=every,
                                  title=f"pool {pool}: {resource} used, cumulative"))
    return "\n\n".join(out)


def _skipped(undecodable: int, malformed: int) -> str:
    parts = []
    if undecodable:
        parts.append(f"{undecodable:,} not JSON objects")
    if malformed:
        parts.append(f"{malformed:,} not in the contract's shape")
    return f" ({'; '.join(parts)}: skipped)" if parts else ""


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _plot_path(path: str, pool: str, resource: str, several: bool) -> str:
    if not several:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{_slug(pool)}-{_slug(resource)}{p.suffix}"))


# -- rendering ----------------------------------------------------------------------------


def _num(x: float | None) -> str:
    """A number for people: thousands separated, 3 to 4 significant digits, no trailing zeros.

    >>> _num(4.0), _num(5.8), _num(116.5), _num(1234567.8), _num(0.123), _num(None)
    ('4', '5.8', '116.5', '1,234,568', '0.12', '-')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    decimals = 0 if abs(x) >= 1000 else 1 if abs(x) >= 100 else 2
    text = f"{x:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _pool_cell(used: float | None, limit: float | None) -> str:
    if limit is None:
        return "-" if used is None else f"{_num(used)} used"
    share = f" ({used / limit:.0%})" if used is not None and limit > 0 else ""
    return f"{_num(used)} / {_num(limit)}{share}"


def pipeline_table(frame: pl.DataFrame) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title="Batch pipelines: use per run and per UTC day", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("pipeline", "kind", "pool", "resource"):
        table.add_column(col, no_wrap=True)
    for col in ("runs", "run median", "run p95", "days", "day median", "day p95", "total",
                "pool used/limit"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in frame.iter_rows(named=True):
        table.add_row(r["pipeline"], r["kind"], r["pool"], r["resource"], f"{r['runs']:,}",
                      _num(r["run_median"]), _num(r["run_p95"]), f"{r['days']:,}",
                      _num(r["day_median"]), _num(r["day_p95"]), _num(r["total"]),
                      _pool_cell(r["pool_used"], r["pool_limit"]))
    return table


def serving_table(frame: pl.DataFrame, capacity_qps: float, headroom: float) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title=f"Serving: queries per second per model; replicas at "
                        f"{_num(capacity_qps)} qps each with {headroom:.0%} headroom",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    for col in ("windows", "window", "mean qps", "p95 qps", "peak qps"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("peak at (UTC)", no_wrap=True)
    table.add_column("replicas", justify="right", no_wrap=True)
    for r in frame.iter_rows(named=True):
        table.add_row(r["model"], f"{r['windows']:,}", f"{_num(r['window_s'])} s",
                      _num(r["mean_qps"]), _num(r["p95_qps"]), _num(r["peak_qps"]),
                      r["peak_at"].strftime("%Y-%m-%d %H:%M:%S"), str(r["replicas"]))
    return table


def render(pipelines: pl.DataFrame, serving: pl.DataFrame, capacity_qps: float,
           headroom: float = 0.3, notes: Iterable[str] = (), width: int = 200) -> str:
    """The two summaries as plain-text tables (no colour codes), after ``notes``.

    Tables take the width they need, up to ``width`` columns (then the widest
    cells are cut with an ellipsis).
    """
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      emoji=False, highlight=False, soft_wrap=False)
    for note in notes:
        console.print(note, markup=False)
    console.print()
    if pipelines.is_empty():
        console.print("Batch pipelines: no run reported resources.", markup=False)
    else:
        console.print(pipeline_table(pipelines))
    console.print()
    if serving.is_empty():
        console.print("Serving: no window statistics.", markup=False)
    else:
        console.print(serving_table(serving, capacity_qps, headroom))
        console.print(f"replicas = ceil(peak qps x {1 + headroom:g} / {_num(capacity_qps)}), "
                      "at least 1", markup=False)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def plot_formats() -> tuple[str, ...]:
    """The file extensions :func:`plot_usage` can write."""
    return (*PLOT_TEXT, ".png")


def _check_plot_path(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in plot_formats():
        raise ValueError(f"cannot write a chart to {path!r}: use a file ending in "
                         f"{', '.join(plot_formats())}")
    return ext


def _chart(series: pl.DataFrame, limit: float | None, title: str, every: str,
           width: int, height: int) -> Any:
    """The plotext matrix of ``series``; plotext's figure is global, so it is cleared after."""
    import plotext  # here: importing it sizes up the terminal, which other commands skip

    fig = plotext.figure
    fig.clear()
    try:
        fig.plot_size(width, height)
        n = series.height
        xs = list(range(n))
        cumulative = series["cumulative"].to_list()
        fig.draw(fig.signal(xs, cumulative).lines())
        reported = series.select("period", "reported_used").with_row_index("i").drop_nulls()
        if not reported.is_empty():
            fig.draw(fig.signal(reported["i"].to_list(), reported["reported_used"].to_list(),
                                marker="•"))
        values = [*cumulative, *reported["reported_used"].to_list()]
        if limit is not None:
            fig.line(limit, orientation=0)
            values.append(limit)
        fig.legend(False)
        fig.ruler("y").lim(0, max(values, default=0.0) * 1.1 or 1.0)
        if n == 1:
            fig.ruler("x").lim(-1, 1)
        step = max(1, -(-n // 6))  # at most 6 date labels
        ticks = list(range(0, n, step))
        fig.ruler("x").ticks(ticks, [series["period"][i].strftime(_LABELS[every])
                                     for i in ticks])
        fig.title(title)
        return fig.build()
    finally:
        fig.clear()


def _legend(limit: float | None, reported: bool) -> str:
    parts = ["▀▄ runs' use, cumulative"]
    if reported:
        parts.append("• used as the pool reports it")
    if limit is not None:
        parts.append(f"─ limit {_num(limit)}")
    return "   ".join(parts)


def _save_png(series: pl.DataFrame, limit: float | None, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    try:
        periods = series["period"].to_list()
        ax.plot(periods, series["cumulative"].to_list(), label="runs' use, cumulative")
        reported = series.select("period", "reported_used").drop_nulls()
        if not reported.is_empty():
            ax.plot(reported["period"].to_list(), reported["reported_used"].to_list(), "o",
                    label="used as the pool reports it")
        if limit is not None:
            ax.axhline(limit, color="red", linestyle="--", label=f"limit {_num(limit)}")
        values = [*series["cumulative"].to_list(), *reported["reported_used"].to_list()]
        ax.set_ylim(0, max([*values, limit or 0.0]) * 1.1 or 1.0)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never on the data
        fig.autofmt_xdate()
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_usage(series: pl.DataFrame, limit: float | None = None, path: str | None = None,
               title: str = "use against the limit", every: str = "1d", width: int = 80,
               height: int = 20) -> str:
    """A chart of ``series`` (from :func:`usage_series`) against ``limit``.

    ``limit`` defaults to the series' last known limit. Without ``path`` the
    chart is returned as text (no colour codes). With a ``path`` ending in
    ``.txt``, ``.ansi`` (with colours) or ``.html`` plotext writes it there;
    ``.png`` needs matplotlib: when it is missing, the text says so and holds the
    terminal chart instead. Returns what to print.
    """
    if path is not None:
        ext = _check_plot_path(path)
    if series.is_empty():
        return f"{title}: nothing to plot"
    if limit is None and "limit" in series.columns:
        known = series["limit"].drop_nulls()
        limit = float(known[-1]) if not known.is_empty() else None
    has_reported = series["reported_used"].drop_nulls().len() > 0
    if path is not None and ext == ".png":
        try:
            _save_png(series, limit, title, path)
            return f"chart saved to {path}"
        except ImportError:
            note = (f"cannot write {path}: a PNG needs matplotlib, which is not installed "
                    "(pip install matplotlib); here is the terminal chart instead:\n")
            path = None
    else:
        note = ""
    matrix = _chart(series, limit, title, every, width, height)
    if path is not None:
        matrix.save(path)
        return f"chart saved to {path}"
    return f"{note}{matrix.string(colorless=True)}\n{_legend(limit, has_reported)}"
