"""Parsing and validation of contract messages, without Kafka."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.core.parse import (
    MIN_TS,
    ParseLimits,
    PredictionColumns,
    parse_feedback,
    parse_metrics,
    parse_pipeline,
    parse_predictions,
    parse_time,
)

GOOD = {"event_id": "e1", "ts": "2026-11-27T07:00:00.123Z", "model": "m", "version": "v1",
        "latency_ms": 12.5}


def reasons(data: bytes, key: bytes | None | object = None, **kw: Any) -> tuple[int, list[str]]:
    cols = PredictionColumns()
    if key is None:
        dead = parse_predictions(data, cols, limits=ParseLimits(**kw))
    else:
        dead = parse_predictions(data, cols, limits=ParseLimits(**kw),
                                 key=None if key is NO_KEY else key)  # type: ignore[arg-type]
    return len(cols), [d.code for d in dead]


NO_KEY = object()  # a Kafka message with a null key


def test_a_good_event_becomes_columns_with_defaults() -> None:
    cols = PredictionColumns()
    assert parse_predictions(orjson.dumps(GOOD), cols) == []
    assert cols.model == ["m"] and cols.cohort == ["stable"] and cols.error == [False]
    assert cols.ts == [pytest.approx(1795762800.123)]


@pytest.mark.parametrize("change, code", [
    ({"latency_ms": None}, "missing_field"),
    ({"event_id": None}, "missing_field"),
    ({"model": 3}, "bad_type"),
    ({"version": ""}, "bad_type"),
    ({"latency_ms": True}, "bad_type"),
    ({"latency_ms": -0.5}, "negative_latency"),
    ({"ts": "2026-11-27T07:00:00"}, "bad_timestamp"),
    ({"ts": "not a time"}, "bad_timestamp"),
    ({"ts": "20261127T070000Z"}, "bad_timestamp"),       # ISO 8601 basic form
    ({"ts": "2026-W48-5T07:00:00Z"}, "bad_timestamp"),   # a week date
    ({"ts": "2026-11-27T07Z"}, "bad_timestamp"),         # no minutes
    ({"ts": "2026-11-27T07:00Z"}, "bad_timestamp"),      # no seconds
    ({"ts": "2026-11-27T07:00:00,5Z"}, "bad_timestamp"),  # a comma before the fraction
    ({"ts": "2026-11-27T07:00:00+0100"}, "bad_timestamp"),  # an offset without its colon
    ({"ts": "2026-11-27T07:00:00+01"}, "bad_timestamp"),
    ({"ts": "2026-11-27T07:00:00Z\n"}, "bad_timestamp"),
    ({"ts": "２０２６-11-27T07:00:00Z"}, "bad_timestamp"),  # digits that are not ASCII
    ({"ts": "2026-13-27T07:00:00Z"}, "bad_timestamp"),   # the right shape, no such month
    ({"ts": [1]}, "bad_type"),
    ({"status": "maybe"}, "bad_value"),
    ({"features": [1, 2]}, "bad_type"),
    ({"prediction": {"score": 1}}, "bad_type"),
    ({"prediction": [0.1]}, "bad_type"),
])
def test_each_contract_violation_has_its_reason(change: dict[str, object], code: str) -> None:
    ev = {**GOOD, **change}
    ev = {k: v for k, v in ev.items() if v is not None}
    assert reasons(orjson.dumps(ev)) == (0, [code])


@pytest.mark.parametrize("data, code", [
    (b"", "not_json"),
    (b"{", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"17", "not_object"),
    (b'{"event_id": "e", "ts": 1, "model": "m", "version": "v", "latency_ms": NaN}',
     "not_finite"),
    (b'{"event_id": "e", "ts": -Infinity, "model": "m", "version": "v", "latency_ms": 1}',
     "not_finite"),
    (b'{"event_id": "e", "ts": 1, "model": "m", "version": "v", "latency_ms": 1,'
     b' "prediction": NaN}', "not_finite"),
])
def test_undecodable_messages(data: bytes, code: str) -> None:
    assert reasons(data) == (0, [code])


def test_size_limits() -> None:
    assert reasons(orjson.dumps(GOOD), max_bytes=10) == (0, ["oversized"])
    assert reasons(orjson.dumps([GOOD] * 5), max_events=4) == (0, ["oversized"])


def test_batch_elements_are_judged_alone_with_their_index() -> None:
    cols = PredictionColumns()
    batch = [GOOD, {**GOOD, "latency_ms": -1}, "x", {**GOOD, "event_id": "e2"}]
    dead = parse_predictions(orjson.dumps(batch), cols, message=7)
    assert cols.event_id == ["e1", "e2"] and cols.message == [7, 7] and cols.element == [0, 3]
    assert [(d.index, d.code) for d in dead] == [(1, "negative_latency"), (2, "not_object")]
    assert orjson.loads(dead[0].raw)["latency_ms"] == -1


def test_dead_letter_record_is_the_contract_shape_and_bounded() -> None:
    cols = PredictionColumns()
    [dead] = parse_predictions(b"x" * 200, cols, limits=ParseLimits(max_bytes=100))
    rec = dead.to_record("ml.predictions", 3, 99, max_raw=50)
    assert {k: rec[k] for k in ("topic", "partition", "offset")} == \
        {"topic": "ml.predictions", "partition": 3, "offset": 99}
    assert rec["reason"].startswith("oversized") and rec["raw"] == "x" * 50
    assert rec["raw_truncated"] is True and rec["raw_length"] == 200


def test_predictions_of_every_contract_type_are_accepted() -> None:
    for prediction in (0.93, 1, "fraud", True):
        assert reasons(orjson.dumps({**GOOD, "prediction": prediction})) == (1, [])


def test_times() -> None:
    assert parse_time("2026-11-27T08:00:00+01:00") == parse_time("2026-11-27T07:00:00Z")
    assert parse_time(10) == 10.0


# -- hostile inputs: each has its own reason, none escapes the parser ------------------

NOW = 1_795_762_800.0
CLOCKED = {"min_ts": MIN_TS, "max_ts": NOW + 600}


def one(text: str) -> bytes:
    """GOOD with some raw JSON text spliced in before the closing brace."""
    return orjson.dumps(GOOD)[:-1] + b", " + text.encode() + b"}"


@pytest.mark.parametrize("data, code, says", [
    (one('"big": ' + "9" * 400), "not_finite", "too large for a 64-bit float"),
    (b'{"event_id": "e", "ts": 1, "model": "\\ud800", "version": "v", "latency_ms": 1}',
     "bad_value", "lone UTF-16 surrogate"),
    (b'{"event_id": "e", "ts": 1, "model": "m", "version": "v", "cohort": "\\udc00x",'
     b' "latency_ms": 1}', "bad_value", "surrogate"),
    (b"\xef\xbb\xbf" + orjson.dumps(GOOD), "not_json", "byte order mark"),
    (one('"deep": ' + "[" * 2000 + "]" * 2000), "bad_value", "nested deeper"),
    (one('"features": {"x": ' + "[" * 1000 + "]" * 1000 + "}"), "bad_type", "is an array"),
    (one('"features": {"x": {"y": 1}}'), "bad_type", "feature 'x' is an object"),
    (one('"features": {"x": NaN}'), "not_finite", "'features.x' is NaN"),
    (one('"features": {"x": -Infinity}'), "not_finite", "'features.x' is -Infinity"),
    (orjson.dumps({**GOOD, "model": "m\u0007"}), "bad_value", "control characters"),
    (orjson.dumps({**GOOD, "version": "v" * 300}), "bad_value", "300 characters"),
    (orjson.dumps({**GOOD, "features": {f"f{i}": i for i in range(1001)}}), "bad_value",
     "1001 entries"),
])
def test_hostile_inputs_have_their_own_reason(data: bytes, code: str, says: str) -> None:
    cols = PredictionColumns()
    [dead] = parse_predictions(data, cols)
    assert (len(cols), dead.code) == (0, code) and says in dead.reason
    assert orjson.loads(orjson.dumps(dead.to_record("t", 0, 0)))  # the dead letter is writable


def test_a_nan_feature_costs_only_its_element() -> None:
    good = orjson.dumps(GOOD).decode()
    data = f'[{good}, {good[:-1]}, "features": {{"x": NaN, "s": "NaN"}}}}, {good}]'.encode()
    cols = PredictionColumns()
    [dead] = parse_predictions(data, cols)
    assert (len(cols), dead.index, dead.code) == (2, 1, "not_finite")
    # a string that reads "NaN" is a string, not a number
    assert parse_predictions(orjson.dumps({**GOOD, "features": {"s": "NaN"}}), cols) == []


def test_a_string_that_never_ends_is_scanned_once_for_nan_tokens() -> None:
    """Invalid JSON holding NaN and many quotes: the string that never ends runs to the
    end of the message in one match (before, every quote inside it started a scan to
    the end: 16 KB took 1.1 s, 1 MB about an hour by extrapolation), and the message
    is refused."""
    from streams.core.parse import _NONFINITE

    data = b'[NaN, "' + b'x\\"' * 5_000 + b"\\"
    assert [m.group(0)[:3] for m in _NONFINITE.finditer(data)] == [b"NaN", b'"x\\']
    assert next(m for m in _NONFINITE.finditer(data) if m.group(1) is None).end() == len(data)
    [dead] = parse_predictions(data, PredictionColumns())
    assert dead.code == "not_json"


@pytest.mark.parametrize("ts, says", [
    (NOW * 1000, "epoch milliseconds?"),
    (NOW + 366 * 86_400, "ahead of the worker's clock"),
    ("2027-12-01T00:00:00Z", "ahead of the worker's clock"),
    (1e308, "more than a million years ahead"),
    (5.0, "before 2000-01-01"),
    ("1999-12-31T23:59:59Z", "before 2000-01-01"),
])
def test_event_times_far_from_the_clock_are_refused(ts: object, says: str) -> None:
    cols = PredictionColumns()
    [dead] = parse_predictions(orjson.dumps({**GOOD, "ts": ts}), cols,
                               limits=ParseLimits(**CLOCKED))  # type: ignore[arg-type]
    assert (len(cols), dead.code) == (0, "bad_timestamp") and says in dead.reason
    # within the bounds: accepted
    assert parse_predictions(orjson.dumps({**GOOD, "ts": NOW + 500}), cols,
                             limits=ParseLimits(**CLOCKED)) == []  # type: ignore[arg-type]


def test_events_must_be_keyed_by_their_model() -> None:
    assert reasons(orjson.dumps(GOOD), key=b"m") == (1, [])
    assert reasons(orjson.dumps(GOOD), key=b"other") == (0, ["bad_key"])
    assert reasons(orjson.dumps(GOOD), key=NO_KEY) == (0, ["bad_key"])
    mixed = [GOOD, {**GOOD, "model": "n"}]
    assert reasons(orjson.dumps(mixed), key=b"m") == (1, ["bad_key"])


def test_other_inputs_are_keyed_too() -> None:
    fb = orjson.dumps({"event_id": "e", "ts": 1, "model": "m", "version": "v", "label": 1})
    assert parse_feedback(fb, _feedback(), key=b"x")[0].code == "bad_key"
    run = orjson.dumps({"event_id": "e", "ts": 1, "pipeline": "p", "kind": "data",
                        "run_id": "r", "status": "started"})
    assert parse_pipeline(run, [], key=b"x")[0].code == "bad_key"
    assert parse_pipeline(run, [], key=b"p") == []
    point = orjson.dumps({"source": "s", "metric": "cpu", "ts": 1, "value": 1})
    from streams.core.parse import MetricColumns
    assert parse_metrics(point, MetricColumns(), key=b"x")[0].code == "bad_key"


def _feedback() -> Any:
    from streams.core.parse import FeedbackColumns
    return FeedbackColumns()


def test_amounts_used_are_not_negative() -> None:
    run = {"event_id": "e", "ts": NOW, "pipeline": "p", "kind": "training", "run_id": "r",
           "status": "heartbeat"}
    [dead] = parse_pipeline(orjson.dumps({**run, "resources": {"gpu_hours": -2}}), [])
    assert dead.reason == "bad_value: 'resources.gpu_hours' -2 is negative"
    quota = {"pool": "a", "resource": "gpu_hours", "used": -1, "limit": 10}
    [dead] = parse_pipeline(orjson.dumps({**run, "quota": quota}), [])
    assert dead.code == "bad_value" and "quota.used" in dead.reason


def test_a_message_of_elements_too_deep_to_write_back_is_copied_into_one_dead_letter() -> None:
    """Elements nested past orjson's writer's limit (255) but within its reader's (1,024)
    cannot be given as their own text: the first one's dead letter carries the whole
    message, the others name that element (before, each carried a copy: 1 MB in,
    109 MB of dead letters out)."""
    deep = b"[" * 300 + b"]" * 300
    data = b"[" + b",".join([deep] * 1_000) + b"]"
    dead = parse_predictions(data, PredictionColumns())
    assert [d.index for d in dead] == list(range(1_000))
    assert dead[0].raw.endswith(data.decode())
    assert all(d.raw.endswith("in the dead letter of element 0)") for d in dead[1:])
    assert sum(len(d.raw) for d in dead) < 2 * len(data)


def test_lower_case_t_and_z_are_rfc_3339_too() -> None:
    assert parse_time("2026-11-27t07:00:00.5z") == parse_time("2026-11-27T07:00:00.5Z")


@pytest.mark.parametrize("text", [
    "2026-11-27T07:00:00Z", "2026-11-27 07:00:00Z", "2026-11-27T08:30:00+01:30",
    "2026-11-27T07:00:00.123456789Z", "2026-11-27T02:00:00.5-05:00"])
def test_every_rfc_3339_form_is_read(text: str) -> None:
    assert parse_time(text) == pytest.approx(1795762800.0, abs=0.6)


@pytest.mark.parametrize("data", [b"NaN", b"-Infinity", b" Infinity "])
def test_a_message_that_is_only_a_non_finite_number_says_so(data: bytes) -> None:
    [dead] = parse_predictions(data, PredictionColumns())
    assert dead.code == "not_finite" and data.strip().decode() in dead.reason


@pytest.mark.parametrize(("error", "kept"), [
    ("OOMKilled", "OOMKilled"), ({"code": 137}, '{"code":137}'), (137, "137")])
def test_a_failed_runs_error_is_kept_whatever_its_json_type(error: object, kept: str) -> None:
    run = orjson.dumps({"event_id": "e", "ts": 1, "pipeline": "p", "kind": "training",
                        "run_id": "r", "status": "failed", "error": error})
    out: list[dict[str, object]] = []
    assert parse_pipeline(run, out) == [] and out[0]["error"] == kept
