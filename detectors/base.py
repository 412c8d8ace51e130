"""What every detector returns: a small immutable :class:`Signal`.

A detector looks at one window (or one instant, for silence) and says whether
its condition holds *now*. It does not remember whether it already said so:
turning a stream of signals into one trigger and one resolve is the alert
manager's job (:mod:`alerting.manager`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detectors.contract import Severity

__all__ = ["Signal"]


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
    severity: Severity
    summary: str
    timestamp: float
    model: str
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
