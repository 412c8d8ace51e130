"""The alert manager: from detector signals to the notifications people get.

A chain of small stages, in Alertmanager's order, each with an injected clock
(``now``: the signal's own time, event time for window checks):

1. :class:`Lifecycle` per ``dedup_key``: inactive -> pending -> firing -> inactive.
   A condition must hold ``for_s`` before it fires (Prometheus' ``for``). A firing
   alert resolves once its condition has been clear for ``keep_firing_for_s``
   (Prometheus' ``keep_firing_for``): a condition that keeps coming back within
   that time is one incident, one trigger and one resolve, however often it
   clears. *Clear* means back past the threshold by a ``hysteresis`` share of it
   (a value hovering at the threshold does not flap). The hold runs from the
   last signal that said the condition held; the first signal after it ends the
   alert, or, when the signals stopped after a clear one ("no data" is not
   "healthy", so never after a bad one), :meth:`AlertManager.tick` does once
   the event-time clock is a hold past that clear signal.
   Alerts that resolve by their own rule (:data:`OWN_RULE`) are not held: traffic
   back ends an ``outage``, a heartbeat a ``pipeline_stalled`` (both on the wall
   clock), a rollback or promotion a ``canary_regression``; a run's or a
   version's next verdict is final for ``pipeline_failure``,
   ``pipeline_duration_anomaly`` and ``validation_gate``, whose clock only moves
   with their own events; and a burn-rate alert has its short window precisely so
   that it resets quickly (the SRE workbook's multiwindow alerts), its long window
   already smoothing a flapping rate.
   For those (and for every alert when ``keep_firing_for_s`` is 0), flap control
   remains: an alert whose resolve would be its ``flap_changes``-th state change
   within ``flap_window_s`` is *flapping*: it stays firing and resolves only once
   ``flap_hold_s`` passed without the condition. With the defaults
   (``keep_firing_for_s`` = ``flap_window_s``) a held alert cannot change state
   that often, so flap control only ever acts on those alerts. An alert whose
   condition came back while it was held is flapping too (so it is held for
   ``flap_hold_s`` at least); a flapping alert says ``flapping: true`` in
   ``custom_details``, its resolve included.
   An alert class may have its own rule (:class:`ClassRule`, in
   ``per_class``): its own ``keep_firing_for_s`` (which also means that a
   condition back within it re-affirms the alert rather than making it flap)
   and a ``cooldown_s``, at most one firing per that much time. By default
   ``metric_anomaly`` has one: its detector signals every point, anomalous or
   not; an anomaly opens an alert, anomalous points within 30 min keep it open,
   the first normal point 30 min after the last anomalous one resolves it, and
   no new alert opens within an hour of the last one (one incident, one page).
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

State stays bounded: a key that is neither pending nor firing is forgotten on
``tick`` once its flap window has passed, a group once it is neither live nor
within ``group_wait_s``, and at most ``max_alerts`` keys are kept: a new key
beyond that is refused (counted in :attr:`AlertManager.refused`, logged once
per episode).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from alerting.events import alert_event
from detectors.base import Signal
from detectors.contract import ALERT_CLASSES, SEVERITY_RANK, EventAction, Severity, rfc3339

__all__ = ["ManagerSettings", "ClassRule", "DEFAULT_CLASS_RULES", "Silence", "AlertManager",
           "inhibited", "Lifecycle", "OWN_RULE"]

log = logging.getLogger("sentinelle.alerts")

# Resolved by their own rule, neither past a hysteresis band nor after
# keep_firing_for_s (see the module's docstring for each); burn-rate alerts
# (``statistic: burn_rate``) too.
OWN_RULE = frozenset({"outage", "pipeline_stalled", "canary_regression",
                      "pipeline_failure", "pipeline_duration_anomaly", "validation_gate"})
WALL_CLOCK_CHECKS = frozenset({"outage", "pipeline_stalled"})
OUTAGE_INHIBITS = frozenset({"latency_slo", "error_rate", "feature_drift", "prediction_drift",
                             "training_serving_skew", "data_quality", "label_drift",
                             "performance_degradation"})


@dataclass(frozen=True)
class ClassRule:
    """One alert class's own lifecycle rule (``ManagerSettings.per_class``).

    ``keep_firing_for_s``: replaces the manager's (and an own rule's 0) for the
    class; a condition back within it re-affirms the alert (it is not flapping).
    ``None``: the manager's. ``cooldown_s``: after an alert of the class fires,
    its key does not fire again for this long (its condition is ignored).
    """

    keep_firing_for_s: float | None = None
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        if self.keep_firing_for_s is not None and not self.keep_firing_for_s >= 0:
            raise ValueError("keep_firing_for_s must be >= 0")
        if not self.cooldown_s >= 0:
            raise ValueError("cooldown_s must be >= 0")


#: The class rules the manager has unless told otherwise (see the module's docstring).
DEFAULT_CLASS_RULES: Mapping[str, ClassRule] = MappingProxyType({
    "metric_anomaly": ClassRule(keep_firing_for_s=1800.0, cooldown_s=3600.0),
})


@dataclass(frozen=True)
class ManagerSettings:
    """The manager's knobs; ``streams.config.AlertSettings`` mirrors them, field by field.

    ``keep_firing_for_s`` is 10 minutes: the flap window the manager already
    had, and ten 60 s windows, so a condition back within ten minutes is the same
    incident (a p99 bad one minute in two, or one in ten), while one gone for
    longer pages again. It costs every resolve ten minutes of
    delay after the last bad window: a late resolve is harmless, a second page
    for one incident is not. Set it to 0 for Prometheus' own default.

    ``per_class`` gives classes their own rule (:class:`ClassRule`, or a dict of
    its fields); it is merged, field by field, over :data:`DEFAULT_CLASS_RULES`.
    """

    for_s: float = 0.0
    hysteresis: float = 0.05
    keep_firing_for_s: float = 600.0
    flap_window_s: float = 600.0
    flap_changes: int = 4
    flap_hold_s: float = 600.0
    group_wait_s: float = 30.0
    repeat_interval_s: float = 4 * 3600.0
    max_alerts: int = 10_000
    per_class: Mapping[str, ClassRule] = field(default_factory=lambda: dict(DEFAULT_CLASS_RULES))

    def __post_init__(self) -> None:
        rules: dict[str, ClassRule] = {}
        for name, rule in {**DEFAULT_CLASS_RULES, **self.per_class}.items():
            if name not in ALERT_CLASSES:
                raise ValueError(f"per_class: {name!r} is not an alert class")
            if isinstance(rule, dict):
                base = DEFAULT_CLASS_RULES.get(name, ClassRule())
                rule = replace(base, **rule)
            elif not isinstance(rule, ClassRule):
                raise ValueError(f"per_class: the rule of {name!r} must be a ClassRule")
            rules[name] = rule
        object.__setattr__(self, "per_class", rules)
        if min(self.for_s, self.hysteresis, self.keep_firing_for_s, self.flap_hold_s,
               self.group_wait_s) < 0:
            raise ValueError("durations and hysteresis must be >= 0")
        if self.flap_window_s <= 0 or self.repeat_interval_s <= 0:
            raise ValueError("flap_window_s and repeat_interval_s must be > 0")
        if self.flap_changes < 2 or self.max_alerts < 1:
            raise ValueError("flap_changes must be >= 2 and max_alerts >= 1")


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
    changes: list[float] = field(default_factory=list)  # firing/resolving times, flap window
    flapping: bool = False
    last_active: float = 0.0           # last signal saying the condition held (or, while
    #                                    firing, that it was still inside the hysteresis band)
    direction: int = 1                 # +1: higher values are worse; -1: lower are worse
    notified: bool = False             # a trigger went out and no resolve since
    last_notified: float = 0.0
    group_key: str | None = None
    last: Signal | None = None         # the latest active signal, for releases and repeats
    trigger_severity: Severity | None = None  # what the trigger said, for its resolve
    trigger_summary: str = ""
    fired_at: float = 0.0              # when the current (or last) firing began
    clearing: Signal | None = None     # while firing: the latest signal, when it said clear
    cooldown_until: float | None = None  # its class's cooldown: no firing before this

    @property
    def held(self) -> bool:
        """Firing only because ``keep_firing_for_s`` (or the flap hold) has not passed."""
        return self.state == "firing" and self.clearing is not None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "changes": list(self.changes),
                "flapping": self.flapping, "last_active": self.last_active,
                "direction": self.direction, "notified": self.notified,
                "last_notified": self.last_notified, "group_key": self.group_key,
                "trigger_severity": self.trigger_severity,
                "trigger_summary": self.trigger_summary, "fired_at": self.fired_at,
                "last": _signal_dict(self.last), "clearing": _signal_dict(self.clearing),
                "cooldown_until": self.cooldown_until}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lifecycle:
        """The inverse of :meth:`to_dict`; checkpoints written before ``fired_at``
        and ``clearing`` existed load too."""
        last, clearing = d.get("last"), d.get("clearing")
        fired_at = d.get("fired_at")
        if fired_at is None:  # older checkpoint: a firing state began when it fired
            fired_at = d["since"] if d["state"] == "firing" else 0.0
        return cls(state=d["state"], since=d["since"], changes=list(d["changes"]),
                   flapping=d["flapping"], last_active=d["last_active"],
                   direction=d["direction"], notified=d["notified"],
                   last_notified=d["last_notified"], group_key=d["group_key"],
                   last=None if last is None else Signal(**last),
                   trigger_severity=d.get("trigger_severity") or None,
                   trigger_summary=d.get("trigger_summary", ""), fired_at=float(fired_at),
                   clearing=None if clearing is None else Signal(**clearing),
                   cooldown_until=d.get("cooldown_until"))


def _signal_dict(s: Signal | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"check": s.check, "key": s.key, "active": s.active, "severity": s.severity,
            "summary": s.summary, "timestamp": s.timestamp, "model": s.model,
            "version": s.version, "details": s.details}


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

    Clear again: it keeps firing until ``keep_firing_for_s`` (600 s) has passed
    since the last signal that said the condition held, here the one at 60 s.

    >>> down = lambda t: Signal("latency_slo", "k", False, "error", "fast", t, "m", "v1",
    ...                         {"value": 100, "threshold": 500})
    >>> [e["event_action"] for t in (120, 600) for e in m.process([down(t)], t)]
    []
    >>> [(e["event_action"], e["payload"]["timestamp"]) for e in m.process([down(660)], 660)]
    [('resolve', '1970-01-01T00:11:00.000Z')]
    """

    def __init__(self, settings: ManagerSettings = ManagerSettings()) -> None:
        self.settings = settings
        self.alerts: dict[str, Lifecycle] = {}
        self.silences: dict[str, Silence] = {}
        self._groups: dict[str, tuple[str, float, float]] = {}  # series -> (key, first, last)
        self.refused = 0  # signals of new keys turned away at max_alerts (a counter)
        self._refusing = False  # in an episode at the cap (logged once per episode)

    # -- stage 1: lifecycle ---------------------------------------------------

    def _advance(self, lc: Lifecycle, s: Signal, now: float) -> bool:
        """Update ``lc`` with ``s``; True when the alert is firing afterwards."""
        st = self.settings
        lc.changes = [t for t in lc.changes if t > now - st.flap_window_s]
        if s.active:
            rule = st.per_class.get(s.check)
            if lc.held and (rule is None or rule.keep_firing_for_s is None):
                lc.flapping = True  # it cleared and came back within the hold
            lc.last_active, lc.clearing = now, None
            if lc.state == "inactive":
                lc.state, lc.since = "pending", now
                lc.direction = _direction(s)
            if lc.state == "pending" and now - lc.since >= st.for_s:
                lc.state, lc.since, lc.fired_at = "firing", now, now
                lc.changes.append(now)
                lc.flapping = len(lc.changes) >= st.flap_changes
                if rule is not None and rule.cooldown_s > 0:
                    lc.cooldown_until = now + rule.cooldown_s
        elif lc.state == "pending":
            lc.state, lc.since = "inactive", now
        elif lc.state == "firing":
            if self._past_band(lc, s):
                lc.clearing = s
                self._settle(lc, now)
            else:
                lc.last_active, lc.clearing = now, None  # inside the band: it still holds
        return lc.state == "firing"

    def _past_band(self, lc: Lifecycle, s: Signal) -> bool:
        """Whether the clear signal ``s`` is back past the hysteresis band."""
        if _own_rule(s):
            return True  # traffic is back / the short window cleared: that is the rule
        value, threshold = s.details.get("value"), s.details.get("threshold")
        if not isinstance(value, (int, float)) or not isinstance(threshold, (int, float)):
            return True
        band = self.settings.hysteresis * abs(threshold)
        return (value <= threshold - band) if lc.direction > 0 else (value >= threshold + band)

    def _hold(self, lc: Lifecycle, s: Signal) -> float:
        """How long the condition must have been clear before ``lc`` resolves."""
        st = self.settings
        rule = st.per_class.get(s.check)
        if rule is not None and rule.keep_firing_for_s is not None:
            hold = rule.keep_firing_for_s
        else:
            hold = 0.0 if _own_rule(s) else st.keep_firing_for_s
        return max(hold, st.flap_hold_s) if lc.flapping else hold

    def _settle(self, lc: Lifecycle, now: float, quiet: bool = False) -> bool:
        """Resolve a held alert whose hold has passed by ``now``; True if it did.

        On a signal (``now`` its time) the hold runs from the last time the
        condition held. On a tick (``quiet``) it runs from the last signal, the
        clear one: the event clock (the watermark) runs ahead of the last closed
        window by up to a window and its allowed lateness, so a tick that did not
        wait for the signals to stop would resolve ahead of a window still to
        close, bad perhaps (a resolve and a second page seconds apart), and a
        replay batched otherwise would not. The resolve is stamped when the hold
        ended, so the same stream gives the same resolves however it was ticked.
        """
        st = self.settings
        s = lc.clearing
        if lc.state != "firing" or s is None:
            return False
        start = s.timestamp if quiet else lc.last_active
        if now - start < self._hold(lc, s):
            return False
        lc.changes = [t for t in lc.changes if t > now - st.flap_window_s]
        if not lc.flapping and len(lc.changes) + 1 >= st.flap_changes:
            lc.flapping = True  # this change would make it flap: hold it firing
            if now - start < self._hold(lc, s):
                return False
        at = start + self._hold(lc, s) if quiet else now
        lc.state, lc.since = "inactive", at
        lc.changes.append(at)
        return True

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
                if not s.active or not self._admit(s):
                    continue
                lc = self.alerts[s.key] = Lifecycle()
            elif s.active and lc.state == "inactive" and _cooling(lc, t):
                continue  # its class's cooldown: the condition is ignored
            if s.active or lc.last is None:
                lc.last = s  # the latest active signal: what a trigger or repeat says
            firing = self._advance(lc, s, t)
            if firing and not lc.notified:
                event = self._release(lc, t, wall)
                if event is not None:
                    out.append(event)
            elif not firing and lc.clearing is not None:  # it just resolved
                if lc.notified:
                    out.append(self._resolve(lc))
                    out.extend(self._releases(wall))  # what it inhibited may go out now
                lc.clearing = None
        return out

    def _admit(self, s: Signal) -> bool:
        """Room for a new key? Beyond ``max_alerts`` keys it is refused, counted,
        and logged once per episode at the cap."""
        cap = self.settings.max_alerts
        if len(self.alerts) < cap:
            self._refusing = False
            return True
        self.refused += 1
        if not self._refusing:
            self._refusing = True
            log.warning("alert manager of %s at max_alerts (%d keys): refusing new alert %s "
                        "(and any other new key until some are forgotten)", s.model, cap, s.key)
        return False

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
        """Every firing alert, held ones included (what ``sentinelle alerts`` lists)."""
        return {k: lc for k, lc in self.alerts.items() if lc.state == "firing"}

    @property
    def active(self) -> dict[str, Lifecycle]:
        """Firing alerts whose condition holds now: not merely held by keep_firing_for."""
        return {k: lc for k, lc in self.alerts.items() if lc.state == "firing" and not lc.held}

    def tick(self, wall_now: float, event_now: float | None = None) -> list[dict[str, Any]]:
        """Resolves whose hold has passed, releases (silence expired) and repeats,
        on the clock; forgets what there is no need to remember.

        ``event_now`` (the model's watermark) is the clock of event-time alerts;
        outage alerts, and silences, go by ``wall_now``. Without ``event_now`` a
        held event-time alert is not resolved: the wall clock says nothing about
        how far event time has gone.
        """
        st = self.settings
        out = []
        for key, lc in list(self.alerts.items()):
            wall_clocked = lc.last is None or lc.last.check in WALL_CLOCK_CHECKS
            now = wall_now if wall_clocked or event_now is None else event_now
            if lc.state == "inactive" and not lc.notified and not _cooling(lc, now) and all(
                    t <= now - st.flap_window_s for t in lc.changes):
                del self.alerts[key]  # nothing left to remember (bounded memory)
            elif (wall_clocked or event_now is not None) and self._settle(lc, now, quiet=True):
                if lc.notified:
                    out.append(self._resolve(lc))
                lc.clearing = None
        for lc in list(self.alerts.values()):  # after the resolves: what they inhibited
            if lc.state != "firing" or lc.last is None:
                continue
            wall_clocked = lc.last.check in WALL_CLOCK_CHECKS
            now = wall_now if wall_clocked or event_now is None else event_now
            if not lc.notified:
                event = self._release(lc, now, wall_now)
            elif now - lc.last_notified >= st.repeat_interval_s:
                event = self._notify(lc, lc.last, "trigger", now,
                                     {"notify_reason": "repeat interval elapsed"})
            else:
                event = None
            if event is not None:
                out.append(event)
        self._forget_groups(wall_now if event_now is None else min(wall_now, event_now))
        return out

    def _forget_groups(self, now: float) -> None:
        """Drop groups with no notified member and none due within ``group_wait_s``.

        ``now`` is the earlier of the two clocks: a group's time may be either,
        and forgetting it early would split a group a replay keeps whole.
        """
        live = {lc.group_key for lc in self.alerts.values() if lc.notified}
        for series, (key, _, last) in list(self._groups.items()):
            if key not in live and now - last > self.settings.group_wait_s:
                del self._groups[series]

    def _release(self, lc: Lifecycle, now: float, wall_now: float) -> dict[str, Any] | None:
        """The trigger, unless an inhibition or a silence holds it back."""
        s = lc.last
        assert s is not None
        if inhibited(s, self.alerts) is not None:
            return None
        if any(sil.matches(s, wall_now) for sil in self.silences.values()):
            return None
        return self._notify(lc, s, "trigger", now)

    def _resolve(self, lc: Lifecycle) -> dict[str, Any]:
        """The resolve of an alert :meth:`_settle` just resolved: what its clearing
        signal said, stamped when the hold ended."""
        s = lc.clearing
        assert s is not None
        return self._notify(lc, replace(s, timestamp=lc.since), "resolve", lc.since)

    def _notify(self, lc: Lifecycle, s: Signal, action: EventAction, now: float,
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
            details["firing_since"] = rfc3339(lc.fired_at)
        details["group_key"] = lc.group_key
        if action == "resolve":
            lc.group_key = None  # the incident is over: a new one joins a group afresh
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


def _cooling(lc: Lifecycle, now: float) -> bool:
    return lc.cooldown_until is not None and now < lc.cooldown_until


def _own_rule(s: Signal) -> bool:
    return s.check in OWN_RULE or s.details.get("statistic") == "burn_rate"


def _direction(s: Signal) -> int:
    value, threshold = s.details.get("value"), s.details.get("threshold")
    if isinstance(value, (int, float)) and isinstance(threshold, (int, float)):
        return 1 if value >= threshold else -1
    return 1
