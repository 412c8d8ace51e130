"""The batch form's compiled fast path (``streams/core/_batchparse.c``) against orjson.

The fast path may only take a message whose every element the usual path (orjson,
then ``_predictions_whole``) accepts, and must append exactly what that path
appends. Every message here is parsed both ways, the fast path on and off, and
the columns, feature objects, dead letters and element texts compared; the
clean messages must also have gone the fast way, or the comparison proves nothing.
"""

from __future__ import annotations

import math
import random
import struct
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest

from detectors.quality import FeatureColumns, FeatureTable
from streams.core import parse
from streams.core.parse import (
    FeedbackColumns,
    ParseLimits,
    PredictionColumns,
    parse_feedback,
    parse_predictions,
    parse_singles,
)

fast = pytest.importorskip("streams.core._batchparse",
                           reason="the C extension is built by pip install when gcc is there")

LIMITS = ParseLimits(max_id_chars=32, max_features=20, max_events=50,
                     min_ts=946_684_800.0, max_ts=1_900_000_000.0)
COLUMNS = ("model", "version", "cohort", "ts", "latency_ms", "error", "event_id",
           "prediction", "message", "element")


def both(messages: list[tuple[bytes, Any]], monkeypatch: pytest.MonkeyPatch,
         read: Any = parse_predictions, make: Any = PredictionColumns) -> list[Any]:
    """Each message parsed into one set of columns, with the fast path, then without:
    the columns and the dead letters of each way, in that order."""
    def run() -> list[Any]:
        cols = make()
        dead = [(d.reason, d.raw, d.index) for i, (data, key) in enumerate(messages)
                for d in read(data, cols, i, LIMITS, key)]
        return [cols, dead]
    return each_way(run, monkeypatch)


