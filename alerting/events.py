"""An alert, as ``ml.alerts`` carries it: a PagerDuty Events v2 event built from a signal.

The shape is :class:`detectors.contract.Alert` (``../shared/CONTRACT.md``,
section ``ml.alerts``); every alert Sentinelle publishes is built here, by the
alert manager.
"""

from __future__ import annotations

from typing import Any, cast

from detectors.base import Signal
from detectors.contract import (
    GROUP_OF_CLASS,
    MAX_SUMMARY_CHARS,
    Alert,
    AlertClass,
    EventAction,
    Severity,
    rfc3339,
)

__all__ = ["alert_event"]


def _details(details: dict[str, Any]) -> dict[str, Any]:
    out = dict(details)
    window = out.get("window")
    if isinstance(window, dict) and isinstance(window.get("start"), (int, float)):
        out["window"] = {**window, "start": rfc3339(window["start"]), "end": rfc3339(window["end"])}
    return out


def alert_event(signal: Signal, action: EventAction, extra: dict[str, Any] | None = None,
                severity: Severity | None = None) -> dict[str, Any]:
    """The ``ml.alerts`` message for ``signal`` with ``event_action`` = ``action``.

    Built as the contract's :class:`~detectors.contract.Alert` (so its keys and
    types are checked against it), handed on as a plain dict.
    """
    source = signal.model if signal.version is None else f"{signal.model}@{signal.version}"
    summary = signal.summary if action == "trigger" else f"RESOLVED: {signal.summary}"
    alert: Alert = {
        "event_action": action,
        "dedup_key": signal.key,
        "payload": {
            "summary": summary[:MAX_SUMMARY_CHARS],
            "source": source,
            "severity": severity or signal.severity,
            "timestamp": rfc3339(signal.timestamp),
            "component": signal.model,
            "group": GROUP_OF_CLASS.get(signal.check, "serving"),
            "class": cast(AlertClass, signal.check),
            "custom_details": {**_details(signal.details), **(extra or {})},
        },
    }
    return cast(dict[str, Any], alert)
