"""State records for the changelog: encoded once, size-checked, split when large.

Every piece of state Sentinelle restores after a restart or a takeover is a
JSON object under a key of a changelog-backed Faust table. Kafka refuses a
record over the broker's ``max.message.bytes`` (1 MB by default), and a refused
write inside Faust stops the whole worker, so no record may grow with traffic.
State is kept small by design (bounded detectors, caps on models, series,
metrics and join entries; see docs/RUNNING.md, "Limits and guarantees"), and
:class:`Checkpointer` enforces the bound on what is written whatever happens:

- a record is encoded once (orjson) and its size known before it is sent;
- a record whose encoding is unchanged since its last write is not sent again;
- a record larger than ``chunk_bytes`` is split into base64 chunks under
  ``<key>\\x1fchunk\\x1f<parity>\\x1f<i>`` and a small manifest under the key,
  written last. Consecutive writes alternate the chunks' parity, so a worker
  that dies half-way through a write leaves the previous generation whole,
  and :func:`read` returns the last complete one (or nothing, never garbage).

Keys of the sub-records of a model (its label-join segments, chunks) extend
the model's key with ``\\x1f`` (the unit separator), which identifiers may not
contain (:mod:`streams.core.parse`). Every record carries ``kind`` and
``partition``, so a worker can tell a model's record from its parts and drop a
revoked partition's keys.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["SEP", "Checkpointer", "InputMarks", "Write", "read", "subkey"]

log = logging.getLogger("sentinelle.state")

SEP = "\x1f"


def subkey(key: str, *parts: object) -> str:
    """The key of a part of ``key``'s state.

    >>> subkey("fraud-scorer", "labels", 3)
    'fraud-scorer\\x1flabels\\x1f3'
    """
    return SEP.join([key, *map(str, parts)])


@dataclass(frozen=True, slots=True)
class Write:
    """One changelog record: ``value`` is the encoded JSON (None: a tombstone) and
    ``data`` what the table holds for the key afterwards."""

    partition: int
    key: str
    value: bytes | None
    data: dict[str, Any] | None


@dataclass(slots=True)
class _Chunked:
    gen: int                # generation of the chunks the manifest names
    parts: int              # chunks of that generation
    other: int              # chunks still stored under the other parity


@dataclass
class Checkpointer:
    """Encodes state records for the changelog (see the module docstring).

    Parameters
    ----------
    chunk_bytes
        Records encoded larger than this are split into chunks of this many
        bytes (each written as base64, 4/3 larger).
    """

    chunk_bytes: int = 512 * 1024
    _digests: dict[str, int] = field(default_factory=dict)
    _chunked: dict[str, _Chunked] = field(default_factory=dict)
    largest: int = 0           # the largest record written, in bytes
    chunked_writes: int = 0    # records that had to be split
    skipped: int = 0           # records not written: unchanged since the last write

    def writes(self, partition: int, key: str, value: dict[str, Any] | None,
               stored: Mapping[str, Any]) -> list[Write]:
        """The records that store ``value`` under ``key`` (None: delete it)."""
        if value is None:
            self._digests.pop(key, None)
            return [*self._drop_chunks(partition, key, stored), Write(partition, key, None, None)]
        data = orjson.dumps(value)
        digest = hash(data)
        if self._digests.get(key) == digest:
            self.skipped += 1
            return []
        self._digests[key] = digest
        if len(data) <= self.chunk_bytes:
            self.largest = max(self.largest, len(data))
            return [*self._drop_chunks(partition, key, stored), Write(partition, key, data, value)]
        return self._split(partition, key, data, stored)

    def _state(self, key: str, stored: Mapping[str, Any]) -> _Chunked | None:
        st = self._chunked.get(key)
        if st is None:
            manifest = stored.get(key)
            if isinstance(manifest, dict) and manifest.get("kind") == "chunked":
                st = _Chunked(int(manifest["gen"]), int(manifest["parts"]),
                              int(manifest.get("other", 0)))
        return st

    def _split(self, partition: int, key: str, data: bytes,
               stored: Mapping[str, Any]) -> list[Write]:
        before = self._state(key, stored)
        gen = before.gen + 1 if before is not None else 0
        pieces = [data[i:i + self.chunk_bytes] for i in range(0, len(data), self.chunk_bytes)]
        out = []
        for i, piece in enumerate(pieces):
            rec = {"kind": "chunk", "partition": partition, "of": key, "gen": gen,
                   "data": base64.b64encode(piece).decode("ascii")}
            out.append(self._encoded(partition, _chunk_key(key, gen, i), rec))
        # chunks of this parity left over from two generations ago
        stale = before.other if before is not None else 0
        out += [Write(partition, _chunk_key(key, gen, i), None, None)
                for i in range(len(pieces), stale)]
        st = _Chunked(gen, len(pieces), before.parts if before is not None else 0)
        self._chunked[key] = st
        manifest = {"kind": "chunked", "partition": partition, "gen": gen, "parts": st.parts,
                    "other": st.other, "bytes": len(data)}
        out.append(self._encoded(partition, key, manifest))
        self.chunked_writes += 1
        log.info("state %r is %d bytes: written in %d chunks", key[:80], len(data), len(pieces))
        return out

    def _encoded(self, partition: int, key: str, rec: dict[str, Any]) -> Write:
        data = orjson.dumps(rec)
        self.largest = max(self.largest, len(data))
        return Write(partition, key, data, rec)

    def _drop_chunks(self, partition: int, key: str, stored: Mapping[str, Any]) -> list[Write]:
        st = self._state(key, stored)
        self._chunked.pop(key, None)
        if st is None:
            return []
        return [Write(partition, _chunk_key(key, g, i), None, None)
                for g, n in ((st.gen, st.parts), (st.gen + 1, st.other)) for i in range(n)]

    def forget(self, keys: list[str]) -> None:
        """Keys this worker no longer owns (a revoked partition)."""
        for k in keys:
            self._digests.pop(k, None)
            self._chunked.pop(k, None)


def _chunk_key(key: str, gen: int, i: int) -> str:
    return subkey(key, "chunk", gen % 2, i)


def read(stored: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The value stored under ``key``: a plain record, or its chunks put together.

    A chunked record with a chunk missing or from another generation (a write
    cut short) reads as None, and the caller starts that state afresh.
    """
    value = stored.get(key)
    if not isinstance(value, dict):
        return None
    if value.get("kind") != "chunked":
        return value
    gen, parts = int(value["gen"]), int(value["parts"])
    pieces = []
    for i in range(parts):
        chunk = stored.get(_chunk_key(key, gen, i))
        if not isinstance(chunk, dict) or chunk.get("gen") != gen:
            log.warning("state %r: chunk %d of generation %d is missing; starting afresh",
                        key[:80], i, gen)
            return None
        pieces.append(base64.b64decode(chunk["data"]))
    try:
        out = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        log.warning("state %r: its chunks do not decode; starting afresh", key[:80])
        return None
    return out if isinstance(out, dict) else None