def each_way(run: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``run()`` with the fast path, then without it: both results, in that order."""
    out = []
    for on in (True, False):
        with monkeypatch.context() as m:
            if not on:
                m.setattr(parse, "_batchparse", None)
            out += run()
    return out


def typed(v: Any) -> bytes:
    """A value as JSON, which tells 1 from 1.0 from True and -0.0 from 0.0."""
    return orjson.dumps(v)


def assert_same(a: PredictionColumns, b: PredictionColumns) -> None:
    for name in COLUMNS:
        assert typed(getattr(a, name)) == typed(getattr(b, name)), name
    assert typed(list(a.features)) == typed(list(b.features))
    assert [a.text(i) for i in range(len(a))] == [b.text(i) for i in range(len(b))]


def event(i: int, rng: random.Random, names: list[str]) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": f"e-{i}", "ts": 1_700_000_000 + rng.random() * 1e5,
                          "model": "m", "version": rng.choice(["v1", "v2"]),
                          "latency_ms": round(rng.expovariate(0.05), rng.randint(0, 6))}
    if rng.random() < 0.5:
        ev["cohort"] = rng.choice(["stable", "canary", None])
    if rng.random() < 0.5:
        ev["status"] = rng.choice(["ok", "error", "timeout", None])
    ev["features"] = {n: scalar(rng) for n in names}
    if rng.random() < 0.8:
        ev["prediction"] = scalar(rng)
    return ev


def scalar(rng: random.Random) -> Any:
    return rng.choice([
        lambda: rng.gauss(0, 10 ** rng.randint(-8, 12)),
        lambda: round(rng.uniform(-1e3, 1e3), rng.randint(0, 8)),
        lambda: rng.randint(-10 ** 17, 10 ** 17),
        lambda: rng.choice(["a", "b", "café", "", "x" * 40]),
        lambda: rng.choice([True, False, None, 0, -0.0, 0.0]),
    ])()


def test_clean_batches_take_the_fast_path_and_append_what_orjson_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    names = ["x0", "x1", "cat", "flag"]
    messages = []
    for j in range(40):
        evs = [event(j * 100 + i, rng, names) for i in range(rng.randint(1, 50))]
        messages.append((orjson.dumps(evs, option=orjson.OPT_INDENT_2 if j % 3 else 0), b"m"))
    for data, key in messages:
        assert fast.predictions(data, key, 32, 20, 50, LIMITS.min_ts, LIMITS.max_ts) is not None
    a, dead_a, b, dead_b = both(messages, monkeypatch)
    assert isinstance(a.features, FeatureTable) and not isinstance(b.features, FeatureTable)
    assert dead_a == dead_b == []
    assert len(a) > 500
    assert_same(a, b)


def test_the_tables_columns_are_the_objects_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    evs = [event(i, rng, ["x", "c", "unknown"]) for i in range(30)]
    a, _, b, _ = both([(orjson.dumps(evs), b"m")], monkeypatch)
    rows = [3, 1, 29, 3]
    ta, tb = (FeatureColumns.extract(parse_take(c.features, rows), ["x", "c", "absent"], {"x"})
              for c in (a, b))
    assert typed(ta.values) == typed(tb.values) and ta.extra == tb.extra == {"unknown"}
    assert [set(e) for e in ta.events] == [set(e) for e in tb.events]
    for name in ta.numbers:
        assert ta.numbers[name].tobytes() == tb.numbers[name].tobytes()


def parse_take(features: Any, rows: list[int]) -> Any:
    return features.take(rows) if isinstance(features, FeatureTable) else \
        [features[i] for i in rows]


BASE = (b'{"event_id":"a","ts":1700000000,"model":"m","version":"v1","latency_ms":1,'
        b'"features":{"x":1.5,"c":"r"},"prediction":0.5}')


EDITS: list[tuple[bytes, bytes]] = []  # every with_ below, for the single-event form


def with_(old: bytes, new: bytes) -> bytes:
    assert old in BASE
    EDITS.append((old, new))
    return b"[" + BASE + b"," + BASE.replace(old, new) + b"]"


HOSTILE = [
    # text the fast path leaves to orjson: escapes, lone surrogates, bad UTF-8, a BOM
    with_(b'"c":"r"', b'"c":"\\ud800"'),
    with_(b'"c":"r"', b'"c":"\\u00e9"'),
    with_(b'"c":"r"', b'"c":"\xed\xa0\x80"'),
    with_(b'"c":"r"', b'"c":"\xff"'),
    b"\xef\xbb\xbf[" + BASE + b"]",
    with_(b'"event_id":"a"', b'"event_id":"caf\xc3\xa9"'),
    with_(b'"event_id":"a"', b'"event_id":"a\x7f"'),
    with_(b'"event_id":"a"', b'"event_id":"a\\n"'),
    # numbers: NaN, huge, too long, underflow, leading zeros, bare signs and points
    with_(b'"x":1.5', b'"x":NaN'),
    with_(b'"x":1.5', b'"x":-Infinity'),
    with_(b'"x":1.5', b'"x":1e400'),
    with_(b'"x":1.5', b'"x":1e-400'),
    with_(b'"x":1.5', b'"x":123456789012345678901234567890'),
    with_(b'"x":1.5', b'"x":-9223372036854775809'),
    with_(b'"x":1.5', b'"x":18446744073709551615'),
    with_(b'"x":1.5', b'"x":0123'),
    with_(b'"x":1.5', b'"x":1.'),
    with_(b'"x":1.5', b'"x":.5'),
    with_(b'"x":1.5', b'"x":-'),
    with_(b'"x":1.5', b'"x":+1'),
    with_(b'"x":1.5', b'"x":1e+0005'),
    with_(b'"x":1.5', b'"x":-0'),
    with_(b'"x":1.5', b'"x":-0.0e-0'),
    with_(b'"x":1.5', b'"x":4.9406564584124654e-324'),
    with_(b'"x":1.5', b'"x":1.7976931348623157e308'),
    with_(b'"x":1.5', b'"x":9007199254740993.0'),
    # time: milliseconds, a year ahead, before 2000, text, bool, null
    with_(b'"ts":1700000000', b'"ts":1700000000000'),
    with_(b'"ts":1700000000', b'"ts":1899999999.9999'),
    with_(b'"ts":1700000000', b'"ts":1900000000.0001'),
    with_(b'"ts":1700000000', b'"ts":946684799.99'),
    with_(b'"ts":1700000000', b'"ts":"2026-11-27T07:00:00.123Z"'),
    with_(b'"ts":1700000000', b'"ts":"2026-11-27t07:00:00z"'),
    with_(b'"ts":1700000000', b'"ts":"2026-11-27T07:00:00"'),
    with_(b'"ts":1700000000', b'"ts":"2126-11-27T07:00:00Z"'),
    with_(b'"ts":1700000000', b'"ts":true'),
    with_(b'"ts":1700000000', b'"ts":null'),
    # fields: missing, null, twice, the wrong type, the wrong value
    with_(b'"latency_ms":1,', b''),
    with_(b'"latency_ms":1', b'"latency_ms":null'),
    with_(b'"latency_ms":1', b'"latency_ms":-0.0'),
    with_(b'"latency_ms":1', b'"latency_ms":-1e-9'),
    with_(b'"latency_ms":1', b'"latency_ms":true'),
    with_(b'"latency_ms":1', b'"latency_ms":1,"latency_ms":2'),
    with_(b'"model":"m"', b'"model":"m","model":"m"'),
    with_(b'"model":"m"', b'"model":"n"'),
    with_(b'"model":"m"', b'"model":""'),
    with_(b'"model":"m"', b'"model":"' + b"m" * 33 + b'"'),
    with_(b'"version":"v1"', b'"version":1'),
    with_(b'"version":"v1"', b'"version":"v1","cohort":"canary","status":"timeout"'),
    with_(b'"version":"v1"', b'"version":"v1","cohort":"Canary"'),
    with_(b'"version":"v1"', b'"version":"v1","cohort":""'),
    with_(b'"version":"v1"', b'"version":"v1","status":"maybe"'),
    with_(b'"version":"v1"', b'"version":"v1","status":null,"cohort":null'),
    # features: another order, another name, one more, none, null, nested, empty
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"c":"r","x":1.5}'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"x":1.5,"d":"r"}'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"x":1.5,"c":"r","y":2}'),
    with_(b'"features":{"x":1.5,"c":"r"},', b''),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":null'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{}'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":[1.5]'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"x":{"a":1},"c":"r"}'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"x":[1],"c":"r"}'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"x":1.5,"c":"r","x":2}'),
    with_(b'"features":{"x":1.5,"c":"r"}', b'"features":{"x":1.5,"' + b"n" * 33 + b'":1}'),
    with_(b'"features":{"x":1.5,"c":"r"}',
          b'"features":{' + b",".join(b'"f%d":1' % i for i in range(21)) + b"}"),
    b"[" + b",".join([BASE.replace(b'"features":{"x":1.5,"c":"r"},', b"")] * 3) + b"]",
    b"[" + b",".join([BASE.replace(b'{"x":1.5,"c":"r"}', b"null")] * 3) + b"]",
    b"[" + b",".join([BASE.replace(b'{"x":1.5,"c":"r"}', b"{}")] * 3) + b"]",
    # prediction and other fields: nested, deep, odd
    with_(b'"prediction":0.5', b'"prediction":{"p":1}'),
    with_(b'"prediction":0.5', b'"prediction":null'),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":{"a":[1,2,{"b":null}],"c":"d"}'),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":' + b"[" * 40 + b"]" * 40),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":' + b"[" * 2000 + b"]" * 2000),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":[1,]'),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":{"a"}'),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":tru'),
    with_(b'"prediction":0.5', b'"prediction":0.5,"extra":"\\"quoted\\""'),
    # the array itself
    b"[]", b" [ ] ", b"[" + BASE + b"] x", b"[" + BASE + b",]", b"[" + BASE, b"[1]",
    b"[" + BASE + b",null]", b"[" + b",".join([BASE] * 51) + b"]", BASE, b"",
    b"[" + BASE.replace(b"}", b"}}", 1) + b"]", b'[{"event_id":"a",}]',
    b" \t\r\n[\n" + BASE + b"\n,\n" + BASE + b"\n]\n",
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("key", [b"m", parse.UNCHECKED, None, b"n"])
def test_hostile_messages_read_the_same_either_way(data: bytes, key: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    a, dead_a, b, dead_b = both([(data, key)], monkeypatch)
    assert dead_a == dead_b
    assert_same(a, b)


def test_the_usual_hostile_cases_are_left_to_orjson() -> None:
    """Not only the same result: these must not be read by the fast path at all."""
    for data in HOSTILE[:4] + HOSTILE[8:11]:
        assert fast.predictions(data, None, 32, 20, 50, 0.0, math.inf) is None


def test_messages_with_different_feature_names_still_fold_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    one = [event(i, rng, ["x", "c"]) for i in range(5)]
    two = [event(i, rng, ["x", "d"]) for i in range(5, 9)]
    three = [event(i, rng, ["x", "c"]) for i in range(9, 12)]
    three[1]["features"] = {"c": 1}  # not the same names: the usual path
    messages = [(orjson.dumps(m), b"m") for m in (one, one, two, three)]
    a, dead_a, b, dead_b = both(messages, monkeypatch)
    assert dead_a == dead_b == [] and len(a) == 17
    assert_same(a, b)


def test_numbers_read_to_the_same_bits_as_orjson() -> None:
    """The fast path's own decimal reading (Clinger's fast path, else the correctly
    rounded PyOS_string_to_double) against orjson's, bit for bit."""
    rng = random.Random(11)
    texts = []
    for _ in range(20_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 22)))
        digits = digits.lstrip("0") or "0"
        cut = rng.randint(0, len(digits))
        text = (digits[:cut] or "0") + ("." + digits[cut:] if digits[cut:] else ".0")
        if rng.random() < 0.3:
            text += rng.choice(["e", "E"]) + rng.choice(["", "+", "-"]) + str(rng.randint(0, 330))
        texts.append(rng.choice(["", "-"]) + text)
    texts += [repr(rng.uniform(-1e6, 1e6)) for _ in range(5_000)]
    texts += [repr(struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0])
              for _ in range(5_000)]
    texts = [t for t in texts if t not in ("nan", "inf", "-inf", "-nan")]
    for t in texts:
        data = with_(b'"x":1.5', b'"x":' + t.encode())
        try:
            want = orjson.loads(data)[1]["features"]["x"]
        except orjson.JSONDecodeError:
            want = None
        got = fast.predictions(data, None, 32, 20, 50, 0.0, math.inf)
        if got is not None:
            assert want is not None, t
            assert typed(column(got[10][0])[1]) == typed(want), t


