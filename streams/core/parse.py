"""Decode and validate contract messages; whatever fails becomes a dead letter.

Pure functions, no Kafka: a message's bytes go in, valid events (appended to
column lists, ready for a Polars frame) and :class:`DeadLetter` records come out.
A message may hold one event (a JSON object) or a batch (a JSON array of
objects, see ``../shared/CONTRACT.md``); in a batch each bad element is
dead-lettered alone, with its index, and the others are used.

Bytes are decoded once, by orjson, with one exception: the batch form's
compiled fast path (``_batchparse.c``) reads a prediction or label batch
straight into columns when every element is plainly valid, and hands back
anything else untouched. It reads a strict subset of JSON (no escapes, numbers within
fixed bounds) to the same values orjson reads, and appends exactly what the
column-wise checks below append (``tests/test_batchparse.py`` and
``tests/test_parse_batches.py`` hold both to that, message by message); so no
reader here accepts what orjson refuses (the standard library reads lone
surrogates, integers of any size and NaN, which orjson, and every output
Sentinelle writes, refuses). What orjson refuses is named precisely:

- a byte order mark, invalid UTF-8, a lone UTF-16 surrogate escape, a number
  too large for a double, nesting deeper than 1,024: the whole message is
  dead-lettered with that reason (it is not JSON, so it has no elements);
- ``NaN`` and ``Infinity`` literals (Python's ``json.dumps`` writes them): the
  message is read again by orjson with those tokens replaced by marker
  strings, and only the elements that hold one are dead-lettered
  (``not_finite``), naming the field.

Every event is then checked against the contract and the worker's limits
(:class:`ParseLimits`): identifiers are non-empty strings of at most
``max_id_chars`` characters without control characters; ``features`` is an
object of at most ``max_features`` scalars; an event time before 2000 or more
than ``max_future_s`` ahead of the worker's clock is refused (epoch
milliseconds are the usual cause, and the reason says so); and an event whose
Kafka message key is not its model (pipeline, source) is ``bad_key``, since
it would land on another partition than the rest of its model.

Reasons are ``code: detail`` strings; the codes are stable and counted:
``oversized``, ``not_json``, ``not_object``, ``missing_field``, ``bad_type``,
``not_finite``, ``negative_latency``, ``bad_timestamp``, ``bad_value``,
``bad_key`` and, from later stages, ``late``, ``over_capacity`` and
``internal_error``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from typing import Any, Final

import numpy as np
import orjson

from detectors.contract import (
    APPROVAL_ACTIONS,
    COHORTS,
    DEPLOYMENT_PHASES,
    MAX_BATCH_EVENTS,
    MAX_MESSAGE_BYTES,
    PIPELINE_KINDS,
    PREDICTION_STATUSES,
    RUN_STATUSES,
)
from detectors.quality import FeatureTable

try:  # the batch form's fast path (a C extension, built by pip install when it can)
    from streams.core import _batchparse
except ImportError:  # pragma: no cover - no C compiler at install: orjson reads everything
    _batchparse = None  # type: ignore[assignment]

__all__ = ["DeadLetter", "ParseLimits", "PredictionColumns", "FeedbackColumns",
           "MetricColumns", "UNCHECKED", "parse_predictions", "parse_feedback", "parse_singles",
           "parse_control", "parse_pipeline", "parse_metrics", "parse_time", "raw_text",
           "is_batch"]

MAX_RAW_CHARS = 65_536
MIN_TS: Final = 946_684_800.0  # 2000-01-01T00:00:00Z


class Invalid(ValueError):
    """One event broke the contract; ``args[0]`` is the dead-letter reason."""


class _Unchecked:
    def __repr__(self) -> str:
        return "UNCHECKED"


#: The message key was not given (pure callers that do not model Kafka keys).
UNCHECKED: Final = _Unchecked()
Key = bytes | None | _Unchecked


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """What the parser accepts beyond the contract's types.

    ``min_ts``/``max_ts`` bound event times (``None``: unchecked); the worker
    sets ``max_ts`` to its wall clock plus ``limits.max_future_s`` for each
    micro-batch (:meth:`at`).
    """

    max_bytes: int = MAX_MESSAGE_BYTES
    max_events: int = MAX_BATCH_EVENTS
    max_id_chars: int = 256
    max_features: int = 1_000
    min_ts: float | None = None
    max_ts: float | None = None

    def at(self, now: float, max_future_s: float, min_ts: float = MIN_TS) -> ParseLimits:
        """These limits with event times bounded to ``[min_ts, now + max_future_s]``."""
        return replace(self, min_ts=min_ts, max_ts=now + max_future_s)


DEFAULT_LIMITS: Final = ParseLimits()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    raw: str
    index: int | None = None  # position in a batch message

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]

    def to_record(self, topic: str, partition: int, offset: int,
                  max_raw: int = MAX_RAW_CHARS) -> dict[str, Any]:
        """The ``ml.deadletter`` message (contract fields, plus ``index`` for batches).

        ``raw`` longer than ``max_raw`` characters (an oversized message) is cut,
        with ``raw_truncated`` and ``raw_length`` added: a dead letter must itself
        fit in a Kafka message.
        """
        rec: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset,
                               "reason": self.reason[:1000], "raw": self.raw}
        if len(self.raw) > max_raw:
            rec.update(raw=self.raw[:max_raw], raw_truncated=True, raw_length=len(self.raw))
        if self.index is not None:
            rec["index"] = self.index
        return rec


def internal_error(value: bytes | None, topic: str, partition: int, offset: int,
                   exc: Exception) -> dict[str, Any]:
    """The dead letter of a message that met a bug (``internal_error``, with the error).

    >>> internal_error(b"{}", "ml.metrics", 0, 7, KeyError("x"))["reason"]
    "internal_error: KeyError: 'x'"
    """
    return DeadLetter(f"internal_error: {type(exc).__name__}: {exc}"[:500],
                      raw_text(value or b"")).to_record(topic, partition, offset)


_BATCH: Final = re.compile(rb"[ \t\r\n]*\[")


def is_batch(data: bytes | None) -> bool:
    """Whether a message is the batch form (a JSON array, after any whitespace), whose
    dead letters name their element's index.

    >>> is_batch(b' [{"a": 1}]'), is_batch(b'{"a": 1}'), is_batch(None)
    (True, False, False)
    """
    return data is not None and _BATCH.match(data) is not None


def raw_text(data: bytes) -> str:
    """The original bytes as text, or base64 when they are not UTF-8 (or hold a
    lone surrogate escape, which no JSON writer can carry on).

    >>> raw_text(b'{"a": 1}'), raw_text(b"\\xff")
    ('{"a": 1}', '/w==')
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
    return text


