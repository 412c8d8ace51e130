"""The pieces of the Faust shell, each with its dependencies given: testable without a broker.

:mod:`streams.runtime.agents` wires them to Faust (agents, timers, tasks); here
they are plain classes, so a test hands them mocked topics and tables (Faust's
testing guide) and sees what would be published:

- :class:`Publisher` sends an outbox's outputs (dead letters, window statistics,
  alerts, commands, pool usage), each encoded and size-checked first, and its
  state through a :class:`StateWriter`;
- :class:`StateWriter` writes one state table's records through a
  :class:`~streams.core.state.Checkpointer` (size-checked, split when large,
  only when changed);
- :class:`ReferenceLoader` and :class:`SilenceLoader` take the records of the
  followed topics (``ml.references``, ``ml.silences``), dead-lettering what
  cannot be used;
- :class:`Lag` tells which input partitions the worker is catching up on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP, EventT
from prometheus_client import Counter as PromCounter

from alerting.manager import Silence
from detectors.contract import MAX_ALERT_BYTES
from streams.config import Settings
from streams.core.operations import OpsOutbox
from streams.core.parse import DeadLetter, raw_text
from streams.core.predictions import InMessage, Outbox
from streams.core.references import InvalidProfile, ReferenceStore
from streams.core.state import Checkpointer, read
from streams.runtime.metrics import Metrics

__all__ = ["Publisher", "StateWriter", "ReferenceLoader", "SilenceLoader", "Lag", "Gap", "Seen",
           "GapFiller", "BrokerFetch", "splice", "Health", "export_counts", "owned_records"]

log = logging.getLogger("sentinelle.worker")


class Sender(Protocol):
    """What the publisher needs of a Faust topic."""

    async def send(self, *, key: bytes | None, value: bytes) -> Any: ...


class Table(Protocol):
    """What the state writer needs of a Faust table."""

    data: Any

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> Any: ...


def export_counts(counter: PromCounter, counts: Counter[str], last: dict[str, int]) -> None:
    """Add what a plain counter gained since the last call to a Prometheus counter."""
    for name, n in counts.items():
        if n > last.get(name, 0):
            counter.labels(name).inc(n - last.get(name, 0))
            last[name] = n


class StateWriter:
    """Writes one state table's records through a :class:`Checkpointer`."""

    def __init__(self, table: Table, name: str, metrics: Metrics, chunk_bytes: int) -> None:
        self.table, self.name, self.metrics = table, name, metrics
        self.checkpointer = Checkpointer(chunk_bytes)
        self.bytes_written = 0  # since the worker started (sentinelle_changelog_bytes_total)

    def saved(self, key: str) -> dict[str, Any] | None:
        """The state stored under ``key`` (chunks put together), or None."""
        return read(self.table.data, key)

    def write(self, partition: int, key: str, value: dict[str, Any] | None) -> list[Any]:
        # One changelog record per key changed, on the key's own partition, sent
        # as encoded bytes. (Faust's ``table[key] = value`` would take the
        # partition from the current event, which a micro-batch does not have.)
        try:
            writes = self.checkpointer.writes(partition, key, value, self.table.data)
        except Exception:
            log.exception("state %r cannot be encoded; not written", key[:120])
            self.metrics.guards.labels("state_unencodable").inc()
            return []
        if not writes:
            self.metrics.state_writes.labels(self.name, "unchanged").inc()
            return []
        sent = []
        for w in writes:
            if w.data is None:
                self.table.data.pop(w.key, None)
            else:
                self.table.data[w.key] = w.data
            sent.append(self.table.send_changelog(w.partition, w.key, w.value,
                                                  value_serializer="raw"))
        self.metrics.state_writes.labels(self.name, "written").inc(len(writes))
        size = sum(len(w.value) for w in writes if w.value is not None)
        self.bytes_written += size
        self.metrics.changelog_bytes.labels(self.name).inc(size)
        if len(writes) > 2:
            self.metrics.state_writes.labels(self.name, "chunked").inc()
        self.metrics.state_largest.set(self.checkpointer.largest)
        return sent

    def forget(self, keys: list[str]) -> None:
        self.checkpointer.forget(keys)