def test_long_decimals_and_near_halfway_ones_read_to_the_same_bits_as_orjson() -> None:
    """17 to 19 digits (time.time()'s 1796427508.3651025), read one precision up, and
    decimals within a digit of halfway between two doubles, where that reading must
    step aside for the correctly rounded one: bit for bit against orjson's."""
    rng = random.Random(12)
    texts = ["9007199254740993.0", "9007199254740993.1", "9007199254740992.9",
             "18014398509481985.0", "1796427508.3651025", "-4503599627370497.5e-3"]
    for _ in range(20_000):
        n = rng.randint(16, 19)
        digits = str(rng.randint(10 ** (n - 1), 10 ** n - 1))
        cut = rng.randint(1, n)
        text = digits[:cut] + "." + (digits[cut:] or "0")
        texts.append(text + (f"e{rng.randint(-30, 30)}" if rng.random() < 0.3 else ""))
    for _ in range(5_000):  # halfway between a double and the next, to 19 digits, nudged
        x = rng.uniform(1, 2.0 ** rng.randint(0, 60)) * 10.0 ** rng.randint(-20, 5)
        halfway = (Decimal(x) + Decimal(math.nextafter(x, math.inf))) / 2
        digits, exponent = format(halfway, ".18e").split("e")
        texts += [f"{digits[:-1]}{last}e{exponent}" for last in
                  {int(digits[-1]) + step for step in (-1, 0, 1)} & set(range(10))]
    event = (b'{"event_id":"e","ts":1796427508.5,"model":"m","version":"v","latency_ms":1,'
             b'"features":{"x":%s}}')
    for at in range(0, len(texts), 500):
        data = b"[" + b",".join(event % t.encode() for t in texts[at:at + 500]) + b"]"
        got = fast.predictions(data, None, 32, 20, 1_000, 0.0, math.inf)
        assert got is not None
        want = [e["features"]["x"] for e in orjson.loads(data)]
        assert column(got[10][0]) == want
        assert np.array(column(got[10][0])).tobytes() == np.array(want).tobytes()


