"""JSON Schemas of the wire messages of ``CONTRACT.md``, for producers and consumers.

One schema per message, generated (pydantic) from typed shapes: the inputs are
declared here, the outputs come from :mod:`detectors.contract`, the same
shapes Sentinelle builds its alerts, commands, statistics and dead letters
with. Extra fields are allowed everywhere (the contract lets producers add
optional fields freely). The input schemas accept a message as the topic
does: one event, or the batch form (an array of 1 to 10,000 events).

A schema says what is *well-formed*; Sentinelle checks a little more on its
own (an identifier's length and characters, an event time within its bounds,
the message key): a message the schema rejects is always dead-lettered, one it
accepts is folded unless those checks say otherwise (``tests/test_schemas.py``
holds the parser to that).

>>> from sentinelle.schemas import schema, MESSAGES
>>> sorted(MESSAGES)[:3]
['ml.alerts', 'ml.deadletter', 'ml.deploy.approvals']
>>> schema("ml.predictions")["anyOf"][1]["maxItems"]
10000

``sentinelle schema ml.predictions`` prints one; ``sentinelle schema`` all of them.
"""

from __future__ import annotations

from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs it on Python 3.11
)

from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict

from detectors.contract import (
    MAX_BATCH_EVENTS,
    Alert,
    Command,
    DeadLetterRecord,
    WindowStatsRecord,
)

__all__ = ["MESSAGES", "schema", "schemas"]

Id = Annotated[str, Field(min_length=1, max_length=256)]
Time = Annotated[float | str, Field(description="RFC 3339 with an offset, or epoch seconds")]
NonNegative = Annotated[float, Field(ge=0)]
Scalar = float | str | bool


class Prediction(TypedDict):
    """``ml.predictions``: one served prediction."""

    event_id: Id
    ts: Time
    model: Id
    version: Id
    latency_ms: NonNegative
    cohort: NotRequired[Literal["stable", "canary"]]
    status: NotRequired[Literal["ok", "error", "timeout"]]
    features: NotRequired[dict[str, Scalar | None]]
    prediction: NotRequired[Scalar]
    error: NotRequired[str]


class Feedback(TypedDict):
    """``ml.feedback``: ground truth arriving later."""

    event_id: Id
    ts: Time
    model: Id
    version: Id
    label: Scalar


class Quota(TypedDict):
    pool: Id
    resource: Id
    used: NonNegative
    limit: NotRequired[NonNegative]


class PipelineEvent(TypedDict):
    """``ml.pipeline``: one step of a pipeline run."""

    event_id: Id
    ts: Time
    pipeline: Id
    kind: Literal["data", "training", "validation", "serving"]
    run_id: Id
    status: Literal["started", "heartbeat", "succeeded", "failed"]
    model: NotRequired[Id]
    version: NotRequired[Id]
    duration_s: NotRequired[NonNegative]
    resources: NotRequired[dict[str, NonNegative]]
    quota: NotRequired[Quota]
    metrics: NotRequired[dict[str, float]]
    error: NotRequired[str]


class MetricPoint(TypedDict):
    """``ml.metrics``: one point of a numeric series."""

    source: Id
    metric: Id
    ts: Time
    value: float
    labels: NotRequired[dict[str, str]]


class Deployment(TypedDict):
    """``ml.deployments``: what a deployment controller applied."""

    model: Id
    stable_version: Id
    phase: Literal["started", "step", "paused", "promoted", "rolled_back", "aborted"]
    ts: Time
    canary_version: NotRequired[Id]
    traffic_percent: NotRequired[Annotated[float, Field(ge=0, le=100)]]
    environment: NotRequired[str]
    command_id: NotRequired[str]
    weights: NotRequired[dict[str, Annotated[float, Field(ge=0, le=100)]]]


class Approval(TypedDict):
    """``ml.deploy.approvals``: a person approves a rollout step."""

    model: Id
    version: Id
    action: Literal["promote", "rollback"]
    approved_by: Id
    ts: Time


def _batchable(event: Any) -> Any:
    """One event, or the batch form: an array of 1 to 10,000 of them."""
    return event | Annotated[list[event], Field(min_length=1,
                                                max_length=MAX_BATCH_EVENTS)]


#: Topic (the default name) -> the shape of one of its messages.
MESSAGES: dict[str, Any] = {
    "ml.predictions": _batchable(Prediction),
    "ml.feedback": _batchable(Feedback),
    "ml.pipeline": _batchable(PipelineEvent),
    "ml.metrics": _batchable(MetricPoint),
    "ml.deployments": Deployment,
    "ml.deploy.approvals": Approval,
    "ml.alerts": Alert,
    "ml.deploy.commands": Command,
    "ml.stats": WindowStatsRecord,
    "ml.deadletter": DeadLetterRecord,
}


def schema(topic: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one message of ``topic`` (a default name)."""
    if topic not in MESSAGES:
        raise KeyError(f"no schema for {topic!r}; one of {', '.join(sorted(MESSAGES))}")
    out = TypeAdapter(MESSAGES[topic]).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **out,
            "title": f"{topic} message"}


def schemas() -> dict[str, dict[str, Any]]:
    """Every message's schema, by topic."""
    return {topic: schema(topic) for topic in MESSAGES}
