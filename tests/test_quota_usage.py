"""``quota estimate``'s numbers: use per run and per day, serving rates and replicas.

Hand-made ``ml.pipeline`` and ``ml.stats`` records (tests/quota_records.py) whose
expected numbers are worked out in the comments (percentiles interpolate
linearly: the p95 of sorted ``a <= b <= c`` is ``b + 0.9 * (c - b)``). No Kafka.
``ml.pipeline`` records go in as the message bytes a producer sends: they are
read by the worker's parser, :func:`streams.core.parse.parse_pipeline`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from streams.cli.quota_usage import (
    HISTORY_LIMITS,
    parse_runs,
    pipeline_usage,
    pool_pairs,
    replicas,
    serving_usage,
)
from streams.core.parse import UNCHECKED
from tests.quota_records import DAY, T0, ev, keyed, messages, quota, row, window

# -- batch pipelines ----------------------------------------------------------------------


def test_runs_and_days_medians_and_p95() -> None:
    # r1 uses 2 on day 0; r2 (4) and r3 (6) on day 1.
    recs = [ev("r1", 3600, resources={"gpu_hours": 2}),
            ev("r2", DAY + 3600, resources={"gpu_hours": 4}),
            ev("r3", DAY + 7200, "failed", resources={"gpu_hours": 6})]
    frame, skipped = pipeline_usage(messages(recs))
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
    assert row(pipeline_usage(messages(beats)).frame, resource="gpu_hours")["total"] == 3.5
    # Delivered twice and out of order: the same run, the same 3.5.
    shuffled = [beats[4], beats[2], beats[2], beats[0], beats[3], beats[1], beats[4]]
    r = row(pipeline_usage(messages(shuffled)).frame, resource="gpu_hours")
    assert (r["runs"], r["run_median"], r["total"]) == (1, 3.5, 3.5)


def test_each_resource_of_a_run_is_its_own_series() -> None:
    recs = [ev("r1", 60, "heartbeat", {"gpu_hours": 1, "cpu_hours": 8}),
            ev("r1", 120, "succeeded", {"gpu_hours": 2})]  # cpu_hours not repeated: still 8
    frame = pipeline_usage(messages(recs)).frame
    assert row(frame, resource="gpu_hours")["total"] == 2.0
    assert row(frame, resource="cpu_hours")["total"] == 8.0


def test_days_without_runs_count_as_zero_between_first_and_last() -> None:
    # 4 on day 0, nothing on day 1, 8 on day 2: days [0, 4, 8], median 4, p95 4 + 0.9 * 4.
    recs = [ev("r1", 3600, resources={"gpu_hours": 4}),
            ev("r2", 2 * DAY + 3600, resources={"gpu_hours": 8})]
    r = row(pipeline_usage(messages(recs)).frame, resource="gpu_hours")
    assert (r["days"], r["day_median"]) == (3, 4.0)
    assert r["day_p95"] == pytest.approx(7.6)


def test_a_run_belongs_to_the_utc_day_of_its_last_event() -> None:
    # r1 starts at 23:00 on day 0 and ends at 01:00 on day 1, like r2: one day, 3 + 5.
    recs = [ev("r1", DAY - 3600, "started", {"gpu_hours": 0}),
            ev("r1", DAY + 3600, "succeeded", {"gpu_hours": 3}),
            ev("r2", DAY + 36000, "succeeded", {"gpu_hours": 5})]
    r = row(pipeline_usage(messages(recs)).frame, resource="gpu_hours")
    assert (r["days"], r["day_median"], r["runs"]) == (1, 8.0, 2)


def test_a_run_id_is_scoped_by_its_pipeline() -> None:
    recs = [ev("r1", 0, resources={"gpu_hours": 1}, pipeline="a"),
            ev("r1", 0, resources={"gpu_hours": 5}, pipeline="b")]
    frame = pipeline_usage(messages(recs)).frame
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
    frame = pipeline_usage(messages(recs)).frame
    mine = row(frame, pipeline="fraud-train")
    assert (mine["pool"], mine["runs"], mine["total"]) == ("team-a", 3, 6.0)
    assert (mine["pool_used"], mine["pool_limit"]) == (150.0, 200.0)
    other = row(frame, pipeline="other")
    assert (other["pool"], other["pool_limit"]) == ("-", None)
    assert pool_pairs(messages(recs)) == [("team-a", "gpu_hours")]


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
    frame, skipped = pipeline_usage(messages([good, *bad]))
    assert skipped == len(bad) == 13
    assert row(frame, resource="gpu_hours")["total"] == 2.0


def test_records_are_read_by_the_workers_parser_and_its_reasons_kept() -> None:
    good = ev("r1", 0, resources={"gpu_hours": 2})
    batch = orjson.dumps([good, {**good, "run_id": "r2", "status": "done"}, 7])
    runs = parse_runs([(b"fraud-train", batch),
                       (b"other", orjson.dumps({**good, "run_id": "r3"})),  # keyed elsewhere
                       (b"fraud-train", orjson.dumps({**good, "resources": {"gpu_hours": -1}})),
                       (b"fraud-train", None)])  # a tombstone: no record
    assert runs.events == 1 and runs.skipped == 4
    assert runs.rejected[:2] == [
        "bad_value: 'status' must be one of started, heartbeat, succeeded, failed",
        "not_object: expected a JSON object, got int"]
    assert runs.rejected[2].startswith("bad_key: the message key 'other' is not the event's "
                                       "pipeline 'fraud-train'")
    assert runs.rejected[3] == "bad_value: 'resources.gpu_hours' -1 is negative"
    assert row(runs.usage().frame, resource="gpu_hours")["total"] == 2.0


def test_what_the_contract_refuses_is_skipped_not_read_some_other_way() -> None:
    # Each of these was read by the estimate's own parser before it used the worker's.
    good = ev("r1", 0, resources={"gpu_hours": 2})
    refused = [{**good, "resources": []},  # an empty list is not an object
               {**good, "pipeline": "x" * 300},  # longer than limits.max_id_chars
               {**good, "run_id": "r\n1"},  # a control character
               {**good, "ts": 0}]  # before 2000, as the worker refuses
    runs = parse_runs(keyed([good, *refused], "pipeline"))
    assert (runs.events, runs.skipped) == (1, 4)
    assert [r.split(":")[0] for r in runs.rejected] == [
        "bad_type", "bad_value", "bad_value", "bad_timestamp"]


def test_the_clock_bounds_event_times_when_given() -> None:
    late = ev("r1", 30 * DAY, resources={"gpu_hours": 2})  # a month after T0
    assert parse_runs(keyed([late], "pipeline"), HISTORY_LIMITS).events == 1
    at_t0 = HISTORY_LIMITS.at(T0, 600)  # the worker's bounds, its clock at T0
    runs = parse_runs([(UNCHECKED, orjson.dumps(late))], at_t0)
    assert runs.events == 0 and runs.rejected[0].startswith("bad_timestamp: 'ts'")


def test_rfc3339_and_epoch_times_mix() -> None:
    recs = [ev("r1", 0, "started", {"gpu_hours": 1}),
            {**ev("r1", 0, "succeeded", {"gpu_hours": 2}), "ts": "2026-11-28T01:00:00Z"}]
    r = row(pipeline_usage(messages(recs)).frame, resource="gpu_hours")
    assert (r["total"], r["days"]) == (2.0, 1)


def test_days_keeps_the_runs_that_ended_in_the_last_days_of_the_history() -> None:
    recs = [ev("r1", 0, resources={"gpu_hours": 1}),
            ev("r2", 5 * DAY, resources={"gpu_hours": 2}),
            ev("r3", 10 * DAY, resources={"gpu_hours": 4})]
    # Newest event at day 10: the last 6 days start at day 4.
    last_6_days = pipeline_usage(messages(recs), days=6).frame
    assert row(last_6_days, resource="gpu_hours")["total"] == 6.0
    assert row(pipeline_usage(messages(recs)).frame, resource="gpu_hours")["total"] == 7.0
    assert pipeline_usage(messages(recs), days=1, now=T0 + 30 * DAY).frame.is_empty()


def test_no_records_give_an_empty_frame_with_the_columns() -> None:
    frame, skipped = pipeline_usage([])
    assert frame.is_empty() and skipped == 0
    assert frame.columns[:4] == ["pipeline", "kind", "pool", "resource"]


# -- serving ------------------------------------------------------------------------------


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