@dataclass(slots=True)
class PredictionColumns:
    """Valid prediction events, column by column (one list per field)."""

    model: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    cohort: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    error: list[bool] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    # the feature objects; a FeatureTable while every message read so far came through
    # the fast path with the same feature names (``_batchparse``)
    features: list[dict[str, Any] | None] | FeatureTable = field(default_factory=list)
    prediction: list[Any] = field(default_factory=list)
    # For each event: which message (index into the caller's message list) and
    # which element of it, so a late event can be dead-lettered with its origin.
    message: list[int] = field(default_factory=list)
    element: list[int] = field(default_factory=list)
    # Each valid event, for a later stage's dead letter (``late``): its parsed form
    # or, from the fast path, its message (a ``_Spans``), read again only then.
    raw: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def text(self, row: int) -> str:
        """Row ``row``'s event as JSON text, encoded again from its parsed form."""
        return _row_text(self.raw[row], self.element[row])

    def feature_list(self) -> list[dict[str, Any] | None]:
        """``features`` as a list of objects, to append to (a table becomes one)."""
        if isinstance(self.features, FeatureTable):
            self.features = list(self.features)
        return self.features


def _row_text(raw: Any, element: int) -> str:
    """An input row's event as JSON text, from what the columns keep of it: the parsed
    event, a message the fast path read (``_Spans``), or a single-event message's bytes."""
    if type(raw) is _Spans:
        raw = raw.element(element)
    elif type(raw) is bytes:
        raw = orjson.loads(raw)
    return _element_text(raw)


@dataclass(frozen=True, slots=True)
class _Spans:
    """A message the fast path read, and where each of its elements lies: ``spans``,
    int64 pairs (element ``i`` from ``spans[2i]`` to ``spans[2i + 1]``), as bytes."""

    data: bytes
    spans: bytearray

    def element(self, i: int) -> Any:
        at = memoryview(self.spans).cast("q")
        return orjson.loads(self.data[at[2 * i]:at[2 * i + 1]])


# RFC 3339's date-time (section 5.6), and the same without its offset (refused with
# its own reason). The separator may be a space (the RFC's note); datetime.fromisoformat
# alone would also take ISO 8601 forms the contract does not allow: basic ("20261127T
# 070000Z"), week dates, hours alone, a comma before the fraction, "+0100".
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?")