class InputMarks:
    """The last offset folded in, per input (topic, partition): a replay is skipped whole.

    Each key's own offsets already keep a replayed event from being folded
    twice; this mark also keeps a replayed message's dead letters (which may
    belong to no key at all) from being sent twice. It is stored as a small
    record per input partition (``\\x1finput\\x1f<topic>\\x1f<partition>``), on
    that partition, written after the micro-batch's other records so that, the
    producer keeping a partition's records in order, a mark on the changelog
    means the state it covers is there too.

    >>> marks = InputMarks()
    >>> marks.fresh("t", 0, 5, lambda key: None), marks.fresh("t", 0, 5, lambda key: None)
    (True, False)
    >>> [(p, rec["offset"]) for p, _, rec in marks.checkpoints()]
    [(0, 5)]
    """

    def __init__(self) -> None:
        self._marks: dict[tuple[str, int], int] = {}
        self._changed: set[tuple[str, int]] = set()

    @staticmethod
    def key(topic: str, partition: int) -> str:
        return subkey("", "input", topic, partition)

    def fresh(self, topic: str, partition: int, offset: int,
              saved: Callable[[str], dict[str, Any] | None]) -> bool:
        """Whether the message was not read before; if so, it is marked read."""
        where = (topic, partition)
        mark = self.last(topic, partition, saved)
        if offset <= mark:
            self._marks[where] = mark
            return False
        self._marks[where] = offset
        self._changed.add(where)
        return True

    def last(self, topic: str, partition: int,
             saved: Callable[[str], dict[str, Any] | None]) -> int:
        """The last offset folded in from the input (-1: none known).

        >>> marks, saved = InputMarks(), lambda key: {"offset": 7}
        >>> marks.last("t", 0, saved)
        7
        >>> marks.fresh("t", 0, 9, saved), marks.last("t", 0, saved)
        (True, 9)
        """
        mark = self._marks.get((topic, partition))
        if mark is None:
            rec = saved(self.key(topic, partition))
            mark = int(rec["offset"]) if rec is not None and "offset" in rec else -1
        return mark

    @contextmanager
    def undone_on_error(self) -> Iterator[None]:
        """The marks as they were before the block if it raises: a micro-batch that
        fails is read again message by message (:func:`streams.core.isolation.one_by_one`),
        and its messages must not look read already.

        >>> marks = InputMarks()
        >>> try:
        ...     with marks.undone_on_error():
        ...         read = marks.fresh("t", 0, 5, lambda key: None)
        ...         raise RuntimeError("a fault")
        ... except RuntimeError:
        ...     pass
        >>> marks.fresh("t", 0, 5, lambda key: None), marks.checkpoints()[0][2]["offset"]
        (True, 5)
        """
        marks, changed = dict(self._marks), set(self._changed)
        try:
            yield
        except BaseException:
            self._marks, self._changed = marks, changed
            raise

    def checkpoints(self) -> list[tuple[int, str, dict[str, Any]]]:
        """The marks moved since the last call, as state records."""
        out = [(p, self.key(t, p), {"kind": "input", "partition": p, "topic": t,
                                    "offset": self._marks[(t, p)]})
               for t, p in sorted(self._changed)]
        self._changed = set()
        return out

    def revoke(self, partitions: set[int]) -> None:
        for where in [w for w in self._marks if w[1] in partitions]:
            del self._marks[where]
            self._changed.discard(where)
