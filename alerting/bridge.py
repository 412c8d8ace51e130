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
  with the status and the start of the answer, and the bridge moves on.

The routing key comes from an environment variable and is added to the body
PagerDuty receives; it is never logged, echoed or dead-lettered. A token bucket
bounds the request rate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Outcome", "classify", "Backoff", "TokenBucket", "pagerduty_body", "slack_body",
           "Delivery", "deliver"]

log = logging.getLogger("sentinelle.bridge")

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


class Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


def classify(status: int | None) -> Outcome:
    """What an HTTP status (None: no answer) means for the message.

    >>> [classify(s).value for s in (202, 429, 503, None, 400)]
    ['delivered', 'retry', 'retry', 'retry', 'rejected']
    """
    if status is None or status == 429 or status >= 500:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    return Outcome.REJECTED


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped; ``Retry-After`` wins when given."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s)
        ceiling = min(self.cap_s, self.base_s * 2 ** attempt)
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
        if self._tokens >= 1:
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


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    status: int | None
    attempts: int
    detail: str = ""


Post = Callable[[dict[str, Any]], Awaitable[tuple[int | None, str, float | None]]]


async def deliver(body: dict[str, Any], post: Post, backoff: Backoff = Backoff(),
                  bucket: TokenBucket | None = None,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Delivery:
    """Post ``body`` until it is delivered or rejected.

    ``post`` returns (status or None, the start of the answer, Retry-After seconds).
    """
    attempt = 0
    while True:
        if bucket is not None:
            while (wait := bucket.wait_time()) > 0:
                await sleep(wait)
        status, text, retry_after = await post(body)
        attempt += 1
        outcome = classify(status)
        if outcome is not Outcome.RETRY:
            return Delivery(outcome, status, attempt, text[:500])
        delay = backoff.delay(attempt - 1, retry_after)
        log.warning("endpoint answered %s; retry %d in %.1f s", status or "nothing", attempt,
                    delay)
        await sleep(delay)
