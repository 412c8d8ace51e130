"""``sentinelle quota estimate``: what a team has used, to ask for quota.

Pure functions over recorded history (no Kafka, except :func:`read_topic_records`
and :func:`estimate`, which read the topics and call them):

- **batch pipelines** (``ml.pipeline``): per pipeline, pool and resource, what one
  run uses and what one day uses (median and p95), the total, and the pool's
  latest known ``quota`` (used and limit);
- **serving** (``ml.stats``): per model, the peak and p95 queries per second and
  a replica count at a given per-replica capacity;
- a chart of a pool's cumulative use against its limit (``plotext``, as text; or
  a PNG with matplotlib when it is installed).

Choices, and why:

- A run's ``resources`` are cumulative (the amount used *so far*), so a run uses
  the **maximum** amount seen for a resource over its events, not their sum.
  The maximum equals the last value when events arrive in order, and stays
  right when they do not, when a heartbeat is delivered twice (Kafka is at least
  once), or when the ``--days`` cut drops a run's early events. A run counts
  whatever its status: a failed or unfinished run used what it reported.
- A run is ``(pipeline, run_id)``; its **day** is the UTC day of its last event
  (when it finished, or its latest heartbeat); its **pool** is the
  ``quota.pool`` of its latest event that has one, else ``-``.
- **Per day**, the runs of a day are summed; days without a run between a
  series' first and last day count as 0, so a pipeline that runs every other day
  is not credited with twice its real daily use. Days before its first run do
  not count: a pipeline started last week is judged on last week.
- Percentiles are linear interpolations between order statistics (numpy's and
  Polars' default): the p95 of runs using 2, 4 and 6 is 5.8.
- A pool's ``used`` and ``limit`` are those of the latest event (by ``ts``)
  whose ``quota`` names that pool and resource: the scheduler's own figures, which
  may include consumers Sentinelle does not see.
- ``--days N`` keeps the last N days *of the history* (before its newest
  record, not the wall clock), so the report of a recorded stream is the same
  whenever it is run. A run is kept when its last event is in that span.
- **Serving**: each ``ml.stats`` window gives ``count / (end - start)`` queries
  per second; a model's rate in a window is the sum over its versions and
  cohorts of the windows that start then (dividing each window by its own
  length stays right if the window size changed). A window published twice
  (same series, start and end) counts once, the last copy. Windows are only
  published for traffic, so the mean and p95 are over windows with traffic, and
  bursts shorter than a window are averaged into it: with 60 s windows the peak
  is the busiest minute.
- **Replicas** = ``ceil(peak_qps * (1 + headroom) / capacity_qps)``, at least 1:
  enough replicas to serve the busiest window with ``headroom`` (30 %) to spare,
  for bursts inside a window, growth, and one replica down or restarting.
  ``capacity_qps`` is what one replica sustains within its latency objective
  (from a load test). Sizing on the peak, not the p95, because quota that only
  covers the p95 fails at the peak, the moment it matters.
- Records that break the contract (a missing or mistyped field, an unknown
  ``kind`` or ``status``, a bad time, a ``quota`` without its four fields or with
  a limit that is not positive, a negative resource amount) are skipped and
  counted, never guessed at.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson
import polars as pl
from aiokafka.admin import AIOKafkaAdminClient
from rich import box
from rich.console import Console
from rich.table import Table

from detectors.contract import PIPELINE_KINDS, RUN_STATUSES
from streams.config import Settings
from streams.core.parse import parse_time
from streams.runtime.follow import read_all

__all__ = ["Usage", "Decoded", "pipeline_usage", "serving_usage", "usage_series",
           "pool_pairs", "replicas", "decode_values", "read_topic_records", "render",
           "pipeline_table", "serving_table", "plot_usage", "plot_formats", "estimate"]

DAY_S = 86_400.0
_YEAR_10000 = 253_402_300_800.0
PLOT_TEXT = (".txt", ".html", ".ansi")  # what plotext writes; ".png" needs matplotlib
_KEYS = ["pipeline", "pool", "resource"]
_EVERY = {"1d": "%Y-%m-%d", "1h": "%m-%d %H:00"}


class Usage(NamedTuple):
    """A summary frame and how many input records were skipped as malformed."""

    frame: pl.DataFrame
    skipped: int


class Decoded(NamedTuple):
    """Records decoded from a topic and how many messages (or batch elements) were not."""

    records: list[dict[str, Any]]
    undecodable: int


class _Malformed(ValueError):
    pass


# -- parsing ------------------------------------------------------------------------------


def _text(rec: Mapping[str, Any], name: str) -> str:
    v = rec.get(name)
    if not isinstance(v, str) or not v:
        raise _Malformed(f"'{name}' must be a non-empty string")
    return v


def _amount(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _Malformed(f"'{name}' must be a finite number >= 0")
    return float(v)


def _time(v: Any) -> float:
    try:
        ts = parse_time(v)
    except ValueError as exc:  # parse.Invalid is a ValueError
        raise _Malformed(str(exc)) from None
    if not 0 <= ts < _YEAR_10000:  # epoch seconds that no calendar date can show
        raise _Malformed("time out of range")
    return ts


def _append(columns: dict[str, list[Any]], *values: Any) -> None:
    for column, value in zip(columns.values(), values, strict=True):
        column.append(value)


class _Pipeline(NamedTuple):
    runs: pl.DataFrame  # pipeline, run_id, kind, pool, last_ts
    amounts: pl.DataFrame  # pipeline, run_id, resource, amount (max over the run's events)
    quotas: pl.DataFrame  # pool, resource, ts, used, limit (one row per event with a quota)
    skipped: int


def _parse_pipeline(records: Iterable[Any]) -> _Pipeline:
    ev: dict[str, list[Any]] = {k: [] for k in ("pipeline", "run_id", "kind", "pool", "ts")}
    res: dict[str, list[Any]] = {k: [] for k in ("pipeline", "run_id", "resource", "amount")}
    quo: dict[str, list[Any]] = {k: [] for k in ("pool", "resource", "ts", "used", "limit")}
    skipped = 0
    for rec in records:
        try:
            if not isinstance(rec, dict):
                raise _Malformed("not an object")
            _text(rec, "event_id")
            pipeline, run_id = _text(rec, "pipeline"), _text(rec, "run_id")
            kind, status = _text(rec, "kind"), _text(rec, "status")
            if kind not in PIPELINE_KINDS or status not in RUN_STATUSES:
                raise _Malformed("unknown kind or status")
            ts = _time(rec.get("ts"))
            resources = rec.get("resources") or {}
            if not isinstance(resources, dict):
                raise _Malformed("'resources' must be an object")
            amounts = {str(k): _amount(v, f"resources.{k}") for k, v in resources.items()}
            quota = rec.get("quota")
            pool: str | None = None
            if quota is not None:
                if not isinstance(quota, dict):
                    raise _Malformed("'quota' must be an object")
                pool, resource = _text(quota, "pool"), _text(quota, "resource")
                used = _amount(quota.get("used"), "quota.used")
                limit = _amount(quota.get("limit"), "quota.limit")
                if limit <= 0:
                    raise _Malformed("'quota.limit' must be positive")
        except _Malformed:
            skipped += 1
            continue
        _append(ev, pipeline, run_id, kind, pool, ts)
        for name, amount in amounts.items():
            _append(res, pipeline, run_id, name, amount)
        if pool is not None:
            _append(quo, pool, resource, ts, used, limit)
    events = pl.DataFrame(ev, schema={"pipeline": pl.String, "run_id": pl.String,
                                      "kind": pl.String, "pool": pl.String, "ts": pl.Float64})
    runs = events.sort("ts").group_by("pipeline", "run_id").agg(
        pl.col("kind").last(),
        pl.col("pool").drop_nulls().last().fill_null("-"),
        pl.col("ts").max().alias("last_ts"),
    )
    per_run = pl.DataFrame(res, schema={"pipeline": pl.String, "run_id": pl.String,
                                        "resource": pl.String, "amount": pl.Float64})
    per_run = per_run.group_by("pipeline", "run_id", "resource").agg(pl.col("amount").max())
    quotas = pl.DataFrame(quo, schema={"pool": pl.String, "resource": pl.String,
                                       "ts": pl.Float64, "used": pl.Float64,
                                       "limit": pl.Float64})
    return _Pipeline(runs, per_run, quotas, skipped)


def _cutoff(ts: pl.Series, days: float | None, now: float | None) -> float | None:
    if days is None or ts.is_empty():
        return None
    newest = float(ts.max()) if now is None else now  # type: ignore[arg-type]
    return newest - days * DAY_S


def _utc(col: str) -> pl.Expr:
    return (pl.col(col) * 1000).round().cast(pl.Int64).cast(pl.Datetime("ms", "UTC"))


def _run_usage(p: _Pipeline, days: float | None, now: float | None) -> pl.DataFrame:
    """One row per (run, resource): pipeline, run_id, kind, pool, resource, amount, last_ts."""
    runs = p.runs
    since = _cutoff(runs["last_ts"], days, now)
    if since is not None:
        runs = runs.filter(pl.col("last_ts") >= since)
    return p.amounts.join(runs, on=["pipeline", "run_id"], how="inner")


# -- batch pipelines ----------------------------------------------------------------------


def pipeline_usage(records: Iterable[Any], days: float | None = None,
                   now: float | None = None) -> Usage:
    """Per (pipeline, pool, resource): use per run and per UTC day, and the pool's quota.

    Columns: ``pipeline``, ``kind``, ``pool``, ``resource``, ``runs``, ``run_median``,
    ``run_p95``, ``days``, ``day_median``, ``day_p95``, ``total``, ``pool_used``,
    ``pool_limit`` (null when no ``quota`` names the pool and resource). ``days``
    keeps the runs that ended in the last ``days`` days before ``now`` (default:
    the newest run's last event).

    >>> ev = {"event_id": "e", "pipeline": "p", "kind": "training", "status": "succeeded"}
    >>> frame, skipped = pipeline_usage([
    ...     {**ev, "run_id": "r1", "ts": 0, "resources": {"gpu_hours": 2}},
    ...     {**ev, "run_id": "r2", "ts": 10, "resources": {"gpu_hours": 4}}, {"ts": 1}])
    >>> frame.select("runs", "run_median", "day_median", "total").row(0), skipped
    ((2, 3.0, 6.0, 6.0), 1)
    """
    return _summary(_parse_pipeline(records), days, now)


def _summary(p: _Pipeline, days: float | None, now: float | None) -> Usage:
    usage = _run_usage(p, days, now).with_columns(_utc("last_ts").dt.date().alias("day"))
    daily = usage.group_by(*_KEYS, "day").agg(pl.col("amount").sum())
    span = daily.group_by(_KEYS).agg(pl.col("day").min().alias("first"),
                                     pl.col("day").max().alias("last"))
    span = (span.with_columns(pl.date_ranges("first", "last", "1d").alias("day"))
            .explode("day").drop("first", "last"))
    daily = (span.join(daily, on=[*_KEYS, "day"], how="left")
             .with_columns(pl.col("amount").fill_null(0.0)))
    per_run = usage.sort("last_ts").group_by(_KEYS).agg(
        pl.col("kind").last(),
        pl.len().alias("runs"),
        pl.col("amount").median().alias("run_median"),
        pl.col("amount").quantile(0.95, "linear").alias("run_p95"),
        pl.col("amount").sum().alias("total"),
    )
    per_day = daily.group_by(_KEYS).agg(
        pl.len().alias("days"),
        pl.col("amount").median().alias("day_median"),
        pl.col("amount").quantile(0.95, "linear").alias("day_p95"),
    )
    latest = (p.quotas.sort("ts").group_by("pool", "resource")
              .agg(pl.col("used").last().alias("pool_used"),
                   pl.col("limit").last().alias("pool_limit")))
    frame = (per_run.join(per_day, on=_KEYS, how="left")
             .join(latest, on=["pool", "resource"], how="left")
             .select("pipeline", "kind", "pool", "resource", "runs", "run_median", "run_p95",
                     pl.col("days").cast(pl.Int64), "day_median", "day_p95", "total",
                     "pool_used", "pool_limit")
             .with_columns(pl.col("runs").cast(pl.Int64))
             .sort(_KEYS))
    return Usage(frame, p.skipped)


def usage_series(records: Iterable[Any], pool: str, resource: str, every: str = "1d",
                 days: float | None = None, now: float | None = None) -> pl.DataFrame:
    """A pool's use of one resource per period (``1d`` or ``1h``, UTC), for the chart.

    Columns: ``period`` (start, UTC), ``used`` (what the pool's runs that ended in
    the period used), ``cumulative`` (running sum of ``used``), ``reported_used``
    and ``limit`` (the pool's latest ``quota`` of the period; ``limit`` carried
    forward from earlier periods). Periods without anything are filled: ``used``
    0, ``reported_used`` null. With ``days``, ``cumulative`` starts at the cut.
    """
    return _series(_parse_pipeline(records), pool, resource, every, days, now)


def _series(p: _Pipeline, pool: str, resource: str, every: str, days: float | None,
            now: float | None) -> pl.DataFrame:
    if every not in _EVERY:
        raise ValueError(f"every must be one of {', '.join(_EVERY)}, not {every!r}")
    if now is None and days is not None:  # one "newest record" for runs and quotas alike
        now = pl.concat([p.runs["last_ts"], p.quotas["ts"]]).max()  # type: ignore[assignment]
    usage = (_run_usage(p, days, now)
             .filter((pl.col("pool") == pool) & (pl.col("resource") == resource))
             .with_columns(_utc("last_ts").dt.truncate(every).alias("period"))
             .group_by("period").agg(pl.col("amount").sum().alias("used")))
    quotas = p.quotas.filter((pl.col("pool") == pool) & (pl.col("resource") == resource))
    since = _cutoff(quotas["ts"], days, now)
    if since is not None:
        quotas = quotas.filter(pl.col("ts") >= since)
    quotas = (quotas.sort("ts").with_columns(_utc("ts").dt.truncate(every).alias("period"))
              .group_by("period").agg(pl.col("used").last().alias("reported_used"),
                                      pl.col("limit").last()))
    schema: dict[str, Any] = {"period": pl.Datetime("ms", "UTC"), "used": pl.Float64,
                              "cumulative": pl.Float64, "reported_used": pl.Float64,
                              "limit": pl.Float64}
    periods = pl.concat([usage["period"], quotas["period"]])
    if periods.is_empty():
        return pl.DataFrame(schema=schema)
    first, last = cast(datetime, periods.min()), cast(datetime, periods.max())
    grid = pl.DataFrame({"period": pl.datetime_range(first, last, every, eager=True,
                                                     time_zone="UTC")})
    grid = grid.with_columns(pl.col("period").cast(pl.Datetime("ms", "UTC")))
    return (grid.join(usage, on="period", how="left").join(quotas, on="period", how="left")
            .sort("period")
            .with_columns(pl.col("used").fill_null(0.0), pl.col("limit").forward_fill())
            .with_columns(pl.col("used").cum_sum().alias("cumulative"))
            .select(list(schema)).cast(schema))  # type: ignore[arg-type]


def pool_pairs(records: Iterable[Any]) -> list[tuple[str, str]]:
    """The (pool, resource) pairs some ``quota`` names, sorted: what has a limit to plot."""
    return _pairs(_parse_pipeline(records))


def _pairs(p: _Pipeline) -> list[tuple[str, str]]:
    return sorted(set(p.quotas.select("pool", "resource").iter_rows()))


# -- serving ------------------------------------------------------------------------------


def replicas(peak_qps: float, capacity_qps: float, headroom: float = 0.3) -> int:
    """``ceil(peak_qps * (1 + headroom) / capacity_qps)``, at least 1.

    A quotient a rounding error above an integer (100 * 1.1 / 10) rounds down.

    >>> replicas(100, 50), replicas(100, 10, 0.1), replicas(0, 50)
    (3, 11, 1)
    """
    if capacity_qps <= 0 or not math.isfinite(capacity_qps):
        raise ValueError("capacity_qps must be a positive number")
    if headroom < 0 or not math.isfinite(headroom):
        raise ValueError("headroom must be a number >= 0")
    need = peak_qps * (1 + headroom) / capacity_qps
    return max(1, math.ceil(need - 1e-9 * max(1.0, need)))


def serving_usage(stats_records: Iterable[Any], capacity_qps: float, headroom: float = 0.3,
                  days: float | None = None, now: float | None = None) -> Usage:
    """Per model, from ``ml.stats`` windows: queries per second and replicas.

    Columns: ``model``, ``windows`` (window starts with traffic), ``window_s``
    (median window length), ``mean_qps``, ``p95_qps``, ``peak_qps``, ``peak_at``
    (start of the busiest window, UTC), ``replicas`` (see :func:`replicas`).
    ``days`` keeps the windows that start in the last ``days`` days before ``now``
    (default: the newest window's start).
    """
    replicas(0.0, capacity_qps, headroom)  # validates both before any work
    rows: dict[str, list[Any]] = {k: [] for k in ("model", "version", "cohort", "start",
                                                  "end", "count")}
    skipped = 0
    for rec in stats_records:
        try:
            if not isinstance(rec, dict):
                raise _Malformed("not an object")
            model = _text(rec, "model")
            version, cohort = rec.get("version", "-"), rec.get("cohort", "stable")
            if not isinstance(version, str) or not isinstance(cohort, str):
                raise _Malformed("'version' and 'cohort' must be strings")
            window = rec.get("window")
            if not isinstance(window, dict):
                raise _Malformed("'window' must be an object")
            start, end = _time(window.get("start")), _time(window.get("end"))
            count = _amount(rec.get("count"), "count")
            if end <= start:
                raise _Malformed("the window ends before it starts")
        except _Malformed:
            skipped += 1
            continue
        _append(rows, model, version, cohort, start, end, count)
    frame = pl.DataFrame(rows, schema={"model": pl.String, "version": pl.String,
                                       "cohort": pl.String, "start": pl.Float64,
                                       "end": pl.Float64, "count": pl.Float64})
    frame = frame.unique(["model", "version", "cohort", "start", "end"], keep="last",
                         maintain_order=True)
    since = _cutoff(frame["start"], days, now)
    if since is not None:
        frame = frame.filter(pl.col("start") >= since)
    per_window = (frame.group_by("model", "start")
                  .agg((pl.col("count") / (pl.col("end") - pl.col("start"))).sum().alias("qps"),
                       (pl.col("end") - pl.col("start")).max().alias("length")))
    out = (per_window.sort("model", "start").group_by("model").agg(
        pl.len().cast(pl.Int64).alias("windows"),
        pl.col("length").median().alias("window_s"),
        pl.col("qps").mean().alias("mean_qps"),
        pl.col("qps").quantile(0.95, "linear").alias("p95_qps"),
        pl.col("qps").max().alias("peak_qps"),
        pl.col("start").sort_by("qps", descending=True).first().alias("peak_at"),
    ).with_columns(_utc("peak_at").alias("peak_at")).sort("model"))
    out = out.with_columns(pl.Series(
        "replicas", [replicas(q, capacity_qps, headroom) for q in out["peak_qps"]],
        dtype=pl.Int64))
    return Usage(out, skipped)


# -- reading the topics -------------------------------------------------------------------


def decode_values(values: Iterable[bytes | None]) -> Decoded:
    """JSON objects, and the objects of JSON arrays (the contract's batch form).

    A message that is not JSON, or not an object or array, counts as one
    undecodable record, and so does each element of a batch that is not an object.
    Tombstones (``None``) are not records and are not counted.

    >>> decode_values([b'{"a": 1}', b'[{"b": 2}, 3]', b'nope', None])
    Decoded(records=[{'a': 1}, {'b': 2}], undecodable=2)
    """
    out: list[dict[str, Any]] = []
    bad = 0
    for value in values:
        if value is None:
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if isinstance(item, dict):
                out.append(item)
            else:
                bad += 1
    return Decoded(out, bad)


async def _exists(servers: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        return topic in set(await admin.list_topics())
    finally:
        await admin.close()


async def read_topic_records(servers: str, topic: str) -> Decoded:
    """Every record now in ``topic``, decoded (see :func:`decode_values`).

    A topic that does not exist holds no records (it is not created: this is a
    read-only report).
    """
    if not await _exists(servers, topic):
        return Decoded([], 0)
    return decode_values(value for _, value in await read_all(servers, topic))


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
        fig.ruler("x").ticks(ticks, [series["period"][i].strftime(_EVERY[every])
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


# -- the command ----------------------------------------------------------------------------


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _plot_path(path: str, pool: str, resource: str, several: bool) -> str:
    if not several:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{_slug(pool)}-{_slug(resource)}{p.suffix}"))


async def estimate(settings: Settings, capacity_qps: float, days: float | None,
                   plot: str | None, headroom: float = 0.3, every: str = "1d") -> str:
    """The printable report of ``sentinelle quota estimate``.

    Reads ``settings.topics.stats`` and the pipeline topic whole. ``plot``: None
    for no chart, ``-`` for terminal charts in the report, else a file (see
    :func:`plot_usage`); one chart per pool and resource with a known limit (with
    several, the file name gets ``-POOL-RESOURCE`` before its extension).
    """
    replicas(0.0, capacity_qps, headroom)
    if days is not None and not days > 0:
        raise ValueError("days must be > 0")
    if plot not in (None, "-"):
        _check_plot_path(plot)
    servers = settings.kafka.servers
    pipeline_topic = settings.topics.pipeline
    runs, stats = await asyncio.gather(read_topic_records(servers, pipeline_topic),
                                       read_topic_records(servers, settings.topics.stats))
    parsed = _parse_pipeline(runs.records)  # once: the table and every chart use it
    pipelines = _summary(parsed, days, None)
    serving = serving_usage(stats.records, capacity_qps, headroom, days)
    span = (f"the last {_num(days)} days of each topic's history" if days is not None
            else "all history")
    notes = [f"Quota estimate from {span}, generated "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
             f"{pipeline_topic}: {len(runs.records):,} records"
             + _skipped(runs.undecodable, pipelines.skipped),
             f"{settings.topics.stats}: {len(stats.records):,} records"
             + _skipped(stats.undecodable, serving.skipped)]
    out = [render(pipelines.frame, serving.frame, capacity_qps, headroom, notes)]
    if plot is not None:
        pairs = _pairs(parsed)
        if not pairs:
            out.append("no chart: no pipeline event carries a quota with a limit")
        for pool, resource in pairs:
            series = _series(parsed, pool, resource, every, days, None)
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