def owned_records(data: Mapping[str, Any], actives: set[int]) -> list[tuple[str, Any]]:
    """The state records of the partitions this worker actively owns.

    A table also holds *standby* copies of other workers' partitions (Faust reads
    their changelogs too, so a takeover starts warm). The wall-clock timers load
    the models of their records that are not in memory yet (a partition taken
    over); taking a standby record for one's own would run a second, stale
    monitor of another worker's model, closing its windows early, publishing
    their statistics twice and raising outages for traffic it never sees.

    >>> owned_records({"a": {"partition": 0}, "b": {"partition": 1}, "c": "x"}, {0})
    [('a', {'partition': 0})]
    """
    return [(key, value) for key, value in list(data.items())
            if isinstance(value, dict) and value.get("partition") in actives]


@dataclass(frozen=True)
class Topics:
    """Where each kind of output goes."""

    deadletter: Sender
    stats: Sender
    alerts: Sender
    commands: Sender
    pool_usage: Sender


class Publisher:
    """Sends outboxes: outputs first, acknowledged by the broker, then state.

    The order of effects makes a crash replay rather than lose: a micro-batch's
    outputs (dead letters, window statistics, alerts, commands, pool usage) are
    sent and their delivery awaited, *then* the state records that say they
    were produced are written and their delivery awaited, and only then does
    the agent hand the micro-batch back to Faust, which acknowledges its
    messages and commits their offsets. A worker that dies at any point leaves
    either uncommitted input (read again by the next owner, whose state then
    skips what was folded) or outputs without their state (produced again on
    the replay: harmless, as ``dedup_key`` and ``command_id`` are stable; a
    window's statistics may then appear twice in ``ml.stats``).

    A send the broker does not acknowledge is tried again with a doubling
    backoff for up to ``delivery_timeout_s`` (the broker may be restarting),
    saying so in the log; past that, it is logged and counted
    (``sentinelle_outputs_dropped_total{kind="...",reason="send_failed"}``). An
    output that cannot be encoded (never one built from a parsed input; a
    safety net) or is larger than its bound (``limits.max_record_bytes``; 512 kB
    for an alert, the contract's) is logged, counted and skipped. None of these
    stops the worker.
    """

    def __init__(self, topics: Topics, models: StateWriter, operations: StateWriter,
                 metrics: Metrics, max_record_bytes: int, delivery_timeout_s: float = 300.0,
                 on_trouble: Callable[[bool], None] = lambda trouble: None) -> None:
        self.topics, self.models, self.operations = topics, models, operations
        self.metrics = metrics
        self.max_record_bytes = max_record_bytes
        self.delivery_timeout_s = delivery_timeout_s
        self.on_trouble = on_trouble  # told when deliveries start and stop failing
        self._trouble = False
        self.slow_after_s = 5.0       # an acknowledgement this late is trouble too

    def encode(self, kind: str, rec: Any, limit: int) -> bytes | None:
        try:
            data = orjson.dumps(rec)
        except TypeError as exc:
            log.error("%s not published: it cannot be encoded (%s)", kind, exc)
            self.metrics.outputs_dropped.labels(kind, "unencodable").inc()
            return None
        if len(data) > limit:
            log.error("%s not published: %d bytes > %d", kind, len(data), limit)
            self.metrics.outputs_dropped.labels(kind, "oversized").inc()
            return None
        return data

    async def publish(self, box: Outbox | OpsOutbox) -> None:
        t, m = self.topics, self.metrics
        out: list[tuple[Sender, str, bytes | None, bytes]] = []

        def add(topic: Sender, kind: str, key: bytes | None, rec: Any,
                limit: int | None = None) -> None:
            data = self.encode(kind, rec, self.max_record_bytes if limit is None else limit)
            if data is not None:
                out.append((topic, kind, key, data))

        for rec in box.deadletters:
            m.deadletters.labels(rec["topic"], rec["reason"].split(":", 1)[0]).inc()
            add(t.deadletter, "deadletter", None, rec)
        for model, rec in getattr(box, "stats", ()):
            m.windows.inc()
            add(t.stats, "stats", model.encode(), rec)
        for key, alert in box.alerts:
            m.alerts.labels(alert["payload"]["class"], alert["event_action"]).inc()
            log.info("alert %s %s: %s", alert["event_action"], key, alert["payload"]["summary"])
            add(t.alerts, "alert", alert["payload"]["component"].encode(), alert,
                min(MAX_ALERT_BYTES, self.max_record_bytes))
        for model, command in box.commands:
            m.commands.labels(command["action"], model).inc()
            log.info("command %s: %s", command["command_id"], command["reason"])
            add(t.commands, "command", model.encode(), command)
        if isinstance(box, OpsOutbox):
            for pool, points in box.pool_usage:  # re-keyed by pool: one message per pool
                add(t.pool_usage, "pool_usage", pool.encode(), points)
        await self._deliver(out)
        writer = self.models if isinstance(box, Outbox) else self.operations
        sent: list[Any] = []
        before = writer.bytes_written
        for partition, key, value in box.checkpoints:
            sent += writer.write(partition, key, value)
        if box.checkpoints:
            m.checkpoint_bytes.labels(writer.name).observe(writer.bytes_written - before)
        if isinstance(box, Outbox) and box.retired:
            m.forget_models(box.retired)  # their series leave the metrics page
        await self._settled(sent, "state")

    def _troubled(self, now: bool) -> None:
        if now != self._trouble:
            self._trouble = now
            self.on_trouble(now)

    async def _deliver(self, out: list[tuple[Sender, str, bytes | None, bytes]]) -> None:
        """Send every output and wait for the broker's acknowledgements, trying again
        what failed with a doubling backoff until ``delivery_timeout_s``."""
        give_up = time.monotonic() + self.delivery_timeout_s
        backoff = 0.5
        # a broker that neither takes nor refuses (stopped, partitioned away) makes the
        # worker not ready after a few seconds, long before the producer's own timeout
        slow = asyncio.get_running_loop().call_later(self.slow_after_s, self._troubled, True)
        try:
            await self._deliver_all(out, give_up, backoff)
        finally:
            slow.cancel()

    async def _deliver_all(self, out: list[tuple[Sender, str, bytes | None, bytes]],
                           give_up: float, backoff: float) -> None:
        while out:
            futures = []
            for topic, kind, key, data in out:
                try:
                    futures.append(await topic.send(key=key, value=data))
                except Exception as exc:  # refused at once (no broker, no metadata)
                    futures.append(exc)
            failed = []
            for item, fut in zip(out, futures, strict=True):
                error = fut if isinstance(fut, Exception) else await _outcome(fut)
                if error is not None:
                    failed.append((item, error))
            if not failed:
                self._troubled(False)
                return
            self._troubled(True)
            if time.monotonic() + backoff > give_up:
                for (_, kind, _, _), error in failed:
                    log.error("%s not published: the broker did not take it (%s)", kind, error)
                    self.metrics.outputs_dropped.labels(kind, "send_failed").inc()
                return
            log.warning("%d outputs not acknowledged (%s); trying again in %.1f s", len(failed),
                        failed[0][1], backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            out = [item for item, _ in failed]

    async def _settled(self, futures: list[Any], kind: str) -> None:
        """Wait for the changelog writes' acknowledgements (Faust's producer retries
        them), for at most ``delivery_timeout_s``: past that the worker goes on, and
        Faust's commit, which flushes its producer first, still commits no offset
        ahead of them."""
        waits = [asyncio.ensure_future(_outcome(f)) for f in futures]
        if not waits:
            return
        done, pending = await asyncio.wait(waits, timeout=self.delivery_timeout_s)
        for w in pending:
            w.cancel()
        errors = [w.result() for w in done if w.result() is not None]
        for error in errors:
            log.error("%s not written: %s", kind, error)
            self.metrics.outputs_dropped.labels(kind, "send_failed").inc()
        if not errors and not pending:
            self._troubled(False)  # the broker takes writes again
        if pending:
            log.warning("%d %s writes not acknowledged within %.0f s; going on", len(pending),
                        kind, self.delivery_timeout_s)
            self.metrics.outputs_dropped.labels(kind, "unacknowledged").inc(len(pending))

    async def dead(self, topic: str, partition: int, offset: int, reason: str,
                   value: bytes | None) -> None:
        """Dead-letter one record of a followed topic."""
        rec = DeadLetter(reason, raw_text(value or b"")).to_record(topic, partition, offset)
        await self.publish(Outbox(deadletters=[rec]))


async def _outcome(fut: Any) -> BaseException | None:
    """What became of a send: None when delivered, else its error."""
    if fut is None or not isinstance(fut, Awaitable):
        return None  # a test double, or nothing to wait for
    try:
        await asyncio.shield(fut)  # giving up waiting must not cancel the send itself
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
    return None


class ReferenceLoader:
    """``ml.references`` records into the reference store (calibrated off the event loop)."""

    def __init__(self, references: ReferenceStore, publisher: Publisher, topic: str,
                 metrics: Metrics) -> None:
        self.references, self.publisher, self.topic = references, publisher, topic
        self.metrics = metrics

    async def __call__(self, key: bytes | None, value: bytes | None, partition: int,
                       offset: int) -> None:
        if value is None:  # a tombstone: the profile was withdrawn
            model, _, version = (key or b"").decode(errors="replace").partition(":")
            self.references.remove(model, version)
            return
        try:
            doc = orjson.loads(value)
            # Calibration is CPU work (a bootstrap per feature): off the event loop.
            ref = await asyncio.to_thread(self.references.prepare, doc)
        except (orjson.JSONDecodeError, InvalidProfile) as exc:
            reason = str(exc) if isinstance(exc, InvalidProfile) else f"not_json: {exc}"
            await self.publisher.dead(self.topic, partition, offset, reason, value)
            return
        except Exception as exc:
            log.exception("reference %d/%d cannot be used", partition, offset)
            self.metrics.guards.labels("follower_errors").inc()
            await self.publisher.dead(self.topic, partition, offset,
                                      f"internal_error: {type(exc).__name__}: {exc}"[:500], value)
            return
        self.references.put(ref)


class SilenceLoader:
    """``ml.silences`` records into the silences every alert manager consults, within
    ``limits.max_silences`` (expired ones make room first)."""

    def __init__(self, silences: dict[str, Silence], publisher: Publisher, topic: str,
                 max_silences: int, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.silences, self.publisher, self.topic = silences, publisher, topic
        self.max_silences, self.metrics, self.clock = max_silences, metrics, clock

    async def __call__(self, key: bytes | None, value: bytes | None, partition: int,
                       offset: int) -> None:
        sid = (key or b"").decode(errors="replace")
        if value is None:
            self.silences.pop(sid, None)
            return
        try:
            silence = Silence.from_dict(orjson.loads(value))
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            await self.publisher.dead(self.topic, partition, offset,
                                      f"bad_value: not a silence: {exc}", value)
            return
        held = self.silences
        if silence.id not in held and len(held) >= self.max_silences:
            now = self.clock()
            for old in [k for k, v in held.items() if v.ends_at <= now]:
                del held[old]  # expired: no longer holds anything back
            if len(held) >= self.max_silences:
                self.metrics.guards.labels("refused_silences").inc()
                await self.publisher.dead(self.topic, partition, offset,
                                          f"over_capacity: limits.max_silences "
                                          f"({self.max_silences}) silences are active", value)
                return
        held[silence.id] = silence
        log.info("silence %s: %s until %s", silence.id, silence.matchers, silence.ends_at)


#: A partition whose last messages Faust fetched but has not handed over for this long
#: has a gap at its end (:meth:`Lag.tails`).
TAIL_AFTER_S = 15.0


@dataclass(frozen=True)
class Gap:
    """Offsets ``first..last`` of ``tp`` never handed over, found just before the
    slice's event number ``at`` (-1: at the end of the partition, :meth:`Lag.tails`)."""

    at: int
    tp: TP
    first: int
    last: int


@dataclass(frozen=True)
class Seen:
    """What :meth:`Lag.seen` found in a slice."""

    lost: int         # offsets handed over late into a gap not filled: lost
    gaps: list[Gap]   # offsets never handed over, in the slice's order


class Lag:
    """Which input partitions the worker is catching up on.

    A partition is behind when messages wait unread there and the last one read
    was produced more than a few seconds ago (a backlog, or a partition the
    consumer has not fetched from lately), or when the worker does not know yet
    (a partition just assigned, before its first fetch answers with its high
    watermark): its models' silence is not theirs, so no outage, no idle flush,
    no expiry there (see :meth:`streams.core.monitor.ModelMonitor.tick`).

    It also watches the order Faust hands messages over in: within one
    assignment a partition's offsets only go up. An offset at or below the
    highest one read so far (``rewinds``: Faust re-reads from the committed
    offset after a rebalance, and has known reorder bugs around one) is logged,
    as are a gap (``jumps``: offsets never handed over; normal only on a topic
    with transactions or compaction) and the first read of each partition, so a
    lost or doubled input can be traced. The worker fetches a gap's offsets again
    (:class:`GapFiller`) and tells :meth:`filled`; an offset handed over late into a
    gap not filled is an input lost (the state's marks skip it as read): logged as
    an error and counted (``input_reordered``).
    """

    def __init__(self, settings: Settings) -> None:
        self.read: dict[TP, tuple[int, float | None]] = {}  # last (offset, Kafka timestamp)
        self.late_by = max(2.0, 2 * settings.worker.batch_within_s)
        self.top: dict[TP, int] = {}  # the highest offset read in this assignment
        self.rewinds = 0  # offsets read at or below it: replays, or out of order
        self.jumps = 0    # offsets read past it by more than one: gaps
        self.gaps: dict[TP, deque[tuple[int, int]]] = {}  # the last 16 gaps, per partition
        self.handed: dict[TP, float] = {}  # when a message was last handed over (monotonic)
        self.tail_after_s = TAIL_AFTER_S

    def seen(self, events: Sequence[EventT],
             folded: Callable[[TP], int] | None = None) -> Seen:
        """Note what was read: the gaps found (each before the event that revealed it),
        and how many messages came out of order into an earlier gap (each one logged:
        the state's marks will skip it as read, so it is lost).

        ``folded(tp)``: the last offset of the partition the state has folded (-1:
        none), asked at the first message of an assignment; Faust starting past the
        next one (it committed an offset no agent saw) is a gap too."""
        read, top = self.read, self.top
        back: dict[TP, list[int]] = {}  # per partition: first offset re-read, after, count
        skip: dict[TP, list[int]] = {}  # per partition: first offsets jumped, count
        lost = 0
        found: list[Gap] = []
        handed, now = self.handed, time.monotonic()
        for i, e in enumerate(events):
            m = e.message
            high = top.get(m.tp)
            if high is None:
                log.info("%s[%d]: first message read at offset %d", m.tp.topic, m.tp.partition,
                         m.offset)
                mark = folded(m.tp) if folded is not None else -1
                if 0 <= mark < m.offset - 1:
                    found.append(self._gap(Gap(i, m.tp, mark + 1, m.offset - 1), skip))
            elif m.offset <= high:
                self.rewinds += 1
                back.setdefault(m.tp, [m.offset, high, 0])[2] += 1
                if self._fills_gap(m.tp, m.offset):
                    lost += 1
                    log.error("%s[%d]: offset %d handed over after %d, out of order: the "
                              "state's input marks skip it as read (a Faust reorder); this "
                              "input is not folded", m.tp.topic, m.tp.partition, m.offset, high)
            elif m.offset > high + 1:
                found.append(self._gap(Gap(i, m.tp, high + 1, m.offset - 1), skip))
            if high is None or m.offset > high:
                top[m.tp] = m.offset
            read[m.tp] = (m.offset, m.timestamp)
            handed[m.tp] = now
        for tp, (offset, after, n) in back.items():
            log.info("%s[%d]: offset %d read after %d (a replay, or out of order); %d such "
                     "in this slice", tp.topic, tp.partition, offset, after, n)
        for tp, (first, last, n) in skip.items():
            log.info("%s[%d]: offsets %d-%d not handed over (compacted, transaction markers, "
                     "or skipped); %d such gaps in this slice", tp.topic, tp.partition, first,
                     last, n)
        return Seen(lost, found)

    def _gap(self, gap: Gap, skip: dict[TP, list[int]]) -> Gap:
        """Note a gap: counted, logged (``skip``: per partition, the first one and how
        many), remembered so that an offset handed over late into it shows."""
        self.jumps += 1
        skip.setdefault(gap.tp, [gap.first, gap.last, 0])[2] += 1
        self.gaps.setdefault(gap.tp, deque(maxlen=16)).append((gap.first, gap.last))
        return gap

    def filled(self, messages: Iterable[InMessage]) -> None:
        """Offsets read again from the broker (:class:`GapFiller`): no longer gaps, so
        Faust handing one over later is a replay the marks skip, not a loss."""
        for m in messages:
            tp = TP(m.topic or "", m.partition)
            if m.offset > self.top.get(tp, m.offset):  # a tail (see tails)
                self.top[tp] = m.offset
                self.read[tp] = (m.offset, None)
            else:
                self._fills_gap(tp, m.offset)

    async def tails(self, consumer: Any, topics: set[str], now: float) -> list[Gap]:
        """Gaps at the end of partitions: offsets up to the high watermark that Faust has
        fetched (its position is past them) but not handed over for ``tail_after_s`` of
        ``now`` (monotonic). A gap in the middle shows when the next message arrives; one
        at the end shows only as a lag that never goes. Fetched again early (a worker
        far behind), they are folded and Faust's hand-over later is a replay."""
        out = []
        try:
            for tp in consumer.assignment():
                if tp.topic not in topics:
                    continue
                top, high = self.top.get(tp), consumer.highwater(tp)
                if top is None or high is None or top >= high - 1:
                    continue
                if now - self.handed.get(tp, now) < self.tail_after_s:
                    continue
                if await consumer.position(tp) < high:
                    continue  # not fetched yet: a backlog, not a gap
                out.append(Gap(-1, tp, top + 1, high - 1))
        except Exception:  # no consumer yet (starting, rebalancing)
            log.debug("no positions yet", exc_info=True)
        return out

    def _fills_gap(self, tp: TP, offset: int) -> bool:
        """Whether ``offset`` lies in a gap this assignment skipped (it is then taken out)."""
        gaps = self.gaps.get(tp)
        if not gaps:
            return False
        for i, (first, last) in enumerate(gaps):
            if first <= offset <= last:
                del gaps[i]
                gaps.extend(g for g in ((first, offset - 1), (offset + 1, last))
                            if g[0] <= g[1])
                return True
        return False

    def forget(self, revoked: Iterable[TP]) -> None:
        """A revoked partition's last read is stale: if it comes back, another worker
        may have read on from there."""
        for tp in revoked:
            self.read.pop(tp, None)
            self.top.pop(tp, None)
            self.gaps.pop(tp, None)
            self.handed.pop(tp, None)

    async def lags(self, consumer: Any, topics: set[str]) -> dict[tuple[str, int], int]:
        """Messages not yet processed per assigned partition of ``topics``: the high
        watermark minus the offset after the last one the agents took (the consumer's
        position before they took any); none while there is no consumer yet."""
        out: dict[tuple[str, int], int] = {}
        try:
            for tp in consumer.assignment():
                if tp.topic not in topics:
                    continue
                high = consumer.highwater(tp)
                done, _ = self.read.get(tp, (None, None))
                position = done + 1 if done is not None else await consumer.position(tp)
                if high is not None and position is not None:
                    out[(tp.topic, tp.partition)] = max(0, high - position)
        except Exception:  # no consumer yet (starting, rebalancing)
            log.debug("no highwater marks yet", exc_info=True)
        return out

    async def behind(self, consumer: Any, topics: set[str], now: float) -> set[int]:
        out = set()
        try:
            for tp in consumer.assignment():
                if tp.topic not in topics:
                    continue
                high = consumer.highwater(tp)
                if high is None:  # not fetched from yet (just assigned): unknown
                    out.add(tp.partition)
                    continue
                done, stamp = self.read.get(tp, (None, None))
                position = done + 1 if done is not None else await consumer.position(tp)
                if position is None or high <= position:
                    continue  # caught up
                if stamp is None or now - stamp > self.late_by:
                    out.add(tp.partition)
        except Exception:  # no consumer yet (starting, rebalancing): nobody is behind
            log.debug("no highwater marks yet", exc_info=True)
        return out


Fetch = Callable[[Gap], Awaitable[list[InMessage]]]


class GapFiller:
    """Reads again, straight from the broker, input offsets Faust never handed over.

    faust-streaming can let a message go by around a rebalance: its stream drops a
    message that arrives while flow control is paused, or fetched under an older
    generation, and acknowledges it all the same, so the offset is committed though
    no agent saw it (faust-streaming #216 and #221 are of that family). Seen on this
    project's takeover test, twice, each time just after the survivor was assigned
    the dead worker's partitions: one message in the middle of a partition never
    handed over, its neighbours folded, nothing dead-lettered. :class:`Lag` notices
    such a gap when the next offset arrives; this fetches the offsets in it (with a
    consumer of its own: no group, the worker's isolation level), and the worker
    folds them in their place, before the message that revealed the gap.

    Not every gap is a loss. A topic written with transactions has one at each
    commit marker, a compacted one wherever records were removed: such a gap
    fetches no record. After ``give_up_after`` gaps in a row that fetched nothing,
    a partition's gaps are taken for that and no longer fetched until it is
    assigned again. A gap wider than ``max_span`` offsets (a consumer reset, the
    retention) is not fetched either. A fetch that fails is logged and counted
    (``unfilled``): those offsets are lost, as they were before.
    """

    def __init__(self, fetch: Fetch, max_span: int = 100, timeout_s: float = 5.0,
                 give_up_after: int = 3) -> None:
        self.fetch = fetch
        self.max_span = max_span
        self.timeout_s = timeout_s
        self.give_up_after = give_up_after
        self.empty: dict[TP, int] = {}  # gaps in a row that fetched nothing, per partition
        self.refetched = 0  # messages fetched again and handed back
        self.unfilled = 0   # gaps whose fetch failed

    async def fill(self, gaps: Sequence[Gap]) -> dict[int, list[InMessage]]:
        """The messages of each gap, keyed by the index of the event they go before."""
        out: dict[int, list[InMessage]] = {}
        for gap in gaps:
            got = await self._one(gap)
            if got:
                out.setdefault(gap.at, []).extend(got)
        return out

    async def _one(self, gap: Gap) -> list[InMessage]:
        where = f"{gap.tp.topic}[{gap.tp.partition}]"
        if gap.last - gap.first + 1 > self.max_span:
            return []  # logged by Lag; a reset or the retention, not a lost message
        if self.empty.get(gap.tp, 0) >= self.give_up_after:
            return []
        try:
            async with asyncio.timeout(self.timeout_s):
                got = [m for m in await self.fetch(gap) if gap.first <= m.offset <= gap.last]
        except Exception:
            self.unfilled += 1
            log.warning("%s: offsets %d-%d were not handed over and could not be fetched "
                        "again: lost", where, gap.first, gap.last, exc_info=True)
            return []
        if not got:
            self.empty[gap.tp] = n = self.empty.get(gap.tp, 0) + 1
            if n == self.give_up_after:
                log.info("%s: %d gaps in a row held no record (transaction markers or "
                         "compaction): its gaps are no longer fetched until it is assigned "
                         "again", where, n)
            return []
        self.empty[gap.tp] = 0
        self.refetched += len(got)
        log.warning("%s: offsets %d-%d were not handed over by Faust; fetched again from "
                    "the broker (%d messages), folded in their place", where, gap.first,
                    gap.last, len(got))
        return got

    def forget(self, revoked: Iterable[TP]) -> None:
        for tp in revoked:
            self.empty.pop(tp, None)


def splice(messages: list[InMessage], extra: Mapping[int, list[InMessage]]
           ) -> list[InMessage]:
    """``messages`` with each ``extra[i]`` inserted before ``messages[i]``.

    >>> a, b, c = (InMessage(None, 0, o) for o in (1, 2, 3))
    >>> [m.offset for m in splice([a, c], {1: [b]})]
    [1, 2, 3]
    """
    if not extra:
        return messages
    out: list[InMessage] = []
    for i, m in enumerate(messages):
        out.extend(extra.get(i, ()))
        out.append(m)
    return out


class BrokerFetch:
    """:data:`Fetch` from the broker, for :class:`GapFiller`: a consumer without a group,
    started at the first gap, that reads a gap's offsets and stops past its end."""

    def __init__(self, servers: str, options: Mapping[str, Any],
                 isolation_level: str = "read_uncommitted") -> None:
        self.servers, self.options, self.isolation_level = servers, options, isolation_level
        self._consumer: Any = None

    async def __call__(self, gap: Gap) -> list[InMessage]:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.servers, group_id=None,
                                        enable_auto_commit=False,
                                        isolation_level=self.isolation_level,
                                        **self.options)
            await consumer.start()
            self._consumer = consumer
        consumer, tp = self._consumer, TopicPartition(gap.tp.topic, gap.tp.partition)
        consumer.assign([tp])
        consumer.seek(tp, gap.first)
        out: list[InMessage] = []
        while await consumer.position(tp) <= gap.last:
            batch = await consumer.getmany(tp, timeout_ms=500,
                                           max_records=gap.last - gap.first + 1)
            out.extend(InMessage(r.value, r.partition, r.offset, r.topic, r.key)
                       for r in batch.get(tp, ()) if r.offset <= gap.last)
        return out

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


class Health:
    """What the worker's ``/health`` and ``/ready`` pages say.

    Alive (``/health``, 200) while the event loop answers. Ready (``/ready``,
    200; else 503 with the reasons) once the reference profiles and the
    silences have been read to their end, the worker has joined its consumer
    group (not rebalancing) and restored the state of its partitions (not in
    recovery), and the broker takes its outputs. Kubernetes: the liveness probe
    on ``/health``, the readiness probe on ``/ready``.
    """

    def __init__(self, loaded: Callable[[], tuple[bool, bool]]) -> None:
        self.loaded = loaded                 # (profiles read, silences read)
        self.delivery_trouble = False        # the broker does not acknowledge outputs
        self.started = time.time()

    def trouble(self, now: bool) -> None:
        if now != self.delivery_trouble:
            log.warning("the broker %s", "does not acknowledge outputs: not ready" if now
                        else "acknowledges outputs again: ready")
        self.delivery_trouble = now

    def reasons(self, app: Any) -> list[str]:
        """Why the worker is not ready (none: it is)."""
        out = []
        profiles, silences = self.loaded()
        if not profiles:
            out.append("reading the reference profiles")
        if not silences:
            out.append("reading the silences")
        if getattr(app, "rebalancing", False):
            out.append("joining the consumer group (rebalancing)")
        if getattr(app, "in_recovery", False):
            out.append("restoring state from the changelog")
        if self.delivery_trouble:
            out.append("the broker does not acknowledge outputs")
        return out
