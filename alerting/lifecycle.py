"""Alert lifecycle: one trigger when a condition starts, one resolve when it ends.

Detectors report the state of their condition on every window; the
:class:`AlertBook` remembers which ``dedup_key`` is firing and turns that stream
into contract events: a ``trigger`` the first time a key is active, nothing
while it stays active (a condition that persists for a hundred windows pages
once), and a ``resolve`` with the same key, carrying the trigger's severity and
a full payload, the first time it is inactive again. The book is plain data
(:meth:`to_dict`) so it is checkpointed with the rest of a model's state and a
worker that takes over neither re-triggers nor forgets a firing alert.
"""

from __future__ import annotations

from typing import Any

from alerting.events import alert_event, rfc3339
from detectors.base import Signal

__all__ = ["AlertBook"]


class AlertBook:
    """Firing alerts of one model, keyed by ``dedup_key``.

    >>> from detectors.base import Signal
    >>> book = AlertBook()
    >>> up = Signal("outage", "outage:m", True, "critical", "m down", 10.0, "m")
    >>> down = Signal("outage", "outage:m", False, "critical", "m back", 20.0, "m")
    >>> [e and e["event_action"] for e in (book.apply(up), book.apply(up), book.apply(down))]
    ['trigger', None, 'resolve']
    """

    def __init__(self) -> None:
        self._firing: dict[str, dict[str, Any]] = {}

    @property
    def firing(self) -> dict[str, dict[str, Any]]:
        return dict(self._firing)

    def apply(self, signal: Signal) -> dict[str, Any] | None:
        """The alert event ``signal`` causes, if any."""
        state = self._firing.get(signal.key)
        if signal.active and state is None:
            self._firing[signal.key] = {
                "since": signal.timestamp, "severity": signal.severity, "check": signal.check,
                "version": signal.version, "summary": signal.summary,
            }
            return alert_event(signal, "trigger")
        if not signal.active and state is not None:
            del self._firing[signal.key]
            return alert_event(signal, "resolve", severity=state["severity"],
                               extra={"firing_since": rfc3339(state["since"]),
                                      "trigger_summary": state["summary"]})
        return None

    def resolve_where(self, reason: str, now: float, model: str,
                      version: str | None = None) -> list[dict[str, Any]]:
        """Resolve every firing alert (of ``version``, if given): the series is gone."""
        out = []
        for key, st in list(self._firing.items()):
            if version is not None and st["version"] != version:
                continue
            sig = Signal(st["check"], key, False, st["severity"], f"{key}: {reason}", now,
                         model, st["version"], {"reason": reason})
            event = self.apply(sig)
            if event is not None:
                out.append(event)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"firing": {key: dict(state) for key, state in self._firing.items()}}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._firing = {key: dict(state) for key, state in data["firing"].items()}
