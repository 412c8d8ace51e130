"""What pipelines and serving have used, from recorded history: pure functions, Polars.

The numbers behind ``sentinelle quota estimate`` (no Kafka here; the command reads
the topics, see :mod:`streams.cli.quota_topics`, and draws, see
:mod:`streams.cli.quota`):

- **batch pipelines** (``ml.pipeline``): per pipeline, pool and resource, what one
  run uses and what one day uses (median and p95), the total, and the pool's
  latest known ``quota`` (used and limit); per pool and resource, the use per
  period for the chart;
- **serving** (``ml.stats``): per model, the peak and p95 queries per second and
  a replica count at a given per-replica capacity.

Choices, and why:

- ``ml.pipeline`` messages are read by the worker's own parser,
  :func:`streams.core.parse.parse_pipeline` (batches, limits, times, keys and
  reasons included), so the estimate counts exactly the events the worker
  accepts. What it refuses is skipped and kept with its reason
  (:attr:`Runs.rejected`), never guessed at. The estimate adds one rule: an
  amount used (a ``resources`` entry, ``quota.used``) is not negative.
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
- ``days`` keeps the last N days *of the history* (before its newest record, not
  the wall clock), so the report of a recorded stream is the same whenever it is
  run. A run is kept when its last event is in that span.
- **Serving**: each ``ml.stats`` window gives ``count / (end - start)`` queries
  per second; a model's rate in a window is the sum over its versions and
  cohorts of the windows that start then (dividing each window by its own
  length stays right if the window size changed). A window published twice
  (same series, start and end) counts once, the last copy. Windows are only
  published for traffic, so the mean and p95 are over windows with traffic, and
  bursts shorter than a window are averaged into it: with 60 s windows the peak
  is the busiest minute. ``ml.stats`` is Sentinelle's own output; a window
  without a model, a window or a count, or with a bad time, is skipped and counted.
- **Replicas** = ``ceil(peak_qps * (1 + headroom) / capacity_qps)``, at least 1:
  enough replicas to serve the busiest window with ``headroom`` (30 %) to spare,
  for bursts inside a window, growth, and one replica down or restarting.
  ``capacity_qps`` is what one replica sustains within its latency objective
  (from a load test). Sizing on the peak, not the p95, because quota that only
  covers the p95 fails at the peak, the moment it matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple, cast

import polars as pl

from streams.core.parse import (
    MIN_TS,
    UNCHECKED,
    Key,
    ParseLimits,
    parse_pipeline,
    parse_time,
)

__all__ = ["Usage", "Runs", "HISTORY_LIMITS", "PERIODS", "parse_runs", "pipeline_usage",
           "usage_series", "pool_pairs", "replicas", "serving_usage"]

DAY_S = 86_400.0
_YEAR_10000 = 253_402_300_800.0  # epoch seconds that no calendar date can show
PERIODS: Final = ("1d", "1h")  # what a chart's period can be (UTC)
_KEYS = ["pipeline", "pool", "resource"]

#: The times :func:`parse_runs` accepts when no clock is given: from 2000 on, as
#: the worker, up to the last second a calendar date can show. The command bounds
#: them by its clock instead, exactly as the worker does
#: (:func:`streams.core.predictions.parse_limits`).
HISTORY_LIMITS: Final = ParseLimits(min_ts=MIN_TS, max_ts=_YEAR_10000 - 1)


class Usage(NamedTuple):
    """A summary frame and how many input records were skipped as malformed."""

    frame: pl.DataFrame
    skipped: int


def _append(columns: dict[str, list[Any]], *values: Any) -> None:
    for column, value in zip(columns.values(), values, strict=True):
        column.append(value)


# -- batch pipelines ----------------------------------------------------------------------


class Runs(NamedTuple):
    """The runs an ``ml.pipeline`` history holds, parsed once for the table and the charts."""

    runs: pl.DataFrame  # pipeline, run_id, kind, pool, last_ts
    amounts: pl.DataFrame  # pipeline, run_id, resource, amount (max over the run's events)
    quotas: pl.DataFrame  # pool, resource, ts, used, limit (one row per event with a quota)
    events: int  # events used
    rejected: list[str]  # the reason (``code: detail``) of each record skipped

    @property
    def skipped(self) -> int:
        return len(self.rejected)

    def usage(self, days: float | None = None, now: float | None = None) -> Usage:
        """Per (pipeline, pool, resource): use per run and per UTC day, and the pool's
        quota; see :func:`pipeline_usage`."""
        return _summary(self, days, now)

    def series(self, pool: str, resource: str, every: str = "1d", days: float | None = None,
               now: float | None = None) -> pl.DataFrame:
        """A pool's use of one resource per period; see :func:`usage_series`."""
        return _series(self, pool, resource, every, days, now)

    def pool_pairs(self) -> list[tuple[str, str]]:
        """The (pool, resource) pairs some ``quota`` names, sorted: what has a limit."""
        return sorted(set(self.quotas.select("pool", "resource").iter_rows()))


