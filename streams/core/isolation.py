"""All-or-nothing folds: the input that fails is found by halving, and alone dead-lettered.

A key's state (a model's, a pipeline's, a metric series') folds a micro-batch's
inputs in one go, the fast path. If that raises, the state may be half
updated, so it goes back to what it was before the micro-batch (its last
checkpoint) and the inputs are folded again in halves: a half that folds is
kept, a half that raises is restored from a copy taken just before it and
halved again, down to single inputs, each of which either folds or is
dead-lettered with the error. One bad input among n costs O(log n) retries;
the others are folded exactly once, and nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["fold_isolated", "one_by_one"]

log = logging.getLogger("sentinelle.worker")


class Box(Protocol):
    def merge(self, other: Any) -> None: ...


S = TypeVar("S")
B = TypeVar("B", bound=Box)
M = TypeVar("M")


def fold_isolated(state: S, items: Sequence[int], fold: Callable[[S, Sequence[int], B], None],
                  new_box: Callable[[], B], box: B, dead: Callable[[int, Exception], None],
                  before: Callable[[S], S], copy: Callable[[S], S], name: str) -> S:
    """Fold ``items`` into ``state``; return the state to keep.

    ``fold(state, items, box)`` folds and writes outputs to ``box`` (or raises);
    ``before(state)`` is the state as it was before the micro-batch (given the
    half-updated one, to carry over what need not go back); ``copy(state)`` an
    independent copy; ``dead(item, exc)`` dead-letters one input.

    >>> def fold(total, items, out):
    ...     if 3 in items:
    ...         total.append(-1)  # a half-done update...
    ...         raise ValueError("bad input 3")
    ...     total.extend(items); out.extend(items)
    >>> class Out(list):
    ...     def merge(self, other): self.extend(other)
    >>> dead, out = [], Out()
    >>> fold_isolated([], list(range(6)), fold, Out, out, lambda i, e: dead.append(i),
    ...               lambda s: [], list, "demo")
    [0, 1, 2, 4, 5]
    >>> out, dead
    ([0, 1, 2, 4, 5], [3])
    """
    sub = new_box()
    try:
        fold(state, items, sub)
        box.merge(sub)
        return state
    except Exception:
        log.exception("%s: %d inputs failed together; folding them again in parts", name,
                      len(items))
    return _bisect(before(state), items, fold, new_box, box, dead, copy, name)


def _bisect(state: S, items: Sequence[int], fold: Callable[[S, Sequence[int], B], None],
            new_box: Callable[[], B], box: B, dead: Callable[[int, Exception], None],
            copy: Callable[[S], S], name: str) -> S:
    saved = copy(state)
    sub = new_box()
    try:
        fold(state, items, sub)
        box.merge(sub)
        return state
    except Exception as exc:
        if len(items) == 1:
            log.warning("%s: input %d dead-lettered: %s: %s", name, items[0],
                        type(exc).__name__, exc)
            dead(items[0], exc)
            return saved
    half = len(items) // 2
    state = _bisect(saved, items[:half], fold, new_box, box, dead, copy, name)
    return _bisect(state, items[half:], fold, new_box, box, dead, copy, name)


def one_by_one(process: Callable[[Sequence[M]], B], messages: Sequence[M],
               new_box: Callable[[], B], dead: Callable[[B, M, Exception], None],
               name: str) -> B:
    """``process(messages)``, with a last guard around what per-key isolation does not
    cover: if the micro-batch raises anyway, its messages are processed one at a time
    and ``dead(box, message, error)`` dead-letters any that raises again.

    >>> class Out(list):
    ...     def merge(self, other): self.extend(other)
    >>> def process(ms):
    ...     if "bad" in ms: raise ValueError("bad message")
    ...     return Out(m.upper() for m in ms)
    >>> one_by_one(process, ["a", "bad", "c"], Out, lambda b, m, e: b.append(f"dead {m}"),
    ...            "demo")
    ['A', 'dead bad', 'C']
    """
    try:
        return process(messages)
    except Exception:
        log.exception("%s: a micro-batch of %d messages failed; processing them one by one",
                      name, len(messages))
    box = new_box()
    for msg in messages:
        try:
            one = process([msg])
        except Exception as exc:
            log.exception("%s: a message failed alone; dead-lettered", name)
            dead(box, msg, exc)
            continue
        box.merge(one)
    return box
