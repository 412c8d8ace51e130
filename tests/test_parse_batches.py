"""A batch message read column by column gives exactly what reading it element by
element gives: the same columns, and the same dead letters (reason, index, raw). So
do single-event messages read together (``parse_singles``) and one by one.

The column-wise reading (``streams.core.parse``, "batches, column by column") is a
fast path; the element-by-element one is the reference. Hypothesis mixes valid
events with every kind of bad field, in batches, under every kind of message key.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.core.parse import (
    UNCHECKED,
    FeedbackColumns,
    Key,
    ParseLimits,
    PredictionColumns,
    _add_feedback,
    _add_prediction,
    _parse,
    parse_feedback,
    parse_predictions,
    parse_singles,
)

NOW = 1_795_762_800.0
LIMITS = ParseLimits(max_id_chars=12, max_features=4).at(NOW, 86_400)

BASE = {"event_id": "e1", "ts": NOW - 10, "model": "m", "version": "v1", "latency_ms": 12.5,
        "cohort": "canary", "status": "ok", "features": {"a": 1.5, "b": "x", "c": None},
        "prediction": 0.7, "label": 1}

# What a field may hold: valid values and every kind of bad one.
ODD: dict[str, list[Any]] = {
    "event_id": ["e2", "", "x" * 13, "x" * 12, "a\nb", "é", 5, None, True, ["e"], {"e": 1}],
    "model": ["m", "n", "", "m" * 13, "m\x00", 3, None, ["m"]],
    "version": ["v2", "", "v" * 13, "v\t", 2.0, None, {"v": 1}],
    "ts": [NOW, int(NOW), NOW + 86_400 * 400, NOW * 1000, 1.0, 946_684_800, 946_684_799.9,
           "2026-11-27T07:00:00.123Z", "2026-11-27T07:00:00", "soon", "2030-01-01T00:00:00Z",
           True, None, [NOW], {"t": 1}, 2**63, -(2**63)],
    "latency_ms": [0, 0.0, -0.0, 3, 1e308, -0.5, -1, True, False, None, "5", [1], 2**64 - 1],
    "cohort": ["stable", "canary", "", "beta", 1, True, None, ["stable"], {"c": 1}],
    "status": ["ok", "error", "timeout", "", "maybe", 0, None, False, ["ok"]],
    "features": [None, {}, {"a": 1}, {"a": [1]}, {"a": {"b": 1}}, {"n" * 13: 1},
                 {"n" * 12: True}, {str(i): i for i in range(5)}, {str(i): i for i in range(4)},
                 [1], "f", 3, True],
    "prediction": [None, 0.5, 1, "yes", False, [0.1], {"p": 1}, 2**63],
    "label": [None, 0, 1.5, "fraud", True, [1], {"l": 1}],
}

one_change = st.sampled_from(list(ODD)).flatmap(
    lambda k: st.sampled_from(ODD[k]).map(lambda v: {**BASE, k: v}))
element = st.one_of(
    st.just(BASE),
    one_change,
    st.builds(lambda drop: {k: v for k, v in BASE.items() if k != drop}, st.sampled_from(
        list(BASE))),
    st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in ODD.items()}).map(
        lambda change: {**BASE, **change}),
    st.sampled_from([1, "x", None, [BASE], True]),  # not an object
)
keys = st.sampled_from([UNCHECKED, b"m", b"m", b"n", None, b"\xff", b""])


def _columns(cols: PredictionColumns | FeedbackColumns) -> dict[str, Any]:
    """Every column; the feature objects and each event's text as JSON (the batch
    form's compiled path holds them as a table and as the message's bytes)."""
    out = {k: getattr(cols, k) for k in cols.__dataclass_fields__ if k not in ("raw", "features")}
    if isinstance(cols, PredictionColumns):
        out["features"] = [orjson.dumps(f) for f in cols.features]
    out["raw"] = [cols.text(i) for i in range(len(cols))]
    return out


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(element, max_size=6), key=keys, message=st.integers(0, 3),
       valid_runs=st.integers(0, 3))
def test_batches_read_by_columns_as_by_elements(batch: list[Any], key: Any, message: int,
                                                valid_runs: int) -> None:
    # the same with its elements' models all the key's, and a valid run around them
    keyed = [{**ev, "model": "m"} if isinstance(ev, dict) and ev.get("model") == "n" else ev
             for ev in batch]
    batches = [batch, keyed, [BASE] * valid_runs + keyed + [BASE] * valid_runs]
    for b in batches:
        data = orjson.dumps(b)
        fast, slow = PredictionColumns(), PredictionColumns()
        got = parse_predictions(data, fast, message, LIMITS, key)
        want = _parse(data, lambda ev, i: _add_prediction(ev, slow, message, i, LIMITS, key),
                      LIMITS)
        assert got == want
        assert _columns(fast) == _columns(slow)

        fast_fb, slow_fb = FeedbackColumns(), FeedbackColumns()
        got = parse_feedback(data, fast_fb, message, LIMITS, key)
        want = _parse(data, lambda ev, i: _add_feedback(ev, slow_fb, message, i, LIMITS, key),
                      LIMITS)
        assert got == want
        assert _columns(fast_fb) == _columns(slow_fb)


def test_a_valid_batch_is_read_whole_and_a_bad_element_alone() -> None:
    batch = [{**BASE, "event_id": f"e{i}"} for i in range(5)]
    cols = PredictionColumns()
    assert parse_predictions(orjson.dumps(batch), cols, 2, LIMITS, b"m") == []
    assert cols.event_id == [f"e{i}" for i in range(5)] and cols.element == [0, 1, 2, 3, 4]
    assert cols.message == [2] * 5 and cols.cohort == ["canary"] * 5
    batch[3] = {**batch[3], "latency_ms": -1}
    cols = PredictionColumns()
    [dead] = parse_predictions(orjson.dumps(batch), cols, 0, LIMITS, b"m")
    assert (dead.index, dead.code) == (3, "negative_latency")
    assert cols.event_id == ["e0", "e1", "e2", "e4"] and cols.element == [0, 1, 2, 4]


def _same(batch: list[Any], key: Key) -> None:
    data = orjson.dumps(batch)
    fast, slow = PredictionColumns(), PredictionColumns()
    assert parse_predictions(data, fast, 1, LIMITS, key) == _parse(
        data, lambda ev, i: _add_prediction(ev, slow, 1, i, LIMITS, key), LIMITS)
    assert _columns(fast) == _columns(slow)
    fast_fb, slow_fb = FeedbackColumns(), FeedbackColumns()
    assert parse_feedback(data, fast_fb, 1, LIMITS, key) == _parse(
        data, lambda ev, i: _add_feedback(ev, slow_fb, 1, i, LIMITS, key), LIMITS)
    assert _columns(fast_fb) == _columns(slow_fb)


def test_every_odd_field_alone_in_a_valid_batch() -> None:
    for name, values in ODD.items():
        for value in values:
            for key in (UNCHECKED, b"m"):
                _same([BASE, {**BASE, name: value}, BASE], key)
                _same([{**BASE, name: value}], key)
        for key in (UNCHECKED, b"m"):
            _same([BASE, {k: v for k, v in BASE.items() if k != name}], key)
    for odd in (1, "x", None, [BASE], True):
        _same([BASE, odd], b"m")
    for any_key in (UNCHECKED, b"m", b"n", None, b"\xff", b""):
        _same([BASE, BASE], any_key)


message_value = st.one_of(element.map(orjson.dumps), element.map(orjson.dumps),
                          st.sampled_from([b"{not json", b"[]", None, b'{"ts": NaN}',
                                           orjson.dumps([BASE])]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(message_value, max_size=6), key_list=st.lists(keys, min_size=6,
                                                                    max_size=6),
       valid_runs=st.integers(0, 3))
@example(values=[b"[]"], key_list=[b"m"] * 6, valid_runs=1)
@example(values=[orjson.dumps(BASE)] * 3, key_list=[b"m", UNCHECKED, b"m"] * 2, valid_runs=0)
def test_single_event_messages_read_together_as_one_by_one(
        values: list[Any], key_list: list[Any], valid_runs: int) -> None:
    good = orjson.dumps(BASE)
    values = [good] * valid_runs + values + [good] * valid_runs
    ks = [b"m"] * valid_runs + key_list[:len(values) - 2 * valid_runs] + [b"m"] * valid_runs
    for fresh, parse in ((PredictionColumns, parse_predictions),
                         (FeedbackColumns, parse_feedback)):
        together, alone = fresh(), fresh()
        each_one_event = True  # every message a single valid event (not a batch of one)
        for i, (v, k) in enumerate(zip(values, ks, strict=True)):
            before = len(alone)
            dead = parse(v, alone, i, LIMITS, k)  # type: ignore[operator]
            each_one_event &= (not dead and len(alone) == before + 1
                               and v is not None and v[:1] == b"{")
        taken = parse_singles(values, ks, together, LIMITS)
        assert taken == each_one_event
        assert _columns(together) == _columns(alone if taken else fresh())
