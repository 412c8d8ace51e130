"""PagerDuty, fully: links, client, routing keys per rule, Change Events, PagerDuty's limits.

The rules only; :mod:`alerting.bridge_service` moves the messages and
``sentinelle bridge pagerduty`` (``streams/cli/bridge.py``) wires them:

- :func:`event_body`: an ``ml.alerts`` message as PagerDuty's Events API v2
  takes it: as published, plus ``routing_key``, ``client``, ``client_url`` and
  ``links`` (the class's runbook and the dashboard, see :mod:`alerting.links`);
  then kept within PagerDuty's limits: a ``dedup_key`` over 255 characters
  has its long parts hashed (:func:`short_dedup_key`; the readable key goes to
  ``custom_details.dedup_key``), and an event over 512 KB has its largest
  evidence replaced by a note of its size, ``custom_details.trimmed`` saying
  what was cut (:func:`fit`).
- :class:`Router`: the routing key of an alert, the first rule whose shell
  patterns on class, severity and model all match, else the default key. Keys
  come from the environment or a secret file and are never logged.
- :func:`change_event`: a rollback or a promotion of ``ml.deploy.commands`` as a
  Change Event (``/v2/change/enqueue``); pauses and promotions waiting for an
  approval are not changes yet and give None (skipped).
- :func:`per_key_rate`: at most ``per_minute`` requests per routing key
  (PagerDuty takes about 120 a minute per key), on top of the bridge's own rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson

from alerting.bridge import Post, TokenBucket
from alerting.links import Links, alert_fields, render

__all__ = ["Route", "Router", "event_body", "change_event", "short_dedup_key", "fit",
           "per_key_rate", "change_url", "MAX_EVENT_BYTES", "MAX_DEDUP_KEY_CHARS"]

MAX_EVENT_BYTES = 512 * 1024
MAX_DEDUP_KEY_CHARS = 255
MAX_SUMMARY_CHARS = 1024
_MARGIN = 1024  # what the note of a trim may add


@dataclass(frozen=True)
class Route:
    """A routing rule: shell patterns on ``class``, ``severity`` and ``model``; its key."""

    match: Mapping[str, str]
    routing_key: str

    def __repr__(self) -> str:  # never the key
        return f"Route(match={dict(self.match)!r}, routing_key=***)"


class Router:
    """The routing key of an alert or a command: the first matching rule, else the default.

    >>> r = Router([Route({"class": "canary_*"}, "K-DEPLOY"),
    ...             Route({"model": "fraud-*", "severity": "critical"}, "K-FRAUD")], "K-ALL")
    >>> [r.key_for({"class": c, "model": m, "severity": s}) for c, m, s in
    ...  [("canary_regression", "x", "info"), ("outage", "fraud-a", "critical"),
    ...   ("outage", "fraud-a", "error")]]
    ['K-DEPLOY', 'K-FRAUD', 'K-ALL']
    """

    def __init__(self, routes: Sequence[Route], default: str) -> None:
        self.routes, self.default = tuple(routes), default

    def key_for(self, fields: Mapping[str, str]) -> str:
        for route in self.routes:
            if all(fnmatchcase(fields.get(name, ""), pattern)
                   for name, pattern in route.match.items()):
                return route.routing_key
        return self.default

    def keys(self) -> list[str]:
        return [self.default, *(r.routing_key for r in self.routes)]

    def __repr__(self) -> str:
        return f"Router({len(self.routes)} rules, default=***)"


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def short_dedup_key(key: str, limit: int = MAX_DEDUP_KEY_CHARS) -> str:
    """``key`` if it fits; else each part over 40 characters becomes its start and a
    hash, and if that is still too long, the start of the key and a hash of all of it.
    The same key always gives the same short key (a resolve finds its trigger).

    >>> k = "feature_drift:m:v1:" + "x" * 300
    >>> s = short_dedup_key(k); len(s) <= 255, s.startswith("feature_drift:m:v1:xxxxxxxx~")
    (True, True)
    >>> short_dedup_key("outage:m")
    'outage:m'
    """
    if len(key) <= limit:
        return key
    short = ":".join(p if len(p) <= 40 else f"{p[:8]}~{_hash(p, 16)}" for p in key.split(":"))
    if len(short) > limit:
        short = f"{short[:limit - 33]}~{_hash(key, 32)}"
    return short


def fit(body: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """``body`` under ``limit`` bytes of JSON: its largest ``custom_details`` entries are
    replaced, largest first, by ``"(trimmed: N bytes)"`` until it fits, and
    ``custom_details.trimmed`` says so; the summary is cut to 1024 characters.

    >>> big = {"payload": {"summary": "s", "custom_details": {"a": "x" * 2000, "b": 1}}}
    >>> fit(big, limit=1500)["payload"]["custom_details"]["a"]
    '(trimmed: 2002 bytes)'
    """
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return body
    if isinstance(payload.get("summary"), str) and len(payload["summary"]) > MAX_SUMMARY_CHARS:
        payload = {**payload, "summary": payload["summary"][:MAX_SUMMARY_CHARS]}
        body = {**body, "payload": payload}
    size = len(orjson.dumps(body))
    details = payload.get("custom_details")
    if size <= limit or not isinstance(details, dict):
        return body
    sizes = {k: len(orjson.dumps(v)) for k, v in details.items()}
    trimmed = dict(details)
    cut: list[str] = []
    for name in sorted(sizes, key=lambda k: sizes[k], reverse=True):
        trimmed[name] = f"(trimmed: {sizes[name]} bytes)"
        cut.append(name)
        trimmed["trimmed"] = (f"evidence cut to fit PagerDuty's 512 KB event limit: "
                              f"{', '.join(cut)[:500]} (the event was {size} bytes; the whole "
                              f"alert is on ml.alerts)")
        out = {**body, "payload": {**payload, "custom_details": trimmed}}
        if len(orjson.dumps(out)) <= limit - _MARGIN:
            return out
    return {**body, "payload": {**payload, "custom_details": {
        "trimmed": f"evidence dropped to fit PagerDuty's 512 KB event limit (the event was "
                   f"{size} bytes; the whole alert is on ml.alerts)"}}}


def _links(links: Links, fields: Mapping[str, str]) -> list[dict[str, str]]:
    out = []
    if (runbook := links.runbook_for(fields)) is not None:
        out.append({"href": runbook, "text": f"Runbook: {fields.get('class', '')}"})
    if (dashboard := links.dashboard_for(fields)) is not None:
        out.append({"href": dashboard, "text": f"Dashboard: {fields.get('model', '')}"})
    return out


def event_body(alert: dict[str, Any], router: Router, links: Links = Links(),
               client: str = "Sentinelle", client_url: str | None = None) -> dict[str, Any]:
    """The Events API v2 body of an ``ml.alerts`` message (see the module docstring)."""
    fields = alert_fields(alert)
    body: dict[str, Any] = {**alert, "routing_key": router.key_for(fields), "client": client}
    if client_url:
        body["client_url"] = render(client_url, fields)
    if extra := _links(links, fields):
        body["links"] = [*(alert.get("links") or []), *extra]
    key = str(alert.get("dedup_key") or "")
    short = short_dedup_key(key)
    if short != key:
        body["dedup_key"] = short
        payload = body.get("payload")
        if isinstance(payload, dict):
            details = payload.get("custom_details")
            details = dict(details) if isinstance(details, dict) else {}
            details["dedup_key"] = key
            body["payload"] = {**payload, "custom_details": details}
    return fit(body)


def change_event(command: dict[str, Any], router: Router, links: Links = Links()
                 ) -> dict[str, Any] | None:
    """A Change Event for a rollback or a promotion of ``ml.deploy.commands``; None for
    anything else (a pause, a promotion waiting for an approval, not a command)."""
    action = command.get("action")
    if action not in ("rollback", "promote") or command.get("requires_approval"):
        return None
    model = str(command.get("model") or "")
    old, new = str(command.get("from_version") or ""), str(command.get("to_version") or "")
    if action == "rollback":
        summary = f"{model}: rolled back {old} to {new}"
    else:
        summary = f"{model}: promoted {new} to {command.get('traffic_percent', '?')} % of traffic"
    reason = command.get("reason")
    if reason:
        summary = f"{summary}: {reason}"
    fields = {"model": model, "version": old if action == "rollback" else new,
              "class": "canary_regression" if action == "rollback" else "",
              "severity": "", "dedup_key": str(command.get("command_id") or "")}
    body: dict[str, Any] = {
        "routing_key": router.key_for(fields),
        "payload": {"summary": summary[:MAX_SUMMARY_CHARS], "source": f"{model}@{new}",
                    "timestamp": command.get("issued_at"),
                    "custom_details": {k: v for k, v in command.items() if k != "reason"}},
    }
    if extra := _links(links, fields):
        body["links"] = extra
    return fit(body)


def change_url(events_url: str) -> str:
    """The Change Events endpoint next to an Events API endpoint.

    >>> change_url("https://events.pagerduty.com/v2/enqueue")
    'https://events.pagerduty.com/v2/change/enqueue'
    """
    head, sep, tail = events_url.rpartition("/v2/enqueue")
    return f"{head}/v2/change/enqueue{tail}" if sep else events_url.rstrip("/") + "/change"


def per_key_rate(post: Post, per_minute: float, burst: int = 10,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 buckets: dict[str, TokenBucket] | None = None) -> Post:
    """``post``, waiting so that no routing key gets more than ``burst + per_minute``
    requests in any minute (110 and 10: PagerDuty's ~120). Posters that share
    ``buckets`` (alerts and Change Events) share each key's budget."""
    buckets = {} if buckets is None else buckets

    async def limited(body: Any) -> tuple[int | None, str, float | None]:
        key = body.get("routing_key", "") if isinstance(body, dict) else ""
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(per_minute / 60.0, burst, clock)
        while (wait := bucket.wait_time()) > 0:
            await sleep(wait)
        return await post(body)

    return limited
