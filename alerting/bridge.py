"""Alert bridges: ``ml.alerts`` to PagerDuty's Events API v2, or to any webhook.

At least once, in order: the bridge reads ``ml.alerts`` in its own consumer
group, posts one message at a time, and commits a message's offset only once the
endpoint has accepted it (2xx) or it has been dead-lettered. PagerDuty dedups on
``dedup_key``, so a message posted twice after a crash opens one incident.

What an answer means (:func:`classify`):

- 2xx: delivered;
- 429 and 5xx, or no answer at all: retried with exponential backoff (with
  jitter, honouring ``Retry-After``), for as long as it takes: a later alert is
  never sent before an earlier one (a resolve must not overtake its trigger);
- any other 4xx: the endpoint will never take it; it goes to ``ml.deadletter``
  with the status and the start of the answer, and the bridge moves on;
- a redirect (3xx) is not followed (following one would post the routing key
  to another address) and is final like a 4xx: dead-lettered with the status
  and the scheme and host of ``Location``.

Odd answers and odd records never stop the bridge: only the first 4 KiB of an
answer is read, decoded whatever its bytes; a ``Retry-After`` that says nothing
usable (:func:`parse_retry_after`) gives way to the normal backoff, and a huge
one is capped; a record that is not an alert, or one the bridge fails on in any
other way, is dead-lettered (:func:`settle`) and the bridge goes on.

The routing key comes from an environment variable and is added to the body
PagerDuty receives; it is never logged, echoed or dead-lettered, even when the
endpoint's answer repeats it. URLs are shown as scheme and host only
(:func:`redact_url`): a path or query can carry a token. A token bucket bounds
the request rate.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = ["Outcome", "classify", "parse_retry_after", "Backoff", "TokenBucket",
           "pagerduty_body", "slack_body", "redact_url", "scrub", "Delivery", "deliver",
           "Settled", "settle", "deadletter_record", "Post", "BodyOf"]

log = logging.getLogger("sentinelle.bridge")

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


class Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"
    EXPIRED = "expired"  # still undelivered at its maximum age: dead-lettered
    SKIPPED = "skipped"  # nothing to send for this record (``body_of`` gave None)


def classify(status: int | None) -> Outcome:
    """What an HTTP status (None: no answer) means for the message.

    A redirect (3xx; the bridge never follows one) is rejected like a 4xx.

    >>> [classify(s).value for s in (202, 429, 503, None, 400, 307)]
    ['delivered', 'retry', 'retry', 'retry', 'rejected', 'rejected']
    """
    if status is None or status == 429 or status >= 500:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    return Outcome.REJECTED


_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # ASCII digits only: not "²" or "٣"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait, or None if it says nothing usable.

    Either delta-seconds or an HTTP-date (RFC 9110, 10.2.3); ``now`` is the wall
    clock in epoch seconds. Garbage, a negative number and a date already past
    give None, and the caller keeps to its own backoff: a past date would mean
    "retry at once", again and again if the endpoint's clock is wrong. A huge
    value is returned as is; :meth:`Backoff.delay` caps it.

    >>> [parse_retry_after(v) for v in ("120", " 1.5 ", "soon", "-3", None)]
    [120.0, 1.5, None, None, None]
    >>> parse_retry_after("Thu, 01 Jan 1970 00:02:00 GMT", now=60.0)
    60.0
    """
    value = (value or "").strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": HTTP-dates are in GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return seconds if seconds > 0 else None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped; ``Retry-After`` wins when usable.

    A ``retry_after`` that is NaN or negative is ignored; any other is capped at
    ``cap_s``, so an endpoint cannot park the bridge.
    """

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        if retry_after is not None and retry_after >= 0:  # False for NaN
            return min(retry_after, self.cap_s)
        # 2 ** 64 is past any cap; 2 ** attempt itself would overflow a float
        # after about a thousand attempts (some 13 hours at a 60 s cap).
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 64))
        return (rng or random).uniform(ceiling / 2, ceiling)


class TokenBucket:
    """At most ``rate`` requests per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def wait_time(self) -> float:
        """Seconds to wait before the next request (0: go); takes the token when 0."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1 - 1e-9:  # not a wait of 1e-17 s that a clock cannot show
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


def pagerduty_body(alert: dict[str, Any], routing_key: str) -> dict[str, Any]:
    """The alert exactly as Sentinelle published it, plus the routing key."""
    return {**alert, "routing_key": routing_key}


def slack_body(alert: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text``) for the alert."""
    p = alert.get("payload", {})
    icon = ":red_circle:" if alert.get("event_action") == "trigger" else ":large_green_circle:"
    return {"text": f"{icon} [{p.get('severity', '?')}] {p.get('summary', '')} "
                    f"(`{alert.get('dedup_key', '')}`)"}


_HOST = re.compile(r"[A-Za-z0-9.\-_:%\[\]]+")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")


def redact_url(url: str) -> str:
    """Scheme, host and port of ``url``: never its credentials, path or query.

    >>> redact_url("https://user:pw@hooks.example.com/services/T0/B0/XyZ?token=1")
    'https://hooks.example.com'
    """
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(unparseable URL)"
    if not host:
        return "(no host)"
    if not _HOST.fullmatch(host):  # no control characters or spaces in a log line
        return "(unparseable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each secret replaced by ``***`` and each URL cut to its host.

    >>> scrub("key K3Y refused at https://x.io/a?t=1", ["K3Y"])
    'key *** refused at https://x.io'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URL.sub(lambda m: redact_url(m.group()), text)


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    status: int | None
    attempts: int
    detail: str = ""