def parse_runs(messages: Iterable[tuple[Key, bytes | None]],
               limits: ParseLimits = HISTORY_LIMITS) -> Runs:
    """The runs in ``ml.pipeline`` messages, ``(key, value)`` as Kafka holds them.

    Each value goes through :func:`streams.core.parse.parse_pipeline` with
    ``limits`` and its key (``UNCHECKED``: the key is not checked); a batch is
    read element by element. A tombstone (no value) is not a record.

    >>> runs = parse_runs([(b"p", b'{"event_id": "e", "ts": 1e9, "pipeline": "p", '
    ...                           b'"kind": "training", "run_id": "r", "status": "started"}'),
    ...                    (UNCHECKED, b'{"pipeline": "p"}'), (b"q", b"[1]"), (None, None)])
    >>> runs.events, runs.rejected
    (1, ["missing_field: 'event_id' is required", 'not_object: expected a JSON object, got int'])
    """
    ev: dict[str, list[Any]] = {k: [] for k in ("pipeline", "run_id", "kind", "pool", "ts")}
    res: dict[str, list[Any]] = {k: [] for k in ("pipeline", "run_id", "resource", "amount")}
    quo: dict[str, list[Any]] = {k: [] for k in ("pool", "resource", "ts", "used", "limit")}
    rejected: list[str] = []
    for key, value in messages:
        if value is None:
            continue
        events: list[dict[str, Any]] = []
        rejected.extend(dead.reason for dead in parse_pipeline(value, events, limits, key))
        for rec in events:
            quota = rec.get("quota")
            _append(ev, rec["pipeline"], rec["run_id"], rec["kind"],
                    quota["pool"] if quota else None, rec["ts"])
            for name, amount in (rec["resources"] or {}).items():
                _append(res, rec["pipeline"], rec["run_id"], name, amount)
            if quota:
                _append(quo, quota["pool"], quota["resource"], rec["ts"], quota["used"],
                        quota["limit"])
    events_frame = pl.DataFrame(ev, schema={"pipeline": pl.String, "run_id": pl.String,
                                            "kind": pl.String, "pool": pl.String,
                                            "ts": pl.Float64})
    runs = events_frame.sort("ts").group_by("pipeline", "run_id").agg(
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
    return Runs(runs, per_run, quotas, events_frame.height, rejected)


def _unkeyed(values: Iterable[bytes | None]) -> Iterable[tuple[Key, bytes | None]]:
    return ((UNCHECKED, value) for value in values)


def pipeline_usage(values: Iterable[bytes | None], days: float | None = None,
                   now: float | None = None) -> Usage:
    """Per (pipeline, pool, resource): use per run and per UTC day, and the pool's quota.

    ``values`` are ``ml.pipeline`` messages (keys unchecked; see :func:`parse_runs`).
    Columns: ``pipeline``, ``kind``, ``pool``, ``resource``, ``runs``, ``run_median``,
    ``run_p95``, ``days``, ``day_median``, ``day_p95``, ``total``, ``pool_used``,
    ``pool_limit`` (null when no ``quota`` names the pool and resource). ``days``
    keeps the runs that ended in the last ``days`` days before ``now`` (default:
    the newest run's last event).

    >>> import orjson
    >>> ev = {"event_id": "e", "pipeline": "p", "kind": "training", "status": "succeeded"}
    >>> frame, skipped = pipeline_usage(orjson.dumps(r) for r in [
    ...     {**ev, "run_id": "r1", "ts": 1.8e9, "resources": {"gpu_hours": 2}},
    ...     {**ev, "run_id": "r2", "ts": 1.8e9 + 10, "resources": {"gpu_hours": 4}}, {"ts": 1}])
    >>> frame.select("runs", "run_median", "day_median", "total").row(0), skipped
    ((2, 3.0, 6.0, 6.0), 1)
    """
    return parse_runs(_unkeyed(values)).usage(days, now)


def usage_series(values: Iterable[bytes | None], pool: str, resource: str, every: str = "1d",
                 days: float | None = None, now: float | None = None) -> pl.DataFrame:
    """A pool's use of one resource per period (``1d`` or ``1h``, UTC), for the chart.

    ``values`` are ``ml.pipeline`` messages (see :func:`pipeline_usage`).
    Columns: ``period`` (start, UTC), ``used`` (what the pool's runs that ended in
    the period used), ``cumulative`` (running sum of ``used``), ``reported_used``
    and ``limit`` (the pool's latest ``quota`` of the period; ``limit`` carried
    forward from earlier periods). Periods without anything are filled: ``used``
    0, ``reported_used`` null. With ``days``, ``cumulative`` starts at the cut.
    """
    return parse_runs(_unkeyed(values)).series(pool, resource, every, days, now)


def pool_pairs(values: Iterable[bytes | None]) -> list[tuple[str, str]]:
    """The (pool, resource) pairs some ``quota`` names, sorted: what has a limit to plot."""
    return parse_runs(_unkeyed(values)).pool_pairs()


def _cutoff(ts: pl.Series, days: float | None, now: float | None) -> float | None:
    if days is None or ts.is_empty():
        return None
    newest = float(ts.max()) if now is None else now  # type: ignore[arg-type]
    return newest - days * DAY_S


def _utc(col: str) -> pl.Expr:
    return (pl.col(col) * 1000).round().cast(pl.Int64).cast(pl.Datetime("ms", "UTC"))


def _run_usage(p: Runs, days: float | None, now: float | None) -> pl.DataFrame:
    """One row per (run, resource): pipeline, run_id, kind, pool, resource, amount, last_ts."""
    runs = p.runs
    since = _cutoff(runs["last_ts"], days, now)
    if since is not None:
        runs = runs.filter(pl.col("last_ts") >= since)
    return p.amounts.join(runs, on=["pipeline", "run_id"], how="inner")


def _summary(p: Runs, days: float | None, now: float | None) -> Usage:
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


def _series(p: Runs, pool: str, resource: str, every: str, days: float | None,
            now: float | None) -> pl.DataFrame:
    if every not in PERIODS:
        raise ValueError(f"every must be one of {', '.join(PERIODS)}, not {every!r}")
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


# -- serving ------------------------------------------------------------------------------


class _Malformed(ValueError):
    pass


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
    if not 0 <= ts < _YEAR_10000:
        raise _Malformed("time out of range")
    return ts


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
    """Per model, from ``ml.stats`` windows (decoded): queries per second and replicas.

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
