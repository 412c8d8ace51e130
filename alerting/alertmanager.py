"""Prometheus Alertmanager: ``ml.alerts`` as ``POST /api/v2/alerts`` bodies, re-posted.

Alertmanager keeps an alert firing until its ``endsAt``; a client that sets
none gets ``resolve_timeout`` (5 min) and must post the alert again before
then, as Prometheus does. The bridge does what Prometheus does: every firing
alert is posted with ``endsAt`` = now + 4 x ``repost_s`` and posted again every
``repost_s`` (60 s), so it stays firing while Sentinelle says so, and
resolves by itself a few minutes after the bridge stops; a resolve is posted
with ``endsAt`` = the resolve's time (never later than now), which ends it
at once.

An alert becomes (:func:`am_alert`):

- ``labels``: ``alertname`` (the class), ``model``, ``version``, ``feature``
  (when the evidence names one), ``severity``, ``group`` and ``dedup_key``;
  the labels are the alert's identity in Alertmanager, so they are the same
  on the trigger, every re-post and the resolve;
- ``annotations``: ``summary``, ``evidence`` (the ``custom_details`` as JSON),
  ``runbook_url`` (the class's runbook, :mod:`alerting.links`);
- ``startsAt``: the trigger's ``payload.timestamp`` (event time);
  ``generatorURL``: the dashboard, when configured.

:class:`Firing` is what is firing, per partition of ``ml.alerts`` (so that two
bridges of one group each re-post only their own partitions' alerts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from alerting.bridge import Outcome
from alerting.links import Links, alert_fields
from detectors.contract import rfc3339

__all__ = ["am_alert", "am_body", "Firing", "API_PATH"]

API_PATH = "/api/v2/alerts"
MAX_EVIDENCE_CHARS = 16_384


def _epoch(ts: Any) -> float | None:
    if isinstance(ts, (int, float)):
        return float(ts)
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None


def am_alert(alert: dict[str, Any], now: float, repost_s: float = 60.0,
             links: Links = Links(), starts_at: str | None = None) -> dict[str, Any]:
    """One Alertmanager alert for an ``ml.alerts`` message (see the module docstring).

    ``starts_at``: the trigger's time, for a resolve (Alertmanager refuses an
    alert that ends before it starts; without it, it starts when it ends).

    >>> a = {"event_action": "trigger", "dedup_key": "outage:m", "payload": {
    ...      "summary": "m: silent", "source": "m", "severity": "critical", "class": "outage",
    ...      "timestamp": "2026-11-27T07:00:00.000Z", "component": "m", "group": "serving",
    ...      "custom_details": {}}}
    >>> am = am_alert(a, now=1_800_000_000.0)
    >>> am["labels"]["alertname"], am["startsAt"], am["endsAt"]
    ('outage', '2026-11-27T07:00:00.000Z', '2027-01-15T08:04:00.000Z')
    """
    p = alert.get("payload") or {}
    fields = alert_fields(alert)
    raw = p.get("custom_details")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    labels = {"alertname": fields["class"] or "sentinelle", "model": fields["model"],
              "version": fields["version"], "severity": fields["severity"],
              "group": str(p.get("group") or ""), "dedup_key": fields["dedup_key"]}
    if isinstance(details.get("feature"), str):
        labels["feature"] = details["feature"]
    evidence = orjson.dumps(details).decode()
    if len(evidence) > MAX_EVIDENCE_CHARS:
        evidence = evidence[:MAX_EVIDENCE_CHARS] + f"… (trimmed from {len(evidence)} characters)"
    annotations = {"summary": str(p.get("summary") or ""), "evidence": evidence}
    if (runbook := links.runbook_for(fields)) is not None:
        annotations["runbook_url"] = runbook
    out: dict[str, Any] = {"labels": {k: v for k, v in labels.items() if v},
                           "annotations": annotations}
    if (dashboard := links.dashboard_for(fields)) is not None:
        out["generatorURL"] = dashboard
    at = _epoch(p.get("timestamp"))
    if alert.get("event_action") == "resolve":
        ends = min(now, at) if at is not None else now
        start = _epoch(starts_at) if starts_at else None
        if start is not None and start <= ends:
            out["startsAt"] = rfc3339(start)
        out["endsAt"] = rfc3339(ends)
    else:
        if at is not None:
            out["startsAt"] = rfc3339(min(at, now))
        out["endsAt"] = rfc3339(now + 4 * repost_s)
    return out


def am_body(alert: dict[str, Any], now: float, repost_s: float, links: Links,
            starts_at: str | None = None) -> list[dict[str, Any]]:
    """The ``POST /api/v2/alerts`` body: a list of one alert."""
    return [am_alert(alert, now, repost_s, links, starts_at)]


class Firing:
    """The alerts firing now, by partition, and when each was last posted.

    ``seed`` takes what ``ml.alerts`` already holds (a restarted bridge re-posts
    the alerts it delivered before); ``settled`` follows each record delivered;
    ``due`` gives the bodies to post again.
    """

    def __init__(self, repost_s: float, links: Links = Links(),
                 clock: Callable[[], float] = time.time) -> None:
        self.repost_s, self.links, self.clock = repost_s, links, clock
        self._alerts: dict[str, tuple[int, dict[str, Any]]] = {}  # dedup_key -> (partition, a)
        self._posted: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._alerts)

    def keys(self) -> set[str]:
        return set(self._alerts)

    def track(self, alert: dict[str, Any], partition: int) -> None:
        key = alert.get("dedup_key")
        if not isinstance(key, str):
            return
        if alert.get("event_action") == "trigger":
            self._alerts[key] = (partition, alert)
            self._posted.setdefault(key, self.clock())
        else:
            self._alerts.pop(key, None)
            self._posted.pop(key, None)

    def seed(self, records: Iterable[tuple[int, bytes | None]]) -> None:
        """(partition, value) of every record of ``ml.alerts``, oldest first; posted 'now'."""
        for partition, value in records:
            try:
                alert = orjson.loads(value or b"null")
            except orjson.JSONDecodeError:
                continue
            if isinstance(alert, dict):
                self.track(alert, partition)
        now = self.clock()
        for key in self._alerts:
            self._posted[key] = now - self.repost_s  # due at once: Alertmanager may not know it

    def settled(self, alert: dict[str, Any], outcome: Outcome, partition: int) -> None:
        if outcome is Outcome.DELIVERED:
            self.track(alert, partition)
            if alert.get("event_action") == "trigger":
                self._posted[str(alert["dedup_key"])] = self.clock()

    def starts_at(self, alert: dict[str, Any]) -> str | None:
        """The time of the trigger a resolve ends, if known."""
        held = self._alerts.get(str(alert.get("dedup_key")))
        return None if held is None else (held[1].get("payload") or {}).get("timestamp")

    def due(self, partitions: set[int]) -> list[tuple[str, list[dict[str, Any]]]]:
        """(dedup key, body) of the firing alerts of ``partitions`` not posted for
        ``repost_s``; marked posted."""
        now = self.clock()
        out = []
        for key, (partition, alert) in self._alerts.items():
            if partition in partitions and now - self._posted.get(key, 0.0) >= self.repost_s:
                out.append((key, am_body(alert, now, self.repost_s, self.links)))
                self._posted[key] = now
        return out
