"""Waiting in tests for state that only polling can see (an HTTP page, a scrape).

Where a test can await the thing itself (a message on a topic, a log line, an
event) it does; a page's answer has no such event, so it is asked again every
``every`` seconds until it is the one awaited, with a deadline whose failure
says what was awaited and what was seen last.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["poll"]

T = TypeVar("T")


async def poll(probe: Callable[[], T | Awaitable[T]], ok: Callable[[T], bool] = bool, *,
               what: str, timeout: float = 60.0, every: float = 0.2,
               show: Callable[[T], object] = lambda value: value) -> T:
    """``probe()`` (plain or async) until ``ok`` of its answer; that answer.

    After ``timeout`` seconds: ``AssertionError`` naming ``what`` and the last
    answer (as ``show`` puts it).

    >>> answers = iter([1, 2, 3])
    >>> asyncio.run(poll(lambda: next(answers), lambda n: n == 2, what="two", every=0))
    2
    """
    give_up = time.monotonic() + timeout
    while True:
        answer = probe()
        value: T = await answer if inspect.isawaitable(answer) else answer  # type: ignore[assignment]
        if ok(value):
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: not within {timeout} s; last seen {show(value)}")
        await asyncio.sleep(every)
