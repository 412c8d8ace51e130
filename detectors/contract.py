"""The wire contract in code: one copy of each name, shape and identifier of ``CONTRACT.md``.

Producers, alert bridges and deployment controllers outside this repository
code against ``../shared/CONTRACT.md``; inside it, whatever reads or writes the
wire takes its vocabulary from here: the enumerations, the identifiers that
must stay stable (``dedup_key``, ``command_id``), and the shapes of what
Sentinelle emits. The module is data and small pure functions, with no I/O, and
it sits in the lowest layer (``detectors/``) so that every layer above shares
this one copy: the detectors name their alerts with it, the alert manager
shapes them, the parser checks inputs against it, the rollout policy builds
commands with it.

>>> dedup_key("latency_slo", "fraud-scorer", "v7", "stable", "p99")
'latency_slo:fraud-scorer:v7:p99'
>>> command_id("rollback", "fraud-scorer", "v8", 5)
'rollback:fraud-scorer:v8:5'
>>> GROUP_OF_CLASS["canary_regression"], SEVERITY_RANK["critical"]
('deployment', 3)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import (
    Any,
    Final,
    Literal,
    NotRequired,  # pydantic reads them (schemas)
    get_args,
)

from typing_extensions import TypedDict

__all__ = [
    "Severity", "SEVERITIES", "SEVERITY_RANK", "AlertClass", "ALERT_CLASSES", "Group",
    "GROUP_OF_CLASS", "EventAction", "CommandAction", "COMMAND_ACTIONS",
    "PREDICTION_STATUSES", "COHORTS", "PIPELINE_KINDS", "RUN_STATUSES", "DEPLOYMENT_PHASES",
    "APPROVAL_ACTIONS", "DEFAULT_BOOTSTRAP", "MAX_SUMMARY_CHARS", "MAX_ALERT_BYTES",
    "MAX_BATCH_EVENTS", "MAX_MESSAGE_BYTES", "dedup_key", "command_id", "rfc3339",
    "Alert", "AlertPayload", "Command", "WindowStatsRecord", "DeadLetterRecord",
]

# -- enumerations ---------------------------------------------------------------------

Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
#: Higher is more urgent (what inhibition and escalation compare).
SEVERITY_RANK: Final[dict[str, int]] = {s: len(SEVERITIES) - 1 - i
                                        for i, s in enumerate(SEVERITIES)}

AlertClass = Literal[
    "feature_drift", "training_serving_skew", "prediction_drift", "label_drift",
    "performance_degradation", "data_quality", "latency_slo", "error_rate", "outage",
    "metric_anomaly", "pipeline_failure", "pipeline_duration_anomaly", "pipeline_stalled",
    "quota_exhaustion", "canary_regression", "validation_gate"]
ALERT_CLASSES: Final[tuple[AlertClass, ...]] = get_args(AlertClass)

Group = Literal["serving", "data", "training", "validation", "deployment"]
GROUP_OF_CLASS: Final[dict[str, Group]] = {
    "feature_drift": "serving", "training_serving_skew": "serving",
    "prediction_drift": "serving", "label_drift": "serving",
    "performance_degradation": "serving", "data_quality": "data",
    "latency_slo": "serving", "error_rate": "serving", "outage": "serving",
    "metric_anomaly": "serving", "pipeline_failure": "training",
    "pipeline_duration_anomaly": "training", "pipeline_stalled": "training",
    "quota_exhaustion": "training", "canary_regression": "deployment",
    "validation_gate": "validation",
}

EventAction = Literal["trigger", "resolve"]
CommandAction = Literal["rollback", "promote", "pause"]
COMMAND_ACTIONS: Final[tuple[CommandAction, ...]] = get_args(CommandAction)

PREDICTION_STATUSES: Final = ("ok", "error", "timeout")
COHORTS: Final = ("stable", "canary")
PIPELINE_KINDS: Final = ("data", "training", "validation", "serving")
RUN_STATUSES: Final = ("started", "heartbeat", "succeeded", "failed")
DEPLOYMENT_PHASES: Final = ("started", "step", "paused", "promoted", "rolled_back", "aborted")
APPROVAL_ACTIONS: Final = ("promote", "rollback")

# -- bounds the contract states -------------------------------------------------------

MAX_SUMMARY_CHARS: Final = 1024          # an alert's payload.summary
MAX_ALERT_BYTES: Final = 512 * 1024      # one ml.alerts message
MAX_BATCH_EVENTS: Final = 10_000         # events in one batch message
MAX_MESSAGE_BYTES: Final = 1_000_000     # one batch message

#: Where ``sentinelle broker`` listens, and every command looks when told nothing else.
DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9092"

# -- identifiers ----------------------------------------------------------------------


def dedup_key(check: str, subject: str, version: str | None = None, cohort: str = "stable",
              *parts: str) -> str:
    """Stable alert identity: ``check:subject[:version[@cohort]][:part…]``.

    ``subject`` is the model (or the pipeline, pool or metrics source the alert
    is about). The cohort is spelled out only when it is not ``stable``, so the
    usual key reads like the contract's example.

    >>> dedup_key("latency_slo", "fraud-scorer", "v8", "canary", "p99")
    'latency_slo:fraud-scorer:v8@canary:p99'
    >>> dedup_key("outage", "fraud-scorer"), dedup_key("pipeline_stalled", "etl", None, "stable",
    ...                                                 "run-7")
    ('outage:fraud-scorer', 'pipeline_stalled:etl:run-7')
    """
    head = [check, subject]
    if version is not None:
        head.append(version if cohort == "stable" else f"{version}@{cohort}")
    return ":".join([*head, *parts])


def command_id(action: str, model: str, version: str, step: int | str, rollout: int = 1,
               suffix: str | None = None) -> str:
    """Stable command identity: ``action:model:version:step[:r<rollout>][:suffix]``.

    The same decision always has the same id (a controller that sees it twice
    acts once), and the same step of a later rollout of the same version
    (``rollout`` > 1) has another one.

    >>> command_id("rollback", "m", "v8", 5, rollout=2), command_id("pause", "m", "v8",
    ...                                                             "validation")
    ('rollback:m:v8:5:r2', 'pause:m:v8:validation')
    """
    parts = [action, model, version, str(step)]
    if rollout > 1:
        parts.append(f"r{rollout}")
    if suffix:
        parts.append(suffix)
    return ":".join(parts)


def rfc3339(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds, as every timestamp Sentinelle emits.

    >>> rfc3339(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- what Sentinelle emits --------------------------------------------------------------


#: The ``payload`` of an alert (functional form: one of its keys is ``class``).
AlertPayload = TypedDict("AlertPayload", {
    "summary": str, "source": str, "severity": Severity, "timestamp": str,
    "component": str, "group": Group, "class": AlertClass, "custom_details": dict[str, Any],
})


class Alert(TypedDict):
    """An ``ml.alerts`` message: a PagerDuty Events API v2 event."""

    event_action: EventAction
    dedup_key: str
    payload: AlertPayload


class Command(TypedDict):
    """An ``ml.deploy.commands`` message."""

    command_id: str
    action: CommandAction
    model: str
    from_version: str
    to_version: str
    reason: str
    alert_dedup_keys: list[str]
    requires_approval: bool
    issued_at: str
    traffic_percent: NotRequired[int]
    environment: NotRequired[str]


class WindowStatsRecord(TypedDict):
    """An ``ml.stats`` message: one closed window of one series."""

    model: str
    version: str
    cohort: str
    window: dict[str, str]
    count: int
    errors: int
    error_rate: float
    slow: int
    latency_ms: dict[str, float | None]


class DeadLetterRecord(TypedDict):
    """An ``ml.deadletter`` message (``index``, ``raw_truncated`` and ``raw_length``
    are Sentinelle's optional additions)."""

    topic: str
    partition: int
    offset: int
    reason: str
    raw: str
    index: NotRequired[int]
    raw_truncated: NotRequired[bool]
    raw_length: NotRequired[int]
