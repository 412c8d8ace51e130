"""Decode and validate contract messages; whatever fails becomes a dead letter.

Pure functions, no Kafka: a message's bytes go in, valid events (appended to
column lists, ready for a Polars frame) and :class:`DeadLetter` records come out.
A message may hold one event (a JSON object) or a batch (a JSON array of
objects, see ``../shared/CONTRACT.md``); in a batch each bad element is
dead-lettered alone, with its index, and the others are used.

Reasons are ``code: detail`` strings; the codes are stable and counted:
``oversized``, ``not_json``, ``not_object``, ``missing_field``, ``bad_type``,
``not_finite``, ``negative_latency``, ``bad_timestamp``, ``bad_value`` and, from
the window stage, ``late``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

__all__ = ["DeadLetter", "PredictionColumns", "FeedbackColumns", "parse_predictions",
           "parse_feedback", "parse_control", "parse_pipeline", "parse_metrics", "parse_time",
           "raw_text"]

STATUSES = frozenset({"ok", "error", "timeout"})
MAX_RAW_CHARS = 65_536


class Invalid(ValueError):
    """One event broke the contract; ``args[0]`` is the dead-letter reason."""


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
                               "reason": self.reason, "raw": self.raw}
        if len(self.raw) > max_raw:
            rec.update(raw=self.raw[:max_raw], raw_truncated=True, raw_length=len(self.raw))
        if self.index is not None:
            rec["index"] = self.index
        return rec


def raw_text(data: bytes) -> str:
    """The original bytes as text, or base64 when they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")


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
    features: list[dict[str, Any] | None] = field(default_factory=list)
    prediction: list[Any] = field(default_factory=list)
    # For each event: which message (index into the caller's message list) and
    # which element of it, so a late event can be dead-lettered with its origin.
    message: list[int] = field(default_factory=list)
    element: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)