def parse_time(value: Any, name: str = "ts", limits: ParseLimits = DEFAULT_LIMITS) -> float:
    """Contract time (RFC 3339 with offset, or epoch seconds) to epoch seconds.

    >>> parse_time("2026-11-27T07:00:00.123Z")
    1795762800.123
    >>> parse_time(1795762800.5)
    1795762800.5
    >>> try:
    ...     parse_time(1795762800123, limits=ParseLimits(min_ts=MIN_TS, max_ts=1795762900.0))
    ... except Invalid as exc:
    ...     print(str(exc).split(": ")[-1])
    epoch milliseconds? Sentinelle reads epoch seconds
    """
    if isinstance(value, bool):
        raise Invalid(f"bad_type: '{name}' must be an RFC 3339 string or epoch seconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise Invalid(f"not_finite: '{name}' is {value}")
        ts = float(value)
    elif isinstance(value, str):
        try:  # RFC 3339 allows "t" and "z" in lower case; fromisoformat does not
            if not _RFC3339.fullmatch(value):
                raise ValueError(value)
            dt = datetime.fromisoformat(value.upper())
        except ValueError:
            raise Invalid(f"bad_timestamp: '{name}' {value[:64]!r} is not RFC 3339 "
                          f"(YYYY-MM-DDThh:mm:ss[.fraction] and Z or +hh:mm)") from None
        if dt.tzinfo is None:
            raise Invalid(f"bad_timestamp: '{name}' {value[:64]!r} has no UTC offset")
        ts = dt.timestamp()
    else:
        raise Invalid(f"bad_type: '{name}' must be an RFC 3339 string or epoch seconds")
    _check_time(ts, value, name, limits)
    return ts


def _check_time(ts: float, value: Any, name: str, limits: ParseLimits) -> None:
    shown = value[:40] if isinstance(value, str) else value
    if limits.min_ts is not None and ts < limits.min_ts:
        raise Invalid(f"bad_timestamp: '{name}' {shown} is before "
                      f"{datetime.fromtimestamp(limits.min_ts, UTC):%Y-%m-%d}")
    if limits.max_ts is not None and ts > limits.max_ts:
        ahead = ts - limits.max_ts
        when = ("more than a million years" if ahead > 31_557_600e6
                else f"{ahead / 31_557_600:,.0f} years" if ahead > 31_557_600 * 2
                else f"{ahead / 86_400:,.1f} days" if ahead > 86_400 * 2 else f"{ahead:,.0f} s")
        millis = isinstance(value, (int, float)) and limits.min_ts is not None and \
            limits.min_ts <= ts / 1000 <= limits.max_ts
        hint = (": epoch milliseconds? Sentinelle reads epoch seconds" if millis
                else " (is the producer's clock right?)")
        raise Invalid(f"bad_timestamp: '{name}' {shown} is {when} ahead of the worker's "
                      f"clock{hint}")


def _string(ev: dict[str, Any], name: str, required: bool = True,
            limits: ParseLimits = DEFAULT_LIMITS) -> str | None:
    v = ev.get(name)
    if v is None:
        if required:
            raise Invalid(f"missing_field: '{name}' is required")
        return None
    if not isinstance(v, str) or not v:
        raise Invalid(f"bad_type: '{name}' must be a non-empty string")
    if len(v) > limits.max_id_chars:
        raise Invalid(f"bad_value: '{name}' is {len(v)} characters long "
                      f"(at most {limits.max_id_chars})")
    if not v.isprintable():
        raise Invalid(f"bad_value: '{name}' holds control characters")
    return v


def _required(ev: dict[str, Any], name: str, limits: ParseLimits = DEFAULT_LIMITS) -> str:
    v = _string(ev, name, True, limits)
    if v is None:  # pragma: no cover - _string raised already
        raise Invalid(f"missing_field: '{name}' is required")
    return v


def _number(ev: dict[str, Any], name: str) -> float:
    v = ev.get(name)
    if v is None:
        raise Invalid(f"missing_field: '{name}' is required")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Invalid(f"bad_type: '{name}' must be a number")
    if not math.isfinite(v):
        raise Invalid(f"not_finite: '{name}' is {v}")
    return float(v)


def _object(ev: Any) -> dict[str, Any]:
    if not isinstance(ev, dict):
        raise Invalid(f"not_object: expected a JSON object, got {type(ev).__name__}")
    return ev


def _ts(ev: dict[str, Any], limits: ParseLimits) -> float:
    """The event's required ``ts``, in epoch seconds."""
    if ev.get("ts") is None:
        raise Invalid("missing_field: 'ts' is required")
    return parse_time(ev["ts"], "ts", limits)


def _keyed(key: Key, value: str, name: str) -> None:
    """The message key must be the event's ``name`` (model, pipeline, source)."""
    if isinstance(key, _Unchecked):
        return
    if key is None:
        raise Invalid(f"bad_key: the message has no key; key every message by its {name} "
                      f"({value[:64]!r}) so all of it lands on one partition")
    if key != value.encode():
        shown = key[:64].decode("utf-8", errors="replace")
        raise Invalid(f"bad_key: the message key {shown!r} is not the event's {name} "
                      f"{value[:64]!r}; key every message by its {name} so all of it "
                      f"lands on one partition")


def _header(ev: Any, limits: ParseLimits, key: Key) -> tuple[str, float, str, str]:
    """``event_id``, ``ts``, ``model`` and ``version``: what every input event has."""
    event_id = _required(_object(ev), "event_id", limits)
    model = _required(ev, "model", limits)
    _keyed(key, model, "model")
    return event_id, _ts(ev, limits), model, _required(ev, "version", limits)


_SCALAR = (str, int, float, bool)


def _features(ev: dict[str, Any], limits: ParseLimits) -> dict[str, Any] | None:
    features = ev.get("features")
    if features is None:
        return None
    if not isinstance(features, dict):
        raise Invalid("bad_type: 'features' must be an object")
    if len(features) > limits.max_features:
        raise Invalid(f"bad_value: 'features' has {len(features)} entries "
                      f"(at most {limits.max_features})")
    for name, v in features.items():
        if len(name) > limits.max_id_chars:
            raise Invalid(f"bad_value: a feature name is {len(name)} characters long "
                          f"(at most {limits.max_id_chars})")
        if v is not None and not isinstance(v, _SCALAR):
            raise Invalid(f"bad_type: feature {name[:64]!r} is {_json_type(v)}; a feature "
                          f"value is a number, string, bool or null")
    return features


def _json_type(v: Any) -> str:
    return "an object" if isinstance(v, dict) else "an array" if isinstance(v, list) \
        else type(v).__name__


def _scalar(ev: dict[str, Any], name: str) -> Any:
    v = ev.get(name)
    if v is not None:
        if not isinstance(v, _SCALAR):  # bool is an int
            raise Invalid(f"bad_type: '{name}' must be a number, string or bool")
        if isinstance(v, float) and not math.isfinite(v):
            raise Invalid(f"not_finite: '{name}' is {v}")
    return v


def _add_prediction(ev: Any, cols: PredictionColumns, message: int, element: int,
                    limits: ParseLimits, key: Key) -> None:
    event_id, ts, model, version = _header(ev, limits, key)
    latency = _number(ev, "latency_ms")
    if latency < 0:
        raise Invalid(f"negative_latency: 'latency_ms' is {latency}")
    cohort = _string(ev, "cohort", False, limits) or "stable"
    if cohort not in COHORTS:
        raise Invalid(f"bad_value: 'cohort' must be stable or canary; got {cohort[:32]!r}")
    status = _string(ev, "status", False, limits) or "ok"
    if status not in PREDICTION_STATUSES:
        raise Invalid(f"bad_value: 'status' must be one of ok, error, timeout; got {status[:32]!r}")
    features = _features(ev, limits)
    prediction = _scalar(ev, "prediction")
    cols.model.append(model)
    cols.version.append(version)
    cols.cohort.append(cohort)
    cols.ts.append(ts)
    cols.latency_ms.append(latency)
    cols.error.append(status != "ok")
    cols.event_id.append(event_id)
    cols.feature_list().append(features)
    cols.prediction.append(prediction)
    cols.message.append(message)
    cols.element.append(element)
    cols.raw.append(ev)


def parse_predictions(data: bytes | None, cols: PredictionColumns, message: int = 0,
                      limits: ParseLimits = DEFAULT_LIMITS,
                      key: Key = UNCHECKED) -> list[DeadLetter]:
    """Append the valid events of one message to ``cols``; return its dead letters.

    >>> cols = PredictionColumns()
    >>> bad = parse_predictions(b'[{"event_id": "a", "ts": 1, "model": "m", "version": "v1",'
    ...                         b' "latency_ms": 12}, {"event_id": "b"}]', cols)
    >>> len(cols), [(d.index, d.reason) for d in bad]
    (1, [(1, "missing_field: 'model' is required")])
    """
    if _batchparse is not None and data is not None and len(data) <= limits.max_bytes and \
            _predictions_fast(data, cols, message, limits, key):
        return []
    return _parse(data, lambda ev, i: _add_prediction(ev, cols, message, i, limits, key),
                  limits, lambda doc: _predictions_whole(doc, cols, message, limits, key))


def batch_reader() -> str:
    """Which reader takes valid batches (the worker logs it when it starts folding)."""
    return "compiled (streams/core/_batchparse.c)" if _batchparse is not None else "orjson"


def _fast(read: Callable[..., tuple[Any, ...] | None], data: bytes, limits: ParseLimits,
          key: Key) -> tuple[Any, ...] | None:
    """The compiled fast path's columns of a batch (``streams/core/_batchparse.c``), its
    times in epoch seconds, when it reads every element as plainly valid; else None,
    and the message goes the usual way: orjson, then the checks that name what is
    wrong."""
    if key is None or (type(key) is not bytes and not isinstance(key, _Unchecked)):
        return None
    return _epoch(read(data, key if type(key) is bytes else None, limits.max_id_chars,
                       limits.max_features, limits.max_events, *_ts_bounds(limits)), limits)


def _ts_bounds(limits: ParseLimits) -> tuple[float, float]:
    """The time bounds as the compiled reader takes them (infinite when unset)."""
    return (-math.inf if limits.min_ts is None else limits.min_ts,
            math.inf if limits.max_ts is None else limits.max_ts)


def _epoch(got: tuple[Any, ...] | None, limits: ParseLimits) -> tuple[Any, ...] | None:
    """The compiled reader's columns with its times in epoch seconds (RFC 3339 text among
    them read as the usual path reads it), its ``ts_text`` flag dropped; None if any
    time is not valid."""
    if got is None:
        return None
    event_id, ts, ts_text, *rest = got
    if ts_text:
        ts = _times(ts, limits)
        if ts is None:
            return None
    return (event_id, ts, *rest)


def _extend_header(cols: PredictionColumns | FeedbackColumns, event_id: list[str],
                   ts: list[float], model: list[str], version: list[str],
                   message: int | list[int], raw: list[Any]) -> None:
    """Append what every input event has, and where each came from."""
    cols.event_id += event_id
    cols.ts += ts
    cols.model += model
    cols.version += version
    _place(cols, message, len(event_id))
    cols.raw += raw


def _feedback_fast(data: bytes, cols: FeedbackColumns, message: int, limits: ParseLimits,
                   key: Key) -> bool:
    """Append a batch of labels through the fast path (what ``_feedback_whole`` would
    append), or return False with nothing appended."""
    got = _fast(_batchparse.feedback, data, limits, key)
    if got is None:
        return False
    _append_feedback(cols, got, message, [_Spans(data, got[-1])] * len(got[0]))
    return True


def _append_feedback(cols: FeedbackColumns, got: tuple[Any, ...], message: int | list[int],
                     raw: list[Any]) -> None:
    """Append the fast path's label columns (``raw``: where each event's text is)."""
    event_id, ts, model, version, label, _ = got
    _extend_header(cols, event_id, ts, model, version, message, raw)
    cols.label += label


def _predictions_fast(data: bytes, cols: PredictionColumns, message: int,
                      limits: ParseLimits, key: Key) -> bool:
    """Append a batch through the fast path (what ``_predictions_whole`` would append),
    or return False with nothing appended."""
    got = _fast(_batchparse.predictions, data, limits, key)
    if got is None:
        return False
    _append_predictions(cols, got, message, [_Spans(data, got[-1])] * len(got[0]))
    return True


def _append_predictions(cols: PredictionColumns, got: tuple[Any, ...],
                        message: int | list[int], raw: list[Any]) -> None:
    """Append the fast path's prediction columns (``raw``: where each event's text is)."""
    (event_id, ts, model, version, latency, cohort, error, prediction, names, columns,
     _) = got
    n = len(event_id)
    if not n:
        return
    have = cols.features
    if names is not None:  # float columns come as their bytes
        columns = [np.frombuffer(c, dtype=np.float64) if type(c) is bytearray else c
                   for c in columns]
    if names is None:  # no event has features
        cols.feature_list().extend([None] * n)
    elif isinstance(have, FeatureTable) and have.names == tuple(names):
        have.extend(FeatureTable(have.names, columns, n))
    elif not have:
        cols.features = FeatureTable(tuple(names), columns, n)
    else:
        cols.feature_list().extend(FeatureTable(tuple(names), columns, n))
    _extend_header(cols, event_id, ts, model, version, message, raw)
    cols.cohort += cohort
    cols.latency_ms += latency
    cols.error += error
    cols.prediction += prediction


def parse_feedback(data: bytes | None, cols: FeedbackColumns, message: int = 0,
                   limits: ParseLimits = DEFAULT_LIMITS,
                   key: Key = UNCHECKED) -> list[DeadLetter]:
    """The same for ``ml.feedback``: ``event_id``, ``ts``, ``model``, ``version``, ``label``.

    >>> cols = FeedbackColumns()
    >>> parse_feedback(b'{"event_id": "a", "ts": 1, "model": "m", "version": "v1", "label": 1}',
    ...                cols), cols.label
    ([], [1])
    """
    if _batchparse is not None and data is not None and len(data) <= limits.max_bytes and \
            _feedback_fast(data, cols, message, limits, key):
        return []
    return _parse(data, lambda ev, i: _add_feedback(ev, cols, message, i, limits, key),
                  limits, lambda doc: _feedback_whole(doc, cols, message, limits, key))


# ``NaN``/``Infinity`` outside strings, the one thing orjson refuses that a
# producer commonly writes; strings are matched first so their contents are skipped.
# A string that never ends runs to the end of the data (possessively): otherwise each
# quote inside it would start a new scan to the end, quadratic in the message's size.
_NONFINITE = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|(-?Infinity|NaN)', re.DOTALL)
_MARK = "\x00sentinelle-nonfinite:"


def _loads(data: bytes) -> tuple[Any, bool]:
    """orjson's reading of ``data``; ``True`` when NaN/Infinity tokens were marked."""
    try:
        return orjson.loads(data), False
    except orjson.JSONDecodeError as exc:
        if b"NaN" not in data and b"Infinity" not in data:
            raise _undecodable(data, exc) from None
    marked = _NONFINITE.sub(lambda m: (b'"\\u0000sentinelle-nonfinite:' + m.group(1) + b'"'
                                       if m.group(1) else m.group(0)), data)
    try:
        return orjson.loads(marked), True
    except orjson.JSONDecodeError as exc:
        raise _undecodable(data, exc) from None


def _undecodable(data: bytes, exc: orjson.JSONDecodeError) -> Invalid:
    msg = str(exc)
    if data.startswith(b"\xef\xbb\xbf"):
        return Invalid("not_json: starts with a UTF-8 byte order mark; send JSON without a BOM")
    if "surrogate" in msg or "UTF-8" in msg:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Invalid(f"not_json: not valid UTF-8 at byte {bad.start}")
        return Invalid(f"bad_value: a string holds a lone UTF-16 surrogate escape, which is not "
                       f"Unicode ({msg})")
    if "infinity when parsed as double" in msg:
        return Invalid(f"not_finite: a number is too large for a 64-bit float ({msg})")
    if "depth limit" in msg or "ecursion" in msg:
        return Invalid(f"bad_value: nested deeper than 1,024 levels ({msg})")
    return Invalid(f"not_json: {msg}")


def _nonfinite(ev: Any, path: str = "") -> str | None:
    """The path of the first NaN/Infinity marker inside ``ev``, if any."""
    stack: list[tuple[Any, str]] = [(ev, path)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if v.startswith(_MARK):
                return f"'{where or 'value'}' is {v[len(_MARK):]}"
        elif isinstance(v, dict):
            stack.extend((x, f"{where}.{k}" if where else str(k)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]") for i, x in enumerate(v))
    return None


def _parse(data: bytes | None, add: Callable[[Any, int], None],
           limits: ParseLimits, whole: Callable[[list[Any]], bool] | None = None
           ) -> list[DeadLetter]:
    if data is None:
        return [DeadLetter("not_json: empty message (no value)", "")]
    if len(data) > limits.max_bytes:
        return [DeadLetter(f"oversized: {len(data)} bytes > {limits.max_bytes}",
                           raw_text(data))]
    try:
        doc, marked = _loads(data)
    except Invalid as exc:
        return [DeadLetter(str(exc), raw_text(data))]

    def one(ev: Any, i: int) -> None:
        if marked:
            where = _nonfinite(ev)
            if where is not None:
                raise Invalid(f"not_finite: {where} (not JSON: send null for a missing value)")
        add(ev, i)

    if isinstance(doc, dict):
        try:
            one(doc, 0)
        except Invalid as exc:
            return [DeadLetter(str(exc), raw_text(data))]
        return []
    if marked and isinstance(doc, str) and doc.startswith(_MARK):
        return [DeadLetter(f"not_finite: the message is {doc[len(_MARK):]} (not JSON)",
                           raw_text(data))]
    if not isinstance(doc, list):
        return [DeadLetter(f"not_object: expected an object or an array of objects, got "
                           f"{type(doc).__name__}", raw_text(data))]
    if len(doc) > limits.max_events:
        return [DeadLetter(f"oversized: batch of {len(doc)} events > {limits.max_events}",
                           raw_text(data))]
    if whole is not None and not marked and whole(doc):
        return []  # every element valid, appended column by column
    dead = []
    whole_in: int | None = None  # the element whose dead letter holds the whole message
    for i, ev in enumerate(doc):
        try:
            one(ev, i)
        except Invalid as exc:
            text = _element_text(ev, data, whole_in)
            if whole_in is None and text.startswith(_WHOLE_FOLLOWS):
                whole_in = i
            dead.append(DeadLetter(str(exc), text, index=i))
    return dead


@dataclass(slots=True)
class FeedbackColumns:
    """Valid feedback events (labels), column by column."""

    model: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    label: list[Any] = field(default_factory=list)
    message: list[int] = field(default_factory=list)
    element: list[int] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def text(self, row: int) -> str:
        """Row ``row``'s event as JSON text, encoded again from its parsed form."""
        return _row_text(self.raw[row], self.element[row])


def _add_feedback(ev: Any, cols: FeedbackColumns, message: int, element: int,
                  limits: ParseLimits, key: Key) -> None:
    event_id, ts, model, version = _header(ev, limits, key)
    if ev.get("label") is None:
        raise Invalid("missing_field: 'label' is required")
    label = _scalar(ev, "label")
    cols.model.append(model)
    cols.version.append(version)
    cols.ts.append(ts)
    cols.event_id.append(event_id)
    cols.label.append(label)
    cols.message.append(message)
    cols.element.append(element)
    cols.raw.append(ev)




# -- batches, column by column -----------------------------------------------------
#
# A batch message is read field by field over all its elements at once (one list
# per field, then checks over whole lists: the set of types, the shortest and
# longest string, one ``isprintable`` of the joined strings, the smallest and
# largest number), not element by element. These checks accept exactly the
# batches whose every element the per-element checks above accept, and append
# the same values; a batch with anything they do not accept, even one element,
# is read again element by element, so each bad element gets the reason and the
# index it always had and the others are used.

_NONE = type(None)
_NUMBER_TYPES: Final = frozenset({int, float})
_SCALAR_TYPES: Final = frozenset({str, int, float, bool, _NONE})
_FEATURE_TYPES: Final = frozenset({dict, _NONE})
_STR: Final = frozenset({str})
_COHORTS_OR_NONE: Final = frozenset({None, *COHORTS})
_STATUSES_OR_NONE: Final = frozenset({None, *PREDICTION_STATUSES})


def _ids_ok(col: list[Any], limits: ParseLimits) -> bool:
    """Every value a non-empty printable string of at most ``max_id_chars``."""
    if set(map(type, col)) != _STR:
        return False
    lengths = list(map(len, col))
    return min(lengths) >= 1 and max(lengths) <= limits.max_id_chars and \
        "".join(col).isprintable()


def _key_ok(col: list[str], key: Key | list[Key]) -> bool:
    """Every value is the message key (``_keyed``), or the key is not checked; with a
    list of keys, every value is its own message's key."""
    if isinstance(key, list):
        try:
            return all(isinstance(k, _Unchecked) or (type(k) is bytes and k.decode() == v)
                       for v, k in zip(col, key, strict=True))
        except UnicodeDecodeError:
            return False
    if isinstance(key, _Unchecked):
        return True
    if type(key) is not bytes:
        return False
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return col.count(text) == len(col)


def _times(col: list[Any], limits: ParseLimits) -> list[float] | None:
    """``ts`` of every element in epoch seconds, or None if any is not accepted."""
    if set(map(type, col)) <= _NUMBER_TYPES:
        ts = list(map(float, col))
        if not all(map(math.isfinite, ts)):
            return None
        if limits.min_ts is not None and min(ts) < limits.min_ts:
            return None
        if limits.max_ts is not None and max(ts) > limits.max_ts:
            return None
        return ts
    try:
        return [parse_time(v, "ts", limits) if v is not None else _missing_ts() for v in col]
    except Invalid:
        return None


def _missing_ts() -> float:
    raise Invalid("missing_field: 'ts' is required")


def _numbers_ok(col: list[Any]) -> list[float] | None:
    """Every value a finite number (not a bool), as floats; else None."""
    if not set(map(type, col)) <= _NUMBER_TYPES:
        return None
    out = list(map(float, col))
    return out if all(map(math.isfinite, out)) else None


def _scalars_ok(col: list[Any]) -> bool:
    """Every value null or a scalar (``_scalar``); floats from orjson are finite."""
    if not set(map(type, col)) <= _SCALAR_TYPES:
        return False
    return all(map(math.isfinite, (v for v in col if type(v) is float)))


def _features_ok(col: list[Any], limits: ParseLimits) -> bool:
    """Every value null or an object the per-element ``_features`` accepts."""
    types = set(map(type, col))
    if not types <= _FEATURE_TYPES:
        return False
    objs = [f for f in col if f is not None] if _NONE in types else col
    if not objs:
        return True
    if max(map(len, objs)) > limits.max_features:
        return False
    names = set(chain.from_iterable(objs))  # a batch's events share their feature names
    if names and max(map(len, names)) > limits.max_id_chars:
        return False
    return set(map(type, chain.from_iterable(map(dict.values, objs)))) <= _SCALAR_TYPES


def _columns(doc: list[dict[str, Any]], names: tuple[str, ...]) -> list[list[Any]]:
    """One list per name: each element's value (None when absent)."""
    out = []
    for name in names:
        try:  # every element has the field: a C-level pass
            out.append(list(map(itemgetter(name), doc)))
        except KeyError:
            out.append([ev.get(name) for ev in doc])
    return out


_HEADER: Final = ("event_id", "ts", "model", "version")
_PREDICTION: Final = (*_HEADER, "latency_ms", "cohort", "status", "features", "prediction")
_FEEDBACK: Final = (*_HEADER, "label")


def _header_whole(columns: list[list[Any]], limits: ParseLimits,
                  key: Key | list[Key]) -> list[float] | None:
    """The ``ts`` column if the ``_HEADER`` columns are all valid, else None."""
    event_id, ts, model, version = columns[:4]
    if not (_ids_ok(event_id, limits) and _ids_ok(model, limits) and _key_ok(model, key)
            and _ids_ok(version, limits)):
        return None
    return _times(ts, limits)


def _predictions_whole(doc: list[Any], cols: PredictionColumns, message: int | list[int],
                       limits: ParseLimits, key: Key | list[Key]) -> bool:
    """Append a whole batch column by column if every element is valid; else False
    (and nothing appended). ``message`` and ``key`` lists: each element is a message
    of its own (see :func:`parse_singles`)."""
    if not doc or set(map(type, doc)) != {dict}:
        return not doc
    columns = _columns(doc, _PREDICTION)
    ts = _header_whole(columns, limits, key)
    if ts is None:
        return False
    event_id, _, model, version, latency_ms, cohort, status, features, prediction = columns
    latency = _numbers_ok(latency_ms)
    if latency is None or min(latency) < 0:
        return False
    try:
        if not (set(cohort) <= _COHORTS_OR_NONE and set(status) <= _STATUSES_OR_NONE):
            return False
    except TypeError:  # an unhashable value (object, array)
        return False
    if not (_features_ok(features, limits) and _scalars_ok(prediction)):
        return False
    _extend_header(cols, event_id, ts, model, version, message, doc)
    cols.cohort += ["stable" if c is None else c for c in cohort] if None in cohort else cohort
    cols.latency_ms += latency
    cols.error += [s is not None and s != "ok" for s in status]
    cols.feature_list().extend(features)
    cols.prediction += prediction
    return True


def _feedback_whole(doc: list[Any], cols: FeedbackColumns, message: int | list[int],
                    limits: ParseLimits, key: Key | list[Key]) -> bool:
    """The same for ``ml.feedback`` batches (see ``_add_feedback``)."""
    if not doc or set(map(type, doc)) != {dict}:
        return not doc
    columns = _columns(doc, _FEEDBACK)
    ts = _header_whole(columns, limits, key)
    event_id, _, model, version, label = columns
    if ts is None or None in label or not _scalars_ok(label):
        return False
    _extend_header(cols, event_id, ts, model, version, message, doc)
    cols.label += label
    return True


def _place(cols: PredictionColumns | FeedbackColumns, message: int | list[int], n: int) -> None:
    """Each appended element's message and position in it: ``n`` elements of one
    message, or one element of each of the messages listed."""
    if isinstance(message, list):
        cols.message += message
        cols.element += [0] * n
    else:
        cols.message += [message] * n
        cols.element += range(n)


def parse_singles(values: Sequence[bytes | None], keys: Sequence[Key],
                  cols: PredictionColumns | FeedbackColumns,
                  limits: ParseLimits = DEFAULT_LIMITS) -> bool:
    """Messages of one event each (the single-event form), read like one batch: each
    decoded, then all of them checked column by column. True when every message is a
    valid event: all appended, message ``i`` as ``message=i``, exactly what
    :func:`parse_predictions` (or :func:`parse_feedback`, by the type of ``cols``)
    would have appended message by message. False when any is not (a batch, bad
    JSON, a bad field...): nothing appended, read them one by one for their dead
    letters.

    >>> cols = PredictionColumns()
    >>> ev = {"event_id": "a", "ts": 1, "model": "m", "version": "v1", "latency_ms": 12}
    >>> parse_singles([orjson.dumps(ev), orjson.dumps({**ev, "event_id": "b"})],
    ...               [b"m", b"m"], cols), cols.event_id, cols.message
    (True, ['a', 'b'], [0, 1])
    >>> parse_singles([orjson.dumps(ev), b"[]"], [b"m", b"m"], PredictionColumns())
    False
    """
    if _batchparse is not None and _singles_fast(values, keys, cols, limits):
        return True
    docs = []
    for data in values:
        if data is None or len(data) > limits.max_bytes:
            return False
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if type(doc) is not dict:
            return False
        docs.append(doc)
    where = list(range(len(docs)))
    if isinstance(cols, PredictionColumns):
        return _predictions_whole(docs, cols, where, limits, list(keys))
    return _feedback_whole(docs, cols, where, limits, list(keys))


def _singles_fast(values: Sequence[bytes | None], keys: Sequence[Key],
                  cols: PredictionColumns | FeedbackColumns, limits: ParseLimits) -> bool:
    """:func:`parse_singles` through the compiled reader (every message plainly valid,
    keyed, within ``max_bytes``), or False with nothing appended."""
    values = list(values)
    if None in values or max(map(len, values), default=0) > limits.max_bytes:  # type: ignore[arg-type]
        return False
    read = (_batchparse.prediction_singles if isinstance(cols, PredictionColumns)
            else _batchparse.feedback_singles)
    got = _epoch(read(values, list(keys), limits.max_id_chars, limits.max_features,
                      *_ts_bounds(limits)), limits)
    if got is None:
        return False
    message = list(range(len(values)))
    if isinstance(cols, PredictionColumns):
        _append_predictions(cols, got, message, values)
    else:
        _append_feedback(cols, got, message, values)
    return True


def parse_control(data: bytes | None, kind: str, out: list[dict[str, Any]],
                  limits: ParseLimits = DEFAULT_LIMITS, key: Key = UNCHECKED,
                  approvers: Collection[str] = ()) -> list[DeadLetter]:
    """An ``ml.deployments`` (``kind="deployment"``) or ``ml.deploy.approvals`` record.

    Valid records are appended to ``out`` normalised (``ts`` in epoch seconds).
    ``approvers`` (``canary.approvers``), when not empty, are the only ``approved_by``
    an approval may have; another one is dead-lettered.

    >>> out = []
    >>> parse_control(b'{"model": "m", "version": "v8", "action": "promote", '
    ...               b'"approved_by": "ana", "ts": 5}', "approval", out), out[0]["ts"]
    ([], 5.0)
    >>> parse_control(b'{"model": "m", "phase": "sideways", "stable_version": "v7", '
    ...               b'"ts": 5}', "deployment", out)[0].reason
    "bad_value: 'phase' must be one of started, step, paused, promoted, rolled_back, aborted"
    >>> parse_control(b'{"model": "m", "version": "v8", "action": "promote", '
    ...               b'"approved_by": "eve", "ts": 5}', "approval", out, approvers=["ana"]
    ...               )[0].reason
    "bad_value: 'approved_by' 'eve' is not an allowed approver"
    """
    if kind == "deployment":
        def add(ev: Any, i: int) -> None:
            out.append(_add_deployment(ev, limits, key))
    else:
        allowed = frozenset(approvers)

        def add(ev: Any, i: int) -> None:
            out.append(_add_approval(ev, limits, key, allowed))
    return _parse(data, add, replace(limits, max_events=1000))


def _control_header(ev: Any, limits: ParseLimits, key: Key) -> dict[str, Any]:
    model = _required(_object(ev), "model", limits)
    _keyed(key, model, "model")
    return {**ev, "model": model, "ts": _ts(ev, limits)}


def _one_of(ev: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    v = _required(ev, name)
    if v not in allowed:
        raise Invalid(f"bad_value: '{name}' must be one of {', '.join(allowed)}")
    return v


def _add_deployment(ev: Any, limits: ParseLimits, key: Key) -> dict[str, Any]:
    rec = _control_header(ev, limits, key)
    rec["phase"] = _one_of(ev, "phase", DEPLOYMENT_PHASES)
    rec["stable_version"] = _required(ev, "stable_version", limits)
    rec["canary_version"] = _string(ev, "canary_version", False, limits)
    rec["environment"] = _string(ev, "environment", False, limits)
    if ev.get("traffic_percent") is not None:
        pct = _number(ev, "traffic_percent")
        if not 0 <= pct <= 100:
            raise Invalid(f"bad_value: 'traffic_percent' {pct} is not within 0-100")
        rec["traffic_percent"] = pct
    elif rec["canary_version"] is not None and rec["phase"] in ("started", "step"):
        raise Invalid("missing_field: 'traffic_percent' is required with a canary_version")
    return rec


def _add_approval(ev: Any, limits: ParseLimits, key: Key,
                  approvers: frozenset[str] = frozenset()) -> dict[str, Any]:
    rec = _control_header(ev, limits, key)
    rec["version"] = _required(ev, "version", limits)
    rec["action"] = _one_of(ev, "action", APPROVAL_ACTIONS)
    rec["approved_by"] = _required(ev, "approved_by", limits)
    if approvers and rec["approved_by"] not in approvers:
        raise Invalid(f"bad_value: 'approved_by' {rec['approved_by']!r} is not an allowed "
                      f"approver")
    return rec




def parse_pipeline(data: bytes | None, out: list[dict[str, Any]],
                   limits: ParseLimits = DEFAULT_LIMITS, key: Key = UNCHECKED
                   ) -> list[DeadLetter]:
    """``ml.pipeline`` events, appended to ``out`` normalised (``ts`` in epoch seconds).

    >>> out = []
    >>> parse_pipeline(b'{"event_id": "e1", "ts": 5, "pipeline": "p", "kind": "training", '
    ...                b'"run_id": "r1", "status": "started"}', out), out[0]["ts"]
    ([], 5.0)
    >>> parse_pipeline(b'{"event_id": "e1", "ts": 5, "pipeline": "p", "kind": "training", '
    ...                b'"run_id": "r1", "status": "done"}', out)[0].reason
    "bad_value: 'status' must be one of started, heartbeat, succeeded, failed"
    """
    return _parse(data, lambda ev, i: out.append(
        {**_pipeline_event(ev, limits, key), "element": i, "raw": ev}), limits)


MAX_NAMED_NUMBERS = 1_000  # entries of ``resources`` and ``metrics``


def _numbers(ev: dict[str, Any], name: str, limits: ParseLimits) -> dict[str, float] | None:
    v = ev.get(name)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise Invalid(f"bad_type: '{name}' must be an object of numbers")
    if len(v) > MAX_NAMED_NUMBERS:
        raise Invalid(f"bad_value: '{name}' has {len(v)} entries (at most {MAX_NAMED_NUMBERS})")
    for k, x in v.items():
        if len(k) > limits.max_id_chars:
            raise Invalid(f"bad_value: a name in '{name}' is {len(k)} characters long "
                          f"(at most {limits.max_id_chars})")
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise Invalid(f"bad_type: '{name}.{k[:64]}' must be a number")
        if not math.isfinite(x):
            raise Invalid(f"not_finite: '{name}.{k[:64]}' is {x}")
    return {str(k): float(x) for k, x in v.items()}


def _error_text(v: Any) -> str | None:
    """A run's ``error`` text (the first 1,000 characters). Not a string (an object, a
    number): its JSON text, rather than losing what went wrong with the run.

    >>> _error_text("OOM"), _error_text({"code": 137}), _error_text(None)
    ('OOM', '{"code":137}', None)
    """
    if v is None or isinstance(v, str):
        return v if v is None else v[:1000]
    try:
        return orjson.dumps(v).decode()[:1000]
    except TypeError:  # nested past orjson's writer's limit
        return f"(an error of type {type(v).__name__}, too deeply nested to show)"


def _pipeline_event(ev: Any, limits: ParseLimits, key: Key) -> dict[str, Any]:
    pipeline = _required(_object(ev), "pipeline", limits)
    _keyed(key, pipeline, "pipeline")
    rec: dict[str, Any] = {
        "event_id": _required(ev, "event_id", limits), "ts": _ts(ev, limits),
        "pipeline": pipeline, "kind": _one_of(ev, "kind", PIPELINE_KINDS),
        "run_id": _required(ev, "run_id", limits),
        "status": _one_of(ev, "status", RUN_STATUSES),
        "model": _string(ev, "model", False, limits),
        "version": _string(ev, "version", False, limits),
        "error": _error_text(ev.get("error")),
        "resources": _numbers(ev, "resources", limits),
        "metrics": _numbers(ev, "metrics", limits),
    }
    for name, amount in (rec["resources"] or {}).items():
        if amount < 0:  # an amount used so far (CONTRACT.md)
            raise Invalid(f"bad_value: 'resources.{name[:64]}' {amount:g} is negative")
    if ev.get("duration_s") is not None:
        d = _number(ev, "duration_s")
        if d < 0:
            raise Invalid(f"bad_value: 'duration_s' {d} is negative")
        rec["duration_s"] = d
    q = ev.get("quota")
    if q is not None:
        if not isinstance(q, dict):
            raise Invalid("bad_type: 'quota' must be an object")
        limit = _number(q, "limit")
        if limit <= 0:
            raise Invalid(f"bad_value: 'quota.limit' {limit} must be positive")
        if _number(q, "used") < 0:
            raise Invalid(f"bad_value: 'quota.used' {_number(q, 'used'):g} is negative")
        rec["quota"] = {"pool": _required(q, "pool", limits),
                        "resource": _required(q, "resource", limits),
                        "used": _number(q, "used"), "limit": limit}
    if isinstance(ev.get("profile"), dict):
        rec["profile"] = ev["profile"]  # a validation run's data profile (optional)
    return rec


@dataclass(slots=True)
class MetricColumns:
    """Valid ``ml.metrics`` points, column by column."""

    source: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    element: list[int] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)


def parse_metrics(data: bytes | None, cols: MetricColumns, limits: ParseLimits = DEFAULT_LIMITS,
                  key: Key = UNCHECKED) -> list[DeadLetter]:
    """``ml.metrics`` points: ``source``, ``metric``, ``ts``, ``value`` (``labels`` unused).

    >>> cols = MetricColumns()
    >>> parse_metrics(b'[{"source": "api", "metric": "cpu", "ts": 1, "value": 0.5}]', cols)
    []
    >>> cols.value
    [0.5]
    """
    return _parse(data, lambda ev, i: _add_metric(ev, cols, i, limits, key), limits)


def _add_metric(ev: Any, cols: MetricColumns, element: int, limits: ParseLimits,
                key: Key) -> None:
    source = _required(_object(ev), "source", limits)
    _keyed(key, source, "source")
    ts = _ts(ev, limits)
    metric, value = _required(ev, "metric", limits), _number(ev, "value")
    cols.source.append(source)
    cols.metric.append(metric)
    cols.ts.append(ts)
    cols.value.append(value)
    cols.element.append(element)
    cols.raw.append(ev)


_WHOLE_FOLLOWS: Final = "(element not re-encodable; the whole message follows) "


def _element_text(ev: Any, data: bytes | None = None, whole_in: int | None = None) -> str:
    """One element of a batch as JSON text, encoded again from its parsed form.

    An element orjson cannot write back (nesting past its writer's limit) is
    given as the whole message's text, which holds it; once per message: with
    ``whole_in``, the element whose dead letter has it already is named instead
    (a 1 MB message of such elements would otherwise be copied into each).
    """
    try:
        return orjson.dumps(ev).decode()
    except TypeError:
        if whole_in is not None:
            return (f"(element not re-encodable; the whole message is in the dead letter "
                    f"of element {whole_in})")
        return _WHOLE_FOLLOWS + (raw_text(data) if data is not None else "")
