"""What every detector returns: a small immutable :class:`Signal`.

A detector looks at one window (or one instant, for silence) and says whether
its condition holds *now*. It does not remember whether it already said so:
turning a stream of signals into one trigger and one resolve is the alert
manager's job (:mod:`alerting.manager`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Signal", "dedup_key"]

SEVERITIES = ("critical", "error", "warning", "info")


@dataclass(frozen=True, slots=True)
class Signal:
    """The state of one condition at one moment.

    ``active`` is True while the condition holds. ``timestamp`` is epoch seconds:
    event time (the end of the window that decided) for window checks, wall
    clock for checks about silence.
    """

    check: str
    key: str
    active: bool
    severity: str
    summary: str
    timestamp: float
    model: str
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def dedup_key(check: str, model: str, version: str | None = None, cohort: str = "stable",
              *parts: str) -> str:
    """Stable alert identity: ``check:model[:version[@cohort]][:part…]``.

    The cohort is spelled out only when it is not ``stable``, so the usual key
    reads like the contract's example (``latency_slo:fraud-scorer:v7:p99``).

    >>> dedup_key("latency_slo", "fraud-scorer", "v8", "canary", "p99")
    'latency_slo:fraud-scorer:v8@canary:p99'
    >>> dedup_key("outage", "fraud-scorer")
    'outage:fraud-scorer'
    """
    head = [check, model]
    if version is not None:
        head.append(version if cohort == "stable" else f"{version}@{cohort}")
    return ":".join([*head, *parts])