def parse_time(value: Any, name: str = "ts") -> float:
    """Contract time (RFC 3339 with offset, or epoch seconds) to epoch seconds.

    >>> parse_time("2026-11-27T07:00:00.123Z")
    1795762800.123
    >>> parse_time(1795762800.5)
    1795762800.5
    """
    if isinstance(value, bool):
        raise Invalid(f"bad_type: '{name}' must be an RFC 3339 string or epoch seconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise Invalid(f"not_finite: '{name}' is {value}")
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(f"bad_timestamp: '{name}' {value[:64]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise Invalid(f"bad_timestamp: '{name}' {value[:64]!r} has no UTC offset")
        return dt.timestamp()
    raise Invalid(f"bad_type: '{name}' must be an RFC 3339 string or epoch seconds")


def _string(ev: dict[str, Any], name: str, required: bool = True) -> str | None:
    v = ev.get(name)
    if v is None:
        if required:
            raise Invalid(f"missing_field: '{name}' is required")
        return None
    if not isinstance(v, str) or not v:
        raise Invalid(f"bad_type: '{name}' must be a non-empty string")
    return v


def _required(ev: dict[str, Any], name: str) -> str:
    v = _string(ev, name)
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


def _ts(ev: dict[str, Any]) -> float:
    """The event's required ``ts``, in epoch seconds."""
    if ev.get("ts") is None:
        raise Invalid("missing_field: 'ts' is required")
    return parse_time(ev["ts"])


def _header(ev: Any) -> tuple[str, float, str, str]:
    """``event_id``, ``ts``, ``model`` and ``version``: what every input event has."""
    event_id = _required(_object(ev), "event_id")
    return event_id, _ts(ev), _required(ev, "model"), _required(ev, "version")


def _add_prediction(ev: Any, cols: PredictionColumns, message: int, element: int) -> None:
    event_id, ts, model, version = _header(ev)
    latency = _number(ev, "latency_ms")
    if latency < 0:
        raise Invalid(f"negative_latency: 'latency_ms' is {latency}")
    cohort = _string(ev, "cohort", required=False) or "stable"
    status = _string(ev, "status", required=False) or "ok"
    if status not in STATUSES:
        raise Invalid(f"bad_value: 'status' must be one of ok, error, timeout; got {status[:32]!r}")
    features = ev.get("features")
    if features is not None and not isinstance(features, dict):
        raise Invalid("bad_type: 'features' must be an object")
    prediction = ev.get("prediction")
    if prediction is not None:
        if not isinstance(prediction, (str, int, float)):  # bool is an int
            raise Invalid("bad_type: 'prediction' must be a number, string or bool")
        if isinstance(prediction, float) and not math.isfinite(prediction):
            raise Invalid(f"not_finite: 'prediction' is {prediction}")
    cols.model.append(model)
    cols.version.append(version)
    cols.cohort.append(cohort)
    cols.ts.append(ts)
    cols.latency_ms.append(latency)
    cols.error.append(status != "ok")
    cols.event_id.append(event_id)
    cols.features.append(features)
    cols.prediction.append(prediction)
    cols.message.append(message)
    cols.element.append(element)


def parse_predictions(data: bytes | None, cols: PredictionColumns, message: int = 0,
                      max_bytes: int = 1_000_000, max_events: int = 10_000) -> list[DeadLetter]:
    """Append the valid events of one message to ``cols``; return its dead letters.

    >>> cols = PredictionColumns()
    >>> bad = parse_predictions(b'[{"event_id": "a", "ts": 1, "model": "m", "version": "v1",'
    ...                         b' "latency_ms": 12}, {"event_id": "b"}]', cols)
    >>> len(cols), [(d.index, d.reason) for d in bad]
    (1, [(1, "missing_field: 'ts' is required")])
    """
    return _parse(data, lambda ev, i: _add_prediction(ev, cols, message, i), max_bytes,
                  max_events)


def parse_feedback(data: bytes | None, cols: FeedbackColumns, message: int = 0,
                   max_bytes: int = 1_000_000, max_events: int = 10_000) -> list[DeadLetter]:
    """The same for ``ml.feedback``: ``event_id``, ``ts``, ``model``, ``version``, ``label``.

    >>> cols = FeedbackColumns()
    >>> parse_feedback(b'{"event_id": "a", "ts": 1, "model": "m", "version": "v1", "label": 1}',
    ...                cols), cols.label
    ([], [1])
    """
    return _parse(data, lambda ev, i: _add_feedback(ev, cols), max_bytes,
                  max_events)


def _parse(data: bytes | None, add: Callable[[Any, int], None], max_bytes: int,
           max_events: int) -> list[DeadLetter]:
    if data is None:
        return [DeadLetter("not_json: empty message (no value)", "")]
    if len(data) > max_bytes:
        return [DeadLetter(f"oversized: {len(data)} bytes > {max_bytes}", raw_text(data))]
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson rejects NaN/Infinity literals; the standard library reads them, so
        # such an event is judged field by field and its reason is ``not_finite``.
        try:
            doc = json.loads(data)
        except ValueError:
            return [DeadLetter(f"not_json: {exc}", raw_text(data))]
    if isinstance(doc, dict):
        try:
            add(doc, 0)
        except Invalid as exc:
            return [DeadLetter(str(exc), raw_text(data))]
        return []
    if not isinstance(doc, list):
        return [DeadLetter(f"not_object: expected an object or an array of objects, got "
                           f"{type(doc).__name__}", raw_text(data))]
    if len(doc) > max_events:
        return [DeadLetter(f"oversized: batch of {len(doc)} events > {max_events}",
                           raw_text(data))]
    dead = []
    for i, ev in enumerate(doc):
        try:
            add(ev, i)
        except Invalid as exc:
            dead.append(DeadLetter(str(exc), _element_text(ev), index=i))
    return dead


@dataclass(slots=True)
class FeedbackColumns:
    """Valid feedback events (labels), column by column."""

    model: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    label: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)


def _add_feedback(ev: Any, cols: FeedbackColumns) -> None:
    event_id, ts, model, version = _header(ev)
    label = ev.get("label")
    if label is None:
        raise Invalid("missing_field: 'label' is required")
    if not isinstance(label, (str, int, float)):
        raise Invalid("bad_type: 'label' must be a number, string or bool")
    if isinstance(label, float) and not math.isfinite(label):
        raise Invalid(f"not_finite: 'label' is {label}")
    cols.model.append(model)
    cols.version.append(version)
    cols.ts.append(ts)
    cols.event_id.append(event_id)
    cols.label.append(label)


PHASES = ("started", "step", "paused", "promoted", "rolled_back", "aborted")
APPROVAL_ACTIONS = ("promote", "rollback")


def parse_control(data: bytes | None, kind: str, out: list[dict[str, Any]],
                  max_bytes: int = 1_000_000) -> list[DeadLetter]:
    """An ``ml.deployments`` (``kind="deployment"``) or ``ml.deploy.approvals`` record.

    Valid records are appended to ``out`` normalised (``ts`` in epoch seconds).

    >>> out = []
    >>> parse_control(b'{"model": "m", "version": "v8", "action": "promote", '
    ...               b'"approved_by": "ana", "ts": 5}', "approval", out), out[0]["ts"]
    ([], 5.0)
    >>> parse_control(b'{"model": "m", "phase": "sideways", "stable_version": "v7", '
    ...               b'"ts": 5}', "deployment", out)[0].reason
    "bad_value: 'phase' must be one of started, step, paused, promoted, rolled_back, aborted"
    """
    add = _add_deployment if kind == "deployment" else _add_approval
    return _parse(data, lambda ev, i: out.append(add(ev)), max_bytes, 1000)


def _control_header(ev: Any) -> dict[str, Any]:
    ts = _ts(_object(ev))
    return {**ev, "model": _required(ev, "model"), "ts": ts}


def _one_of(ev: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    v = _required(ev, name)
    if v not in allowed:
        raise Invalid(f"bad_value: '{name}' must be one of {', '.join(allowed)}")
    return v


def _add_deployment(ev: Any) -> dict[str, Any]:
    rec = _control_header(ev)
    rec["phase"] = _one_of(ev, "phase", PHASES)
    rec["stable_version"] = _required(ev, "stable_version")
    rec["canary_version"] = _string(ev, "canary_version", required=False)
    rec["environment"] = _string(ev, "environment", required=False)
    if ev.get("traffic_percent") is not None:
        pct = _number(ev, "traffic_percent")
        if not 0 <= pct <= 100:
            raise Invalid(f"bad_value: 'traffic_percent' {pct} is not within 0-100")
        rec["traffic_percent"] = pct
    elif rec["canary_version"] is not None and rec["phase"] in ("started", "step"):
        raise Invalid("missing_field: 'traffic_percent' is required with a canary_version")
    return rec


def _add_approval(ev: Any) -> dict[str, Any]:
    rec = _control_header(ev)
    rec["version"] = _required(ev, "version")
    rec["action"] = _one_of(ev, "action", APPROVAL_ACTIONS)
    rec["approved_by"] = _required(ev, "approved_by")
    return rec


KINDS = ("data", "training", "validation", "serving")
RUN_STATUSES = ("started", "heartbeat", "succeeded", "failed")


def parse_pipeline(data: bytes | None, out: list[dict[str, Any]], max_bytes: int = 1_000_000,
                   max_events: int = 10_000) -> list[DeadLetter]:
    """``ml.pipeline`` events, appended to ``out`` normalised (``ts`` in epoch seconds).

    >>> out = []
    >>> parse_pipeline(b'{"event_id": "e1", "ts": 5, "pipeline": "p", "kind": "training", '
    ...                b'"run_id": "r1", "status": "started"}', out), out[0]["ts"]
    ([], 5.0)
    >>> parse_pipeline(b'{"event_id": "e1", "ts": 5, "pipeline": "p", "kind": "training", '
    ...                b'"run_id": "r1", "status": "done"}', out)[0].reason
    "bad_value: 'status' must be one of started, heartbeat, succeeded, failed"
    """
    return _parse(data, lambda ev, i: out.append(_pipeline_event(ev)), max_bytes, max_events)


def _numbers(ev: dict[str, Any], name: str) -> dict[str, float] | None:
    v = ev.get(name)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise Invalid(f"bad_type: '{name}' must be an object of numbers")
    for k, x in v.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise Invalid(f"bad_type: '{name}.{k}' must be a number")
        if not math.isfinite(x):
            raise Invalid(f"not_finite: '{name}.{k}' is {x}")
    return {str(k): float(x) for k, x in v.items()}


def _pipeline_event(ev: Any) -> dict[str, Any]:
    ts = _ts(_object(ev))
    rec: dict[str, Any] = {
        "event_id": _required(ev, "event_id"), "ts": ts,
        "pipeline": _required(ev, "pipeline"), "kind": _one_of(ev, "kind", KINDS),
        "run_id": _required(ev, "run_id"), "status": _one_of(ev, "status", RUN_STATUSES),
        "model": _string(ev, "model", required=False),
        "version": _string(ev, "version", required=False),
        "error": ev.get("error") if isinstance(ev.get("error"), str) else None,
        "resources": _numbers(ev, "resources"), "metrics": _numbers(ev, "metrics"),
    }
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
        rec["quota"] = {"pool": _required(q, "pool"), "resource": _required(q, "resource"),
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

    def __len__(self) -> int:
        return len(self.ts)


def parse_metrics(data: bytes | None, cols: MetricColumns, max_bytes: int = 1_000_000,
                  max_events: int = 10_000) -> list[DeadLetter]:
    """``ml.metrics`` points: ``source``, ``metric``, ``ts``, ``value`` (``labels`` unused).

    >>> cols = MetricColumns()
    >>> parse_metrics(b'[{"source": "api", "metric": "cpu", "ts": 1, "value": 0.5}]', cols)
    []
    >>> cols.value
    [0.5]
    """
    return _parse(data, lambda ev, i: _add_metric(ev, cols), max_bytes, max_events)


def _add_metric(ev: Any, cols: MetricColumns) -> None:
    ts = _ts(_object(ev))
    source, metric, value = _required(ev, "source"), _required(ev, "metric"), _number(ev, "value")
    cols.source.append(source)
    cols.metric.append(metric)
    cols.ts.append(ts)
    cols.value.append(value)


def _element_text(ev: Any) -> str:
    try:
        return orjson.dumps(ev).decode()
    except TypeError:  # NaN/inf read by the fallback parser: orjson writes them as null
        return json.dumps(ev)