def column(col: Any) -> list[Any]:
    """A feature column the fast path returned, as objects (floats come as bytes)."""
    return np.frombuffer(col, dtype=np.float64).tolist() if type(col) is bytearray else col


def test_float_columns_come_as_float64_and_the_rest_as_objects() -> None:
    evs = [{"event_id": f"e{i}", "ts": 1.7e9, "model": "m", "version": "v1", "latency_ms": 1,
            "features": {"f": i + 0.5, "late_int": 0.5 if i < 2 else 3, "i": i, "s": "a",
                         "n": None if i == 1 else 1.5}} for i in range(4)]
    got = fast.predictions(orjson.dumps(evs), None, 32, 20, 50, 0.0, math.inf)
    assert got is not None and got[9] == ["f", "late_int", "i", "s", "n"]
    f, late_int, i, s, n = got[10]
    assert type(f) is bytearray and column(f) == [0.5, 1.5, 2.5, 3.5]
    assert late_int == [0.5, 0.5, 3, 3] and typed(late_int) == b"[0.5,0.5,3,3]"
    assert i == [0, 1, 2, 3] and s == ["a"] * 4 and n == [1.5, None, 1.5, 1.5]


def test_a_table_joins_float_arrays_and_lists_into_what_the_objects_hold() -> None:
    t = FeatureTable(("x",), [np.array([0.5, 1.5])], 2)
    t.extend(FeatureTable(("x",), [np.array([2.5])], 1))
    assert isinstance(t.columns[0], np.ndarray) and t.columns[0].tolist() == [0.5, 1.5, 2.5]
    t.extend(FeatureTable(("x",), [[3, None]], 2))
    assert t.columns[0] == [0.5, 1.5, 2.5, 3, None] and len(t) == 5
    assert typed(list(t)) == b'[{"x":0.5},{"x":1.5},{"x":2.5},{"x":3},{"x":null}]'
    floats = FeatureTable(("x",), [np.array([0.5, 1.5, 2.5])], 3)
    assert type(floats[2]["x"]) is float and floats.take([2, 0]).columns[0].tolist() == [2.5, 0.5]
    assert floats.take([0, 1, 2]) is floats and len(floats.take([])) == 0


