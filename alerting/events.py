"""Contract shapes of what Sentinelle emits: alerts (PagerDuty Events v2) and times.

See ``../shared/CONTRACT.md``, section ``ml.alerts``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from detectors.base import Signal

__all__ = ["alert_event", "rfc3339", "GROUP_OF_CHECK"]

GROUP_OF_CHECK = {
    "feature_drift": "serving", "training_serving_skew": "serving",
    "prediction_drift": "serving", "label_drift": "serving",
    "performance_degradation": "serving", "data_quality": "data",
    "latency_slo": "serving", "error_rate": "serving", "outage": "serving",
    "metric_anomaly": "serving", "pipeline_failure": "training",
    "pipeline_duration_anomaly": "training", "pipeline_stalled": "training",
    "quota_exhaustion": "training", "canary_regression": "deployment",
    "validation_gate": "validation",
}

MAX_SUMMARY = 1024


def rfc3339(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds, as every timestamp Sentinelle emits.

    >>> rfc3339(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _details(details: dict[str, Any]) -> dict[str, Any]:
    out = dict(details)
    window = out.get("window")
    if isinstance(window, dict) and isinstance(window.get("start"), (int, float)):
        out["window"] = {**window, "start": rfc3339(window["start"]), "end": rfc3339(window["end"])}
    return out


def alert_event(signal: Signal, action: str, extra: dict[str, Any] | None = None,
                severity: str | None = None) -> dict[str, Any]:
    """The ``ml.alerts`` message for ``signal`` with ``event_action`` = ``action``."""
    source = signal.model if signal.version is None else f"{signal.model}@{signal.version}"
    summary = signal.summary if action == "trigger" else f"RESOLVED: {signal.summary}"
    return {
        "event_action": action,
        "dedup_key": signal.key,
        "payload": {
            "summary": summary[:MAX_SUMMARY],
            "source": source,
            "severity": severity or signal.severity,
            "timestamp": rfc3339(signal.timestamp),
            "component": signal.model,
            "group": GROUP_OF_CHECK.get(signal.check, "serving"),
            "class": signal.check,
            "custom_details": {**_details(signal.details), **(extra or {})},
        },
    }
