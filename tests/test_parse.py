"""Parsing and validation of contract messages, without Kafka."""

from __future__ import annotations

import orjson
import pytest

from streams.parse import PredictionColumns, parse_predictions, parse_time

GOOD = {"event_id": "e1", "ts": "2026-11-27T07:00:00.123Z", "model": "m", "version": "v1",
        "latency_ms": 12.5}


def reasons(data: bytes, **kw: int) -> tuple[int, list[str]]:
    cols = PredictionColumns()
    dead = parse_predictions(data, cols, **kw)
    return len(cols), [d.code for d in dead]


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
    [dead] = parse_predictions(b"x" * 200, cols, max_bytes=100)
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