def both_feedback(messages: list[tuple[bytes, Any]], monkeypatch: pytest.MonkeyPatch
                  ) -> list[tuple[list[Any], list[Any]]]:
    """Each label message parsed with the fast path, then without: every column and
    each event's text, and the dead letters."""
    a, dead_a, b, dead_b = both(messages, monkeypatch, parse_feedback, FeedbackColumns)
    return [(label_columns(a), dead_a), (label_columns(b), dead_b)]


def label_columns(cols: FeedbackColumns) -> list[Any]:
    return [typed(getattr(cols, k)) for k in ("model", "version", "ts", "event_id", "label",
                                              "message", "element")] + \
        [cols.text(i) for i in range(len(cols))]


LABEL = b'{"event_id":"a","ts":1700000000.5,"model":"m","version":"v1","label":1}'
LABELS_HOSTILE = [
    LABEL.replace(b'"label":1', b'"label":null'),
    LABEL.replace(b'"label":1,', b'').replace(b',"label":1', b''),
    LABEL.replace(b'"label":1', b'"label":[1]'),
    LABEL.replace(b'"label":1', b'"label":{"y":1}'),
    LABEL.replace(b'"label":1', b'"label":"fraud"'),
    LABEL.replace(b'"label":1', b'"label":"fr\\u00e9ud"'),
    LABEL.replace(b'"label":1', b'"label":true'),
    LABEL.replace(b'"label":1', b'"label":0.25,"label":1'),
    LABEL.replace(b'"label":1', b'"label":1,"features":{"x":[1,{"y":2}]},"latency_ms":-1'),
    LABEL.replace(b'"ts":1700000000.5', b'"ts":"2026-11-27T07:00:00Z"'),
    LABEL.replace(b'"ts":1700000000.5', b'"ts":1700000000500'),
    LABEL.replace(b'"model":"m"', b'"model":"n"'),
    LABEL.replace(b'"event_id":"a"', b'"event_id":""'),
]


@pytest.mark.parametrize("data", [b"[" + LABEL + b"," + x + b"]" for x in LABELS_HOSTILE]
                         + HOSTILE, ids=range(len(LABELS_HOSTILE) + len(HOSTILE)))
