"""The alert manager: from detector signals to the notifications people get.

A chain of small stages, in Alertmanager's order, each with an injected clock
(``now``: the signal's own time, event time for window checks):

1. :class:`Lifecycle` per ``dedup_key``: inactive -> pending -> firing -> inactive.
   A condition must hold ``for_s`` before it fires (Prometheus' ``for``); a
   firing alert resolves only once its value is back past the threshold by a
   ``hysteresis`` share of it (a value hovering at the threshold does not flap);
   an alert that changed state ``flap_changes`` times within ``flap_window_s``
   is *flapping*: it stays firing, says so in ``custom_details``, and resolves
   only after ``flap_hold_s`` without activity.
2. :func:`inhibited`: an ``outage`` of a model silences its ``latency_slo``,
   ``error_rate``, drift, skew and quality alerts while it lasts; a critical
   alert silences a lower-severity one of the same check and series.
3. :class:`Silence` matchers (from the CLI, on the compacted ``ml.silences``
   topic), until they expire.
4. Notification: a trigger goes out when an alert fires and nothing holds it
   back, or when what held it back ends (released); a resolve goes out only
   for an alert whose trigger went out; a firing alert is notified again after
   ``repeat_interval_s`` (Alertmanager's default, 4 h).
5. Grouping: alerts of one model version share a ``group_key`` in
   ``custom_details`` while one of the group still fires, or when they fire
   within ``group_wait_s`` of the previous member, so a bridge can fold them into
   one page. Unlike Alertmanager, notifications are not held back for
   ``group_wait`` (nor ``group_interval``, which only paces those held-back
   notifications): Sentinelle's alerts are stamped in event time, and a replayed
   stream must give the same notifications whatever the wall clock did.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from alerting.events import alert_event, rfc3339
from detectors.base import Signal

__all__ = ["ManagerSettings", "Silence", "AlertManager", "inhibited", "Lifecycle"]

# Resolved by their own rule, not by a value crossing a threshold: an outage
# resolves when traffic is back; a burn-rate rule when its short window clears.
NO_HYSTERESIS = frozenset({"outage", "canary_regression"})
WALL_CLOCK_CHECKS = frozenset({"outage", "pipeline_stalled"})
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
OUTAGE_INHIBITS = frozenset({"latency_slo", "error_rate", "feature_drift", "prediction_drift",
                             "training_serving_skew", "data_quality", "label_drift",
                             "performance_degradation"})


@dataclass(frozen=True)
class ManagerSettings:
    for_s: float = 0.0
    hysteresis: float = 0.05
    flap_window_s: float = 600.0
    flap_changes: int = 4
    flap_hold_s: float = 600.0
    group_wait_s: float = 30.0
    repeat_interval_s: float = 4 * 3600.0


@dataclass(frozen=True)
class Silence:
    """Alerts whose fields match every matcher are held back until ``ends_at``.

    Matchers compare ``class``, ``model``, ``version``, ``severity`` or
    ``dedup_key`` with a shell-style pattern (``fraud-*``).
    """

    id: str
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    created_by: str = ""
    comment: str = ""

    def matches(self, signal: Signal, now: float) -> bool:
        if not self.starts_at <= now < self.ends_at:
            return False
        fields = {"class": signal.check, "model": signal.model, "version": signal.version or "",
                  "severity": signal.severity, "dedup_key": signal.key}
        return all(fnmatch.fnmatchcase(fields.get(k, ""), pattern)
                   for k, pattern in self.matchers.items())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "matchers": dict(self.matchers), "starts_at": self.starts_at,
                "ends_at": self.ends_at, "created_by": self.created_by, "comment": self.comment}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Silence:
        if not isinstance(d.get("matchers"), dict) or not d["matchers"]:
            raise ValueError("a silence needs at least one matcher")
        return cls(str(d["id"]), {str(k): str(v) for k, v in d["matchers"].items()},
                   float(d["starts_at"]), float(d["ends_at"]), str(d.get("created_by", "")),
                   str(d.get("comment", "")))


@dataclass
class Lifecycle:
    """State of one ``dedup_key``."""

    state: str = "inactive"            # inactive, pending, firing
    since: float = 0.0                 # when the current state began
    changes: list[float] = field(default_factory=list)  # recent firing/resolving times
    flapping: bool = False
    last_active: float = 0.0
    direction: int = 1                 # +1: higher values are worse; -1: lower are worse
    notified: bool = False             # a trigger went out and no resolve since
    last_notified: float = 0.0
    group_key: str | None = None
    last: Signal | None = None         # the latest active signal, for releases and repeats
    trigger_severity: str = ""         # what the trigger said, for its resolve
    trigger_summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        s = self.last
        return {"state": self.state, "since": self.since, "changes": list(self.changes),
                "flapping": self.flapping, "last_active": self.last_active,
                "direction": self.direction, "notified": self.notified,
                "last_notified": self.last_notified, "group_key": self.group_key,
                "trigger_severity": self.trigger_severity,
                "trigger_summary": self.trigger_summary,
                "last": None if s is None else {
                    "check": s.check, "key": s.key, "active": s.active, "severity": s.severity,
                    "summary": s.summary, "timestamp": s.timestamp, "model": s.model,
                    "version": s.version, "details": s.details}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lifecycle:
        last = d.get("last")
        return cls(d["state"], d["since"], list(d["changes"]), d["flapping"], d["last_active"],
                   d["direction"], d["notified"], d["last_notified"], d["group_key"],
                   None if last is None else Signal(**last), d.get("trigger_severity", ""),
                   d.get("trigger_summary", ""))


def inhibited(signal: Signal, firing: dict[str, Lifecycle]) -> str | None:
    """The ``dedup_key`` of a firing alert that silences ``signal``, if any."""
    for key, lc in firing.items():
        other = lc.last
        if other is None or key == signal.key or lc.state != "firing":
            continue
        if (other.check == "outage" and other.model == signal.model
                and signal.check in OUTAGE_INHIBITS):
            return key
        same_series = (other.check == signal.check and other.model == signal.model
                       and other.version == signal.version
                       and other.details.get("feature") == signal.details.get("feature"))
        if same_series and SEVERITY_RANK.get(other.severity, 0) > SEVERITY_RANK.get(
                signal.severity, 0):
            return key
    return None


class AlertManager:
    """Every stage, for the alerts of one model (state is per ``dedup_key``).

    >>> from detectors.base import Signal
    >>> m = AlertManager(ManagerSettings(for_s=60))
    >>> up = lambda t: Signal("latency_slo", "k", True, "error", "slow", t, "m", "v1",
    ...                       {"value": 900, "threshold": 500})
    >>> [e["event_action"] for e in m.process([up(0)], 0) + m.process([up(30)], 30)]
    []
    >>> [e["event_action"] for e in m.process([up(60)], 60)]
    ['trigger']
    """

    def __init__(self, settings: ManagerSettings = ManagerSettings()) -> None:
        self.settings = settings
        self.alerts: dict[str, Lifecycle] = {}
        self.silences: dict[str, Silence] = {}
        self._groups: dict[str, tuple[str, float, float]] = {}  # series -> (key, first, last)

    # -- stage 1: lifecycle ---------------------------------------------------

    def _advance(self, lc: Lifecycle, s: Signal, now: float) -> bool:
        """Update ``lc`` with ``s``; True when the alert is firing afterwards."""
        st = self.settings
        lc.changes = [t for t in lc.changes if t > now - st.flap_window_s]
        if s.active:
            lc.last_active = now
            if lc.state == "inactive":
                lc.state, lc.since = "pending", now
                lc.direction = _direction(s)
            if lc.state == "pending" and now - lc.since >= st.for_s:
                lc.state, lc.since = "firing", now
                lc.changes.append(now)
        else:
            if lc.state == "pending":
                lc.state, lc.since = "inactive", now
            elif lc.state == "firing" and self._clear(lc, s, now):
                if len(lc.changes) + 1 >= st.flap_changes and not lc.flapping:
                    lc.flapping = True  # this change would make it flap: hold it firing
                    return True
                lc.state, lc.since = "inactive", now
                lc.changes.append(now)
        lc.flapping = (lc.flapping and now - lc.last_active < st.flap_hold_s) or \
            len(lc.changes) >= st.flap_changes
        return lc.state == "firing"

    def _clear(self, lc: Lifecycle, s: Signal, now: float) -> bool:
        st = self.settings
        if lc.flapping and now - lc.last_active < st.flap_hold_s:
            return False  # flapping: hold it firing until things are quiet
        if s.check in NO_HYSTERESIS or s.details.get("statistic") == "burn_rate":
            return True  # traffic is back / the short window cleared: that is the rule
        value, threshold = s.details.get("value"), s.details.get("threshold")
        if not isinstance(value, (int, float)) or not isinstance(threshold, (int, float)):
            return True
        band = st.hysteresis * abs(threshold)
        return (value <= threshold - band) if lc.direction > 0 else (value >= threshold + band)

    # -- the chain -------------------------------------------------------------

    def process(self, signals: list[Signal],
                wall_now: float | None = None) -> list[dict[str, Any]]:
        """Notifications caused by ``signals``.

        Each alert keeps time with its own signals' timestamps (event time for
        window checks, the wall clock for outage); silences, set by people, are
        judged on ``wall_now`` (default: the signal's time).
        """
        out: list[dict[str, Any]] = []
        for s in signals:
            t = s.timestamp
            wall = t if wall_now is None else wall_now
            lc = self.alerts.get(s.key)
            if lc is None:
                if not s.active:
                    continue
                lc = self.alerts[s.key] = Lifecycle()
            if s.active or lc.last is None:
                lc.last = s  # the latest active signal: what a trigger or repeat says
            firing = self._advance(lc, s, t)
            if firing and not lc.notified:
                event = self._release(lc, t, wall)
                if event is not None:
                    out.append(event)
            elif not firing and lc.state == "inactive" and lc.notified:
                out.append(self._notify(lc, s, "resolve", t))
                out.extend(self._releases(wall))  # what it inhibited may go out now
        return out

    def _releases(self, wall_now: float) -> list[dict[str, Any]]:
        out = []
        for lc in list(self.alerts.values()):
            if lc.state == "firing" and not lc.notified and lc.last is not None:
                event = self._release(lc, lc.last.timestamp, wall_now)
                if event is not None:
                    out.append(event)
        return out

    def resolve_where(self, reason: str, now: float, model: str,
                      version: str | None = None) -> list[dict[str, Any]]:
        """Close every alert (of ``version``, if given): its series is gone."""
        out = []
        for key, lc in list(self.alerts.items()):
            last = lc.last
            if last is None or (version is not None and last.version != version):
                continue
            if lc.notified:
                sig = Signal(last.check, key, False, last.severity, f"{key}: {reason}", now,
                             model, last.version, {"reason": reason})
                out.append(self._notify(lc, sig, "resolve", now))
            del self.alerts[key]
        return out

    @property
    def firing(self) -> dict[str, Lifecycle]:
        return {k: lc for k, lc in self.alerts.items() if lc.state == "firing"}

    def tick(self, wall_now: float, event_now: float | None = None) -> list[dict[str, Any]]:
        """Releases (silence expired) and repeats, on the clock.

        ``event_now`` (the model's watermark) is the clock of event-time alerts;
        outage alerts, and silences, go by ``wall_now``.
        """
        out = []
        for key, lc in list(self.alerts.items()):
            wall_clocked = lc.last is None or lc.last.check in WALL_CLOCK_CHECKS
            now = wall_now if wall_clocked or event_now is None else event_now
            if lc.state == "inactive" and not lc.notified and all(
                    t <= now - self.settings.flap_window_s for t in lc.changes):
                del self.alerts[key]  # nothing left to remember (bounded memory)
                continue
            if lc.state != "firing" or lc.last is None:
                continue
            if not lc.notified:
                event = self._release(lc, now, wall_now)
            elif now - lc.last_notified >= self.settings.repeat_interval_s:
                event = self._notify(lc, lc.last, "trigger", now,
                                     {"notify_reason": "repeat interval elapsed"})
            else:
                event = None
            if event is not None:
                out.append(event)
        return out

    def _release(self, lc: Lifecycle, now: float, wall_now: float) -> dict[str, Any] | None:
        """The trigger, unless an inhibition or a silence holds it back."""
        s = lc.last
        assert s is not None
        if inhibited(s, self.alerts) is not None:
            return None
        if any(sil.matches(s, wall_now) for sil in self.silences.values()):
            return None
        return self._notify(lc, s, "trigger", now)

    def _notify(self, lc: Lifecycle, s: Signal, action: str, now: float,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        details: dict[str, Any] = dict(extra or {})
        if action == "trigger":
            lc.group_key = lc.group_key or self._group(s, now)
            lc.notified, lc.last_notified = True, now
            if not lc.trigger_severity or details.get("notify_reason") is None:
                lc.trigger_severity, lc.trigger_summary = s.severity, s.summary
            severity = s.severity
        else:
            lc.notified = False
            # The resolve keeps the trigger's severity, so downstream rules match it.
            severity = lc.trigger_severity or s.severity
            details["trigger_summary"] = lc.trigger_summary
            fired = lc.changes[:-1] or [lc.since]
            details["firing_since"] = rfc3339(fired[-1])
        details["group_key"] = lc.group_key
        if lc.flapping:
            details["flapping"] = True
        return alert_event(s, action, details, severity=severity)

    def _group(self, s: Signal, now: float) -> str:
        """The group key: the series' current group if one of its members still fires,
        or the last one fired within ``group_wait_s``; else a new group."""
        series = f"{s.model}:{s.version or '-'}"
        group = self._groups.get(series)
        live = group is not None and any(
            lc.group_key == group[0] and lc.notified for lc in self.alerts.values())
        if group is None or not (live or now - group[2] <= self.settings.group_wait_s):
            group = (f"{series}:{rfc3339(now)}", now, now)
        self._groups[series] = (group[0], group[1], now)
        return group[0]

    # -- checkpoint --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"alerts": {k: lc.to_dict() for k, lc in self.alerts.items()},
                "groups": {k: list(v) for k, v in self._groups.items()}}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.alerts = {k: Lifecycle.from_dict(v) for k, v in data.get("alerts", {}).items()}
        self._groups = {k: (str(v[0]), float(v[1]), float(v[2]))
                        for k, v in data.get("groups", {}).items()}


def _direction(s: Signal) -> int:
    value, threshold = s.details.get("value"), s.details.get("threshold")
    if isinstance(value, (int, float)) and isinstance(threshold, (int, float)):
        return 1 if value >= threshold else -1
    return 1
