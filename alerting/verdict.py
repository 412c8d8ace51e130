"""A canary version's verdict, as a rollout controller or a CI job asks for it.

Folded from what Sentinelle and the controller published, so anyone who reads
the topics gets the same answer (``sentinelle verdict wait``, and every
worker's ``GET /v1/canary/{model}/{version}``):

- ``ml.deploy.commands``: a ``rollback`` or ``pause`` of the version is
  ``fail``; a ``promote`` of it to 100 % (not waiting for an approval) is
  ``pass``; a lower step keeps it ``pending`` (its share is shown);
- ``ml.deployments``: ``rolled_back`` is ``fail``, ``promoted`` (or the
  version announced as the new stable one) is ``pass``; ``aborted`` (a
  person stopped it) is ``inconclusive``, and so is a rollout replaced by
  another canary of the model before any verdict; ``started`` begins a new
  rollout of the version: ``pending`` again;
- ``ml.alerts``: the alerts firing on the version, as evidence; a firing
  ``validation_gate`` marks the version's validation ``failed`` (its resolve:
  ``passed``);
- ``ml.deploy.approvals``: who approved the version's promotion (Flagger's
  ``confirm-promotion`` gate, :mod:`alerting.flagger`).

``pending``: no verdict yet. A record older than the latest verdict (by its
``issued_at`` or ``ts``) does not undo it, so replaying the topics in any
order of topics gives the same verdict.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["CanaryView", "Verdicts", "Verdict", "event_time", "EXIT_CODES"]

Verdict = Literal["pass", "fail", "inconclusive", "pending"]
#: ``sentinelle verdict wait``'s exit status per verdict (pending: it timed out).
EXIT_CODES: dict[str, int] = {"pass": 0, "fail": 1, "inconclusive": 2, "pending": 2}


def event_time(value: Any) -> float:
    """Epoch seconds of an RFC 3339 string or a number; 0 when neither.

    >>> event_time("1970-01-01T00:01:00.000Z"), event_time(5), event_time("soon")
    (60.0, 5.0, 0.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass
class CanaryView:
    """What is known of one canary version of one model."""

    model: str
    version: str
    verdict: Verdict = "pending"
    decided_at: float = 0.0                     # time of the record that decided it
    traffic_percent: float | None = None
    command: dict[str, Any] | None = None       # the latest command about the version
    deployment: dict[str, Any] | None = None    # the latest ml.deployments record about it
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # firing, by dedup_key
    validation: Literal["failed", "passed"] | None = None   # the validation gate's say
    approved_by: str | None = None              # a promote approval of the version

    def decide(self, verdict: Verdict, at: float) -> None:
        if self.verdict == "pending" or at >= self.decided_at:
            self.verdict, self.decided_at = verdict, at

    def as_dict(self) -> dict[str, Any]:
        evidence = (self.command or {}).get("evidence")
        return {"model": self.model, "version": self.version, "verdict": self.verdict,
                "traffic_percent": self.traffic_percent, "command": self.command,
                "deployment": self.deployment, "evidence": evidence,
                "validation": self.validation, "approved_by": self.approved_by,
                "alerts": sorted(self.alerts.values(),
                                 key=lambda a: str((a.get("payload") or {}).get("timestamp")))}


class Verdicts:
    """The views of every canary version seen, fed record by record.

    >>> v = Verdicts()
    >>> v.on_deployment({"model": "m", "stable_version": "v1", "canary_version": "v2",
    ...                  "phase": "started", "traffic_percent": 5, "ts": 10})
    >>> v.on_command({"action": "rollback", "model": "m", "from_version": "v2",
    ...               "to_version": "v1", "issued_at": 20, "command_id": "rollback:m:v2:5"})
    >>> v.get("m", "v2").verdict, v.get("m", "v3") is None
    ('fail', True)
    """

    def __init__(self, max_views: int = 10_000) -> None:
        self.max_views = max_views
        self._views: dict[tuple[str, str], CanaryView] = {}
        self._canary: dict[str, str] = {}  # model -> its latest canary version

    def get(self, model: str, version: str) -> CanaryView | None:
        return self._views.get((model, version))

    def _view(self, model: str, version: str) -> CanaryView:
        view = self._views.get((model, version))
        if view is None:
            if len(self._views) >= self.max_views:  # the oldest decided go first
                oldest = min(self._views, key=lambda k: self._views[k].decided_at)
                del self._views[oldest]
            view = self._views[(model, version)] = CanaryView(model, version)
        return view

    def feed(self, kind: str, rec: Any) -> None:
        """One record of ``commands``, ``deployments`` or ``alerts``; others are ignored."""
        if not isinstance(rec, dict):
            return
        handler = {"commands": self.on_command, "deployments": self.on_deployment,
                   "alerts": self.on_alert, "approvals": self.on_approval}.get(kind)
        if handler is not None:
            handler(rec)

    def feed_all(self, records: Iterable[tuple[str, Any]]) -> None:
        """Records of the three topics, ordered by their own time first."""
        for kind, rec in sorted(records, key=lambda r: _time_of(*r)):
            self.feed(kind, rec)

    def on_command(self, rec: dict[str, Any]) -> None:
        model, action = rec.get("model"), rec.get("action")
        version = rec.get("to_version") if action == "promote" else rec.get("from_version")
        if not isinstance(model, str) or not isinstance(version, str):
            return
        view, at = self._view(model, version), event_time(rec.get("issued_at"))
        view.command = rec
        if action in ("rollback", "pause") and not rec.get("requires_approval"):
            view.decide("fail", at)
        elif action == "promote" and not rec.get("requires_approval"):
            percent = rec.get("traffic_percent")
            if isinstance(percent, (int, float)):
                view.traffic_percent = percent
            if percent == 100:
                view.decide("pass", at)

    def on_deployment(self, rec: dict[str, Any]) -> None:
        model, phase = rec.get("model"), rec.get("phase")
        canary, stable = rec.get("canary_version"), rec.get("stable_version")
        if not isinstance(model, str):
            return
        at = event_time(rec.get("ts"))
        if isinstance(canary, str) and canary:
            previous = self._canary.get(model)
            if previous not in (None, canary) and phase in ("started", "step"):
                gone = self._views.get((model, previous))  # replaced before a verdict
                if gone is not None and gone.verdict == "pending":
                    gone.decide("inconclusive", at)
            self._canary[model] = canary
            view = self._view(model, canary)
            view.deployment = rec
            percent = rec.get("traffic_percent")
            if isinstance(percent, (int, float)):
                view.traffic_percent = percent
            if phase == "started" and at >= view.decided_at:
                view.verdict, view.decided_at = "pending", at
            elif phase == "rolled_back":
                view.decide("fail", at)
            elif phase == "aborted":
                view.decide("inconclusive", at)
            elif phase == "promoted":
                view.decide("pass", at)
        elif phase == "promoted" and isinstance(stable, str):
            promoted = self._views.get((model, stable))
            if promoted is not None:
                promoted.deployment = rec
                promoted.decide("pass", at)

    def on_alert(self, rec: dict[str, Any]) -> None:
        payload = rec.get("payload")
        key = rec.get("dedup_key")
        if not isinstance(payload, dict) or not isinstance(key, str):
            return
        model, source = payload.get("component"), str(payload.get("source") or "")
        if not isinstance(model, str) or not source.startswith(f"{model}@"):
            return
        version = source[len(model) + 1:].split("@")[0]
        gate = payload.get("class") == "validation_gate"
        view = self._view(model, version) if gate else self._views.get((model, version))
        if view is None:
            return
        firing = rec.get("event_action") == "trigger"
        if firing:
            view.alerts[key] = rec
        else:
            view.alerts.pop(key, None)
        if gate:
            view.validation = "failed" if firing else "passed"

    def on_approval(self, rec: dict[str, Any]) -> None:
        model, version = rec.get("model"), rec.get("version")
        if not isinstance(model, str) or not isinstance(version, str):
            return
        view = self._view(model, version)
        if rec.get("action") == "promote":
            view.approved_by = str(rec.get("approved_by") or "")

    def canary_of(self, model: str) -> str | None:
        """The model's latest canary version announced on ``ml.deployments``."""
        return self._canary.get(model)


def _time_of(kind: str, rec: Any) -> float:
    if not isinstance(rec, dict):
        return 0.0
    if kind == "commands":
        return event_time(rec.get("issued_at"))
    if kind in ("deployments", "approvals"):
        return event_time(rec.get("ts"))
    return event_time((rec.get("payload") or {}).get("timestamp"))