@pytest.mark.parametrize("key", [b"m", parse.UNCHECKED, None])
def test_label_messages_read_the_same_either_way(data: bytes, key: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fast_way, usual_way = both_feedback([(data, key)], monkeypatch)
    assert fast_way == usual_way


def test_clean_label_batches_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(9)
    messages = []
    for j in range(20):
        evs = [{"event_id": f"e-{j}-{i}", "ts": 1_700_000_000 + rng.random() * 1e5,
                "model": "m", "version": rng.choice(["v1", "v2"]),
                "label": rng.choice([0, 1, 0.5, "fraud", "ok", True])} for i in range(40)]
        messages.append((orjson.dumps(evs), b"m"))
        assert fast.feedback(messages[-1][0], b"m", 32, 20, 50, LIMITS.min_ts,
                             LIMITS.max_ts) is not None
    fast_way, usual_way = both_feedback(messages, monkeypatch)
    assert fast_way == usual_way and fast_way[1] == [] and len(fast_way[0]) > 7 + 700


def test_the_worker_says_which_reader_takes_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse.batch_reader() == "compiled (streams/core/_batchparse.c)"
    monkeypatch.setattr(parse, "_batchparse", None)
    assert parse.batch_reader() == "orjson"


# -- the single-event form: messages of one event each, read as one batch -----------

SINGLES_HOSTILE = [BASE.replace(old, new) for old, new in EDITS] + [
    b"[" + BASE + b"]", BASE + b" x", BASE + b"," + BASE, b" \t\n" + BASE + b"\n", b"{}",
    b"", b"null", b"1", b'"s"', BASE[:-1], BASE + b"}",
    # an event split over two messages, each invalid alone, valid once joined
    BASE.replace(b'"prediction":0.5}', b'"prediction":0.5,"extra":[{}'),
    b'{}]}',
]


def singles_both(values: list[Any], keys: list[Any], monkeypatch: pytest.MonkeyPatch,
                 make: Any = PredictionColumns) -> list[Any]:
    """:func:`parse_singles` with the fast path, then without: whether it took them,
    and the columns."""
    def run() -> list[Any]:
        cols = make()
        return [parse_singles(values, keys, cols, LIMITS), cols]
    return each_way(run, monkeypatch)


@pytest.mark.parametrize("data", SINGLES_HOSTILE, ids=range(len(SINGLES_HOSTILE)))
@pytest.mark.parametrize("key", [b"m", b"n", None, parse.UNCHECKED])
def test_hostile_singles_read_the_same_either_way(data: bytes, key: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    values = [BASE, data, BASE.replace(b'"a"', b'"b"')]
    took_a, a, took_b, b = singles_both(values, [b"m", key, b"m"], monkeypatch)
    assert took_a == took_b
    assert_same(a, b)


def test_an_event_split_over_two_messages_is_not_read_as_one() -> None:
    """Each message is read alone: two halves that make one event when joined (and an
    extra event in another message to make the count right) are not taken."""
    halves = SINGLES_HOSTILE[-2:]
    two = BASE + b"," + BASE
    assert fast.prediction_singles([*halves, two], [b"m"] * 3, 32, 20, LIMITS.min_ts,
                                   LIMITS.max_ts) is None
    assert parse_singles([*halves, two], [b"m"] * 3, PredictionColumns(), LIMITS) is False


def test_clean_singles_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(13)
    evs = [event(i, rng, ["x0", "cat", "flag"]) for i in range(300)]
    values = [orjson.dumps(e, option=orjson.OPT_INDENT_2 if i % 5 == 0 else 0)
              for i, e in enumerate(evs)]
    keys = [b"m"] * len(values)
    assert fast.prediction_singles(values, keys, 32, 20, LIMITS.min_ts, LIMITS.max_ts) \
        is not None
    took_a, a, took_b, b = singles_both(values, keys, monkeypatch)
    assert took_a is took_b is True and isinstance(a.features, FeatureTable)
    assert a.message == list(range(300)) and a.element == [0] * 300
    assert_same(a, b)


def test_label_singles_read_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(17)
    clean = [orjson.dumps({"event_id": f"e-{i}", "ts": 1_700_000_000 + rng.random() * 1e5,
                           "model": "m", "version": rng.choice(["v1", "v2"]),
                           "label": rng.choice([0, 1, 0.5, "fraud", True])})
             for i in range(100)]
    assert fast.feedback_singles(clean, [b"m"] * 100, 32, 20, LIMITS.min_ts,
                                 LIMITS.max_ts) is not None
    for extra in [None, *LABELS_HOSTILE]:
        values = clean if extra is None else [*clean[:3], extra, *clean[3:6]]
        took_a, a, took_b, b = singles_both(values, [b"m"] * len(values), monkeypatch,
                                            FeedbackColumns)
        assert took_a == took_b
        assert label_columns(a) == label_columns(b)