#: Posts one JSON body (an object, or a list for Alertmanager): (status or None, the
#: start of the answer, Retry-After seconds).
Post = Callable[[Any], Awaitable[tuple[int | None, str, float | None]]]
#: An alert (or command) to the body posted; None: nothing to post for it.
BodyOf = Callable[[dict[str, Any]], Any]


def _secrets(body: Any) -> list[str]:
    """The routing key of a body, never to be logged or dead-lettered."""
    key = body.get("routing_key") if isinstance(body, dict) else None
    return [key] if isinstance(key, str) else []


async def deliver(body: Any, post: Post, backoff: Backoff = Backoff(),
                  bucket: TokenBucket | None = None,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                  give_up_at: float | None = None,
                  clock: Callable[[], float] = time.time) -> Delivery:
    """Post ``body`` until it is delivered or rejected (or, past ``give_up_at``, expired).

    ``post`` returns (status or None, the start of the answer, Retry-After
    seconds). The detail keeps the start of the answer, without the routing key
    (an endpoint may echo the request) or any URL's path and query. With
    ``give_up_at`` (a ``clock()`` time), a message that would be retried after it
    is :attr:`Outcome.EXPIRED` instead, with the last answer as its detail; it is
    always tried at least once.
    """
    secrets = _secrets(body)
    attempt = 0
    while True:
        if bucket is not None:
            while (wait := bucket.wait_time()) > 0:
                await sleep(wait)
        status, text, retry_after = await post(body)
        attempt += 1
        outcome = classify(status)
        if outcome is not Outcome.RETRY:
            return Delivery(outcome, status, attempt, scrub(text[:500], secrets))
        delay = backoff.delay(attempt - 1, retry_after)
        if give_up_at is not None and clock() + delay > give_up_at:
            last = status or f"nothing ({scrub(text[:200], secrets)})"
            return Delivery(Outcome.EXPIRED, status, attempt, f"last answer: {last}")
        log.warning("endpoint answered %s; retry %d in %.1f s",
                    status or f"nothing ({scrub(text[:200], secrets)})", attempt, delay)
        await sleep(delay)


@dataclass(frozen=True)
class Settled:
    """What became of one record: delivered, or rejected with a dead-letter ``reason``.

    ``alert`` is the record as parsed, or None when it was not a JSON object.
    """

    alert: dict[str, Any] | None
    outcome: Outcome
    reason: str = ""


async def settle(raw: bytes, body_of: BodyOf, post: Post,
                 backoff: Backoff = Backoff(), bucket: TokenBucket | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 give_up_at: float | None = None,
                 clock: Callable[[], float] = time.time) -> Settled:
    """Deliver one record of ``ml.alerts``; never raises (but for cancellation).

    A record that is not a JSON object, or on which anything fails (shaping
    the body, posting it), is settled as rejected with the reason to
    dead-letter it, so one bad record cannot stop the bridge or make it
    crash-loop on that record. The reason names the exception with its URLs
    cut to the host and without the routing key. ``body_of`` returning None
    settles the record as :attr:`Outcome.SKIPPED`; one still undelivered at
    ``give_up_at`` is :attr:`Outcome.EXPIRED`, with its reason, to dead-letter.
    """
    try:
        alert = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Settled(None, Outcome.REJECTED, f"not_json: {exc}")
    if not isinstance(alert, dict):
        return Settled(None, Outcome.REJECTED, "not_json: not an object")
    body: Any = None
    try:
        body = body_of(alert)
        if body is None:
            return Settled(alert, Outcome.SKIPPED)
        delivery = await deliver(body, post, backoff, bucket, sleep, give_up_at, clock)
    except Exception as exc:  # any failure on this one record: dead-letter it, go on
        secrets = _secrets(body)
        reason = scrub(f"error: {type(exc).__name__}: {exc}"[:500], secrets)
        log.error("could not forward %.200s (%s); dead-lettered", alert.get("dedup_key"),
                  reason)
        return Settled(alert, Outcome.REJECTED, reason)
    if delivery.outcome is Outcome.REJECTED:
        log.error("endpoint rejected %.200s with HTTP %s; dead-lettered", alert.get("dedup_key"),
                  delivery.status)
        return Settled(alert, Outcome.REJECTED,
                       f"rejected: HTTP {delivery.status}: {delivery.detail}")
    if delivery.outcome is Outcome.EXPIRED:
        log.error("gave up on %.200s after %d attempts: undelivered at its maximum age; "
                  "dead-lettered", alert.get("dedup_key"), delivery.attempts)
        return Settled(alert, Outcome.EXPIRED,
                       f"expired: undelivered at its maximum age (bridges.max_age_s) after "
                       f"{delivery.attempts} attempts; {delivery.detail}")
    return Settled(alert, delivery.outcome)


MAX_DEADLETTER_BYTES = 900_000  # under the 1 MiB a Kafka producer sends by default
MAX_RAW_CHARS = 65_536  # what is kept of a record too large to fit in its dead letter


def deadletter_record(topic: str, partition: int, offset: int, reason: str,
                      raw: bytes) -> dict[str, Any]:
    """The ``ml.deadletter`` message for a record of ``topic``.

    ``raw`` is the record as text, or base64 when it is not UTF-8. A record
    too large for its dead letter to fit in a Kafka message is cut to its
    first ``MAX_RAW_CHARS`` characters, with ``raw_truncated`` and
    ``raw_length`` added (as the worker does): otherwise producing the dead
    letter would fail on every restart.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = base64.b64encode(raw).decode("ascii")
    record: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset,
                              "reason": reason, "raw": text}
    if len(orjson.dumps(record)) > MAX_DEADLETTER_BYTES:  # an escaped character: <= 6 bytes
        record.update(raw=text[:MAX_RAW_CHARS], raw_truncated=True, raw_length=len(text))
    return record
