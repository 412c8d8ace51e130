"""``quota estimate``: use per run and per day, serving rates and replicas, the chart.

Hand-made ``ml.pipeline`` and ``ml.stats`` records whose expected numbers are
worked out in the comments (percentiles interpolate linearly: the p95 of sorted
``a <= b <= c`` is ``b + 0.9 * (c - b)``). No Kafka.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from streams.cli import quota as qe
from streams.cli.quota import (
    Decoded,
    decode_values,
    pipeline_usage,
    plot_usage,
    pool_pairs,
    replicas,
    serving_usage,
    usage_series,
)
from streams.config import Settings

DAY = 86_400
T0 = datetime(2026, 11, 27, tzinfo=UTC).timestamp()  # a UTC midnight


def ev(run: str, t: float, status: str = "succeeded", resources: dict[str, Any] | None = None,
       quota: dict[str, Any] | None = None, pipeline: str = "fraud-train",
       kind: str = "training") -> dict[str, Any]:
    """An ``ml.pipeline`` event ``t`` seconds after T0 (epoch seconds, as the contract allows)."""
    rec: dict[str, Any] = {"event_id": f"{pipeline}/{run}/{t}/{status}", "pipeline": pipeline,
                           "kind": kind, "run_id": run, "status": status, "ts": T0 + t}
    if resources is not None:
        rec["resources"] = resources
    if quota is not None:
        rec["quota"] = quota
    return rec


def quota(used: float, limit: float, pool: str = "team-a",
          resource: str = "gpu_hours") -> dict[str, Any]:
    return {"pool": pool, "resource": resource, "used": used, "limit": limit}


def row(frame: pl.DataFrame, **match: str) -> dict[str, Any]:
    rows = frame.filter(*[pl.col(k) == v for k, v in match.items()]).to_dicts()
    assert len(rows) == 1, rows
    return rows[0]


# -- batch pipelines ----------------------------------------------------------------------


def test_runs_and_days_medians_and_p95() -> None:
    # r1 uses 2 on day 0; r2 (4) and r3 (6) on day 1.
    recs = [ev("r1", 3600, resources={"gpu_hours": 2}),
            ev("r2", DAY + 3600, resources={"gpu_hours": 4}),
            ev("r3", DAY + 7200, "failed", resources={"gpu_hours": 6})]
    frame, skipped = pipeline_usage(recs)
    r = row(frame, resource="gpu_hours")
    assert skipped == 0 and frame.height == 1
    assert (r["pipeline"], r["kind"], r["pool"], r["runs"]) == ("fraud-train", "training", "-", 3)
    assert r["run_median"] == 4.0
    assert r["run_p95"] == pytest.approx(4 + 0.9 * 2)  # 5.8
    # Days: 2 and 4 + 6 = 10; median (2 + 10) / 2 = 6, p95 2 + 0.95 * 8 = 9.6.
    assert r["days"] == 2 and r["day_median"] == 6.0
    assert r["day_p95"] == pytest.approx(9.6)
    assert r["total"] == 12.0
    assert r["pool_used"] is None and r["pool_limit"] is None


def test_cumulative_resources_take_the_max_not_the_sum() -> None:
    beats = [ev("r1", 0, "started"), ev("r1", 60, "heartbeat", {"gpu_hours": 1}),
             ev("r1", 120, "heartbeat", {"gpu_hours": 2}),
             ev("r1", 180, "heartbeat", {"gpu_hours": 3}),
             ev("r1", 240, "succeeded", {"gpu_hours": 3.5})]
    assert row(pipeline_usage(beats).frame, resource="gpu_hours")["total"] == 3.5
    # Delivered twice and out of order: the same run, the same 3.5.
    shuffled = [beats[4], beats[2], beats[2], beats[0], beats[3], beats[1], beats[4]]
    r = row(pipeline_usage(shuffled).frame, resource="gpu_hours")
    assert (r["runs"], r["run_median"], r["total"]) == (1, 3.5, 3.5)


def test_each_resource_of_a_run_is_its_own_series() -> None:
    recs = [ev("r1", 60, "heartbeat", {"gpu_hours": 1, "cpu_hours": 8}),
            ev("r1", 120, "succeeded", {"gpu_hours": 2})]  # cpu_hours not repeated: still 8
    frame = pipeline_usage(recs).frame
    assert row(frame, resource="gpu_hours")["total"] == 2.0
    assert row(frame, resource="cpu_hours")["total"] == 8.0


def test_days_without_runs_count_as_zero_between_first_and_last() -> None:
    # 4 on day 0, nothing on day 1, 8 on day 2: days [0, 4, 8], median 4, p95 4 + 0.9 * 4.
    recs = [ev("r1", 3600, resources={"gpu_hours": 4}),
            ev("r2", 2 * DAY + 3600, resources={"gpu_hours": 8})]
    r = row(pipeline_usage(recs).frame, resource="gpu_hours")
    assert (r["days"], r["day_median"]) == (3, 4.0)
    assert r["day_p95"] == pytest.approx(7.6)


def test_a_run_belongs_to_the_utc_day_of_its_last_event() -> None:
    # r1 starts at 23:00 on day 0 and ends at 01:00 on day 1, like r2: one day, 3 + 5.
    recs = [ev("r1", DAY - 3600, "started", {"gpu_hours": 0}),
            ev("r1", DAY + 3600, "succeeded", {"gpu_hours": 3}),
            ev("r2", DAY + 36000, "succeeded", {"gpu_hours": 5})]
    r = row(pipeline_usage(recs).frame, resource="gpu_hours")
    assert (r["days"], r["day_median"], r["runs"]) == (1, 8.0, 2)


def test_a_run_id_is_scoped_by_its_pipeline() -> None:
    recs = [ev("r1", 0, resources={"gpu_hours": 1}, pipeline="a"),
            ev("r1", 0, resources={"gpu_hours": 5}, pipeline="b")]
    frame = pipeline_usage(recs).frame
    assert row(frame, pipeline="a")["total"] == 1.0 and row(frame, pipeline="b")["total"] == 5.0


def test_pool_comes_from_the_runs_quota_and_the_limit_is_the_latest() -> None:
    recs = [
        # r1 names its pool only on its start event.
        ev("r1", 0, "started", quota=quota(100, 180)),
        ev("r1", 600, "succeeded", {"gpu_hours": 3}),
        # Newer quota figures, listed before an older one: the newest ts wins.
        ev("r2", 2000, "succeeded", {"gpu_hours": 2}, quota=quota(150, 200)),
        ev("r3", 1000, "heartbeat", {"gpu_hours": 1}, quota=quota(120, 180)),
        # A run without a quota: pool "-".
        ev("r4", 500, "succeeded", {"gpu_hours": 7}, pipeline="other"),
    ]
    frame = pipeline_usage(recs).frame
    mine = row(frame, pipeline="fraud-train")
    assert (mine["pool"], mine["runs"], mine["total"]) == ("team-a", 3, 6.0)
    assert (mine["pool_used"], mine["pool_limit"]) == (150.0, 200.0)
    other = row(frame, pipeline="other")
    assert (other["pool"], other["pool_limit"]) == ("-", None)
    assert pool_pairs(recs) == [("team-a", "gpu_hours")]


def test_malformed_records_are_skipped_and_counted() -> None:
    good = ev("r1", 0, resources={"gpu_hours": 2})
    bad = [
        "not an object",
        {k: v for k, v in good.items() if k != "run_id"},
        {**good, "status": "done"},
        {**good, "kind": "inference"},
        {**good, "ts": "yesterday"},
        {**good, "ts": "2026-11-27T07:00:00"},  # no UTC offset
        {**good, "ts": 1e300},
        {**good, "resources": {"gpu_hours": -1}},
        {**good, "resources": {"gpu_hours": True}},
        {**good, "resources": [2]},
        {**good, "quota": {"resource": "gpu_hours", "used": 1, "limit": 10}},  # no pool
        {**good, "quota": {"pool": "a", "resource": "gpu_hours", "used": 1}},  # no limit
        {**good, "quota": quota(0, 0)},
    ]
    frame, skipped = pipeline_usage([good, *bad])
    assert skipped == len(bad) == 13
    assert row(frame, resource="gpu_hours")["total"] == 2.0


def test_rfc3339_and_epoch_times_mix() -> None:
    recs = [ev("r1", 0, "started", {"gpu_hours": 1}),
            {**ev("r1", 0, "succeeded", {"gpu_hours": 2}), "ts": "2026-11-28T01:00:00Z"}]
    r = row(pipeline_usage(recs).frame, resource="gpu_hours")
    assert (r["total"], r["days"]) == (2.0, 1)


def test_days_keeps_the_runs_that_ended_in_the_last_days_of_the_history() -> None:
    recs = [ev("r1", 0, resources={"gpu_hours": 1}),
            ev("r2", 5 * DAY, resources={"gpu_hours": 2}),
            ev("r3", 10 * DAY, resources={"gpu_hours": 4})]
    # Newest event at day 10: the last 6 days start at day 4.
    assert row(pipeline_usage(recs, days=6).frame, resource="gpu_hours")["total"] == 6.0
    assert row(pipeline_usage(recs).frame, resource="gpu_hours")["total"] == 7.0
    assert pipeline_usage(recs, days=1, now=T0 + 30 * DAY).frame.is_empty()


def test_no_records_give_an_empty_frame_with_the_columns() -> None:
    frame, skipped = pipeline_usage([])
    assert frame.is_empty() and skipped == 0
    assert frame.columns[:4] == ["pipeline", "kind", "pool", "resource"]


# -- serving ------------------------------------------------------------------------------


def window(model: str, start_s: float, count: int, length_s: float = 60, version: str = "v1",
           cohort: str = "stable") -> dict[str, Any]:
    start = datetime.fromtimestamp(T0 + start_s, UTC)
    rfc = lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    return {"model": model, "version": version, "cohort": cohort,
            "window": {"start": rfc(start), "end": rfc(start + timedelta(seconds=length_s))},
            "count": count, "errors": 0}


def test_peak_qps_sums_versions_and_cohorts_per_window() -> None:
    stats = [window("fraud", 0, 3000), window("fraud", 0, 600, version="v2", cohort="canary"),
             window("fraud", 60, 1200), window("fraud", 120, 2400),
             window("ranker", 0, 300)]
    frame, skipped = serving_usage(stats, capacity_qps=25)
    fraud = row(frame, model="fraud")
    # Rates: (3000 + 600) / 60 = 60, 1200 / 60 = 20, 2400 / 60 = 40.
    assert skipped == 0 and fraud["windows"] == 3 and fraud["window_s"] == 60.0
    assert (fraud["peak_qps"], fraud["mean_qps"]) == (60.0, 40.0)
    assert fraud["p95_qps"] == pytest.approx(40 + 0.9 * 20)  # 58
    assert fraud["peak_at"] == datetime.fromtimestamp(T0, UTC)
    assert fraud["replicas"] == 4  # 60 * 1.3 / 25 = 3.12
    ranker = row(frame, model="ranker")
    assert (ranker["peak_qps"], ranker["replicas"]) == (5.0, 1)  # 5 * 1.3 / 25 = 0.26


def test_each_window_is_divided_by_its_own_length_and_counted_once() -> None:
    stats = [window("m", 0, 300, length_s=30), window("m", 0, 600, version="v2"),
             window("m", 0, 600, version="v2")]  # published twice
    frame = serving_usage(stats, capacity_qps=100).frame
    assert row(frame, model="m")["peak_qps"] == 20.0  # 300 / 30 + 600 / 60


def test_malformed_windows_are_skipped_and_counted() -> None:
    good = window("m", 0, 60)
    bad = [{**good, "model": ""}, {k: v for k, v in good.items() if k != "window"},
           {**good, "count": True}, {**good, "count": -1},
           {**good, "window": {"start": good["window"]["end"], "end": good["window"]["start"]}},
           {**good, "window": {"start": "soon", "end": good["window"]["end"]}}, 7]
    frame, skipped = serving_usage([good, *bad], capacity_qps=10)
    assert skipped == len(bad) and row(frame, model="m")["peak_qps"] == 1.0


def test_serving_days_window_and_epoch_windows() -> None:
    stats = [window("m", 0, 6000), {**window("m", 3 * DAY, 600),
                                    "window": {"start": T0 + 3 * DAY, "end": T0 + 3 * DAY + 60}}]
    assert row(serving_usage(stats, 10).frame, model="m")["peak_qps"] == 100.0
    assert row(serving_usage(stats, 10, days=1).frame, model="m")["peak_qps"] == 10.0


@pytest.mark.parametrize("peak, capacity, headroom, expected", [
    (100, 50, 0.3, 3),   # 2.6
    (100, 50, 0.0, 2),   # exactly 2: no spare replica
    (101, 50, 0.0, 3),   # 2.02
    (100, 10, 0.1, 11),  # 110 / 10 is 11.000000000000002 in floating point: still 11
    (0, 50, 0.3, 1),     # a served model needs one replica
])
def test_replicas_round_up(peak: float, capacity: float, headroom: float, expected: int) -> None:
    assert replicas(peak, capacity, headroom) == expected


def test_replicas_need_a_positive_capacity() -> None:
    with pytest.raises(ValueError, match="capacity_qps"):
        serving_usage([], capacity_qps=0)
    with pytest.raises(ValueError, match="headroom"):
        replicas(1, 1, -0.1)


# -- decoding -----------------------------------------------------------------------------


def test_decode_objects_batches_and_count_the_rest() -> None:
    values = [b'{"a": 1}', b'[{"b": 2}, {"c": 3}, 4]', b"not json", b'"a string"', None,
              b"\xff\xfe"]
    assert decode_values(values) == Decoded([{"a": 1}, {"b": 2}, {"c": 3}], 4)


# -- chart --------------------------------------------------------------------------------


def chart_records() -> list[dict[str, Any]]:
    return [ev("r1", 3600, resources={"gpu_hours": 30}, quota=quota(40, 200)),
            ev("r2", 2 * DAY + 3600, resources={"gpu_hours": 50}, quota=quota(95, 200)),
            ev("r3", 2 * DAY + 7200, resources={"cpu_hours": 9}, quota=quota(1, 5, "team-b")),
            ev("r4", 2 * DAY, resources={"gpu_hours": 99}, quota=quota(1, 5, "team-b"))]


def test_usage_series_per_day_cumulative_against_the_limit() -> None:
    series = usage_series(chart_records(), "team-a", "gpu_hours")
    assert series["period"].dt.strftime("%Y-%m-%d").to_list() == [
        "2026-11-27", "2026-11-28", "2026-11-29"]
    assert series["used"].to_list() == [30.0, 0.0, 50.0]
    assert series["cumulative"].to_list() == [30.0, 30.0, 80.0]
    assert series["reported_used"].to_list() == [40.0, None, 95.0]
    assert series["limit"].to_list() == [200.0, 200.0, 200.0]  # carried over the quiet day
    hourly = usage_series(chart_records(), "team-a", "gpu_hours", every="1h")
    assert hourly.height == 2 * 24 + 1 and hourly["cumulative"][-1] == 80.0
    assert usage_series(chart_records(), "nobody", "gpu_hours").is_empty()


def test_the_terminal_chart_shows_the_limit() -> None:
    series = usage_series(chart_records(), "team-a", "gpu_hours")
    text = plot_usage(series, title="pool team-a: gpu_hours")
    lines = text.splitlines()
    assert len(lines) > 15 and "pool team-a: gpu_hours" in text
    assert "limit 200" in lines[-1] and "\x1b[" not in text  # no colour codes
    assert "2026-11-27" in text
    assert any(line.lstrip().startswith("220") for line in lines)  # the axis reaches the limit
    assert "limit 5" in plot_usage(series, limit=5.0)


def test_the_chart_is_written_to_a_text_or_html_file(tmp_path: Path) -> None:
    series = usage_series(chart_records(), "team-a", "gpu_hours")
    for name in ("usage.txt", "usage.html"):
        out = tmp_path / name
        assert plot_usage(series, path=str(out)) == f"chart saved to {out}"
        assert out.stat().st_size > 0
    with pytest.raises(ValueError, match=r"\.png"):
        plot_usage(series, path=str(tmp_path / "usage.jpg"))


def test_a_png_without_matplotlib_falls_back_to_the_terminal_chart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it raises ImportError
    out = tmp_path / "usage.png"
    text = plot_usage(usage_series(chart_records(), "team-a", "gpu_hours"), path=str(out))
    assert "matplotlib" in text and "not installed" in text and "limit 200" in text
    assert not out.exists()


# -- the report, with the topics faked --------------------------------------------------------


async def test_estimate_reports_both_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    topics = {settings.topics.pipeline: Decoded(chart_records(), 2),
              settings.topics.stats: Decoded([window("fraud", 0, 6000), {"model": 1}], 0)}

    async def fake_read(servers: str, topic: str) -> Decoded:
        return topics[topic]

    monkeypatch.setattr(qe, "read_topic_records", fake_read)
    text = await qe.estimate(settings, capacity_qps=40, days=None, plot="-")
    assert "4 records (2 not JSON objects: skipped)" in text
    assert "2 records (1 not in the contract's shape: skipped)" in text
    assert "fraud-train" in text and "95 / 200 (48%)" in text
    serving = [line.split() for line in text.splitlines() if line.startswith("  fraud ")]
    assert serving == [["fraud", "1", "60", "s", "100", "100", "100", "2026-11-27", "00:00:00",
                        "4"]]  # 100 * 1.3 / 40 = 3.25
    assert "ceil(peak qps x 1.3 / 40)" in text
    # One chart per pool and resource with a limit.
    assert text.count("pool team-a: gpu_hours") == 1 and text.count("pool team-b: gpu_hours") == 1
