"""One micro-batch of ``ml.predictions`` messages, start to finish, without Kafka.

The agent in :mod:`streams.runtime.agents` only moves bytes: it hands the messages of a
micro-batch to :meth:`PredictionProcessor.process` and sends what comes back
(:class:`Outbox`): dead letters, window statistics, alert events, and one state
checkpoint per model touched. Everything here is plain Python, so it is unit
tested without a broker.

Exactly-once state over at-least-once delivery: each model's checkpoint records
the last input offset folded in, per partition; a message at or below it (a
replay after a crash, before the consumer offset was committed) is skipped for
that model instead of being counted twice.

Every input element is folded once or dead-lettered once. A model's fold of a
micro-batch is all or nothing: if it raises, the model's state goes back to its
last checkpoint and its events are folded again in halves, down to the one
that fails, which alone is dead-lettered (``internal_error``); other elements
and other models keep their windows, alerts and checkpoints. A model whose
checkpoint cannot be restored starts afresh, said in the log and counted
(``state_reset``): a worker never restarts into the same failure.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from alerting.manager import Silence
from detectors.contract import rfc3339
from detectors.quality import FeatureTable, as_rows, pick
from detectors.windows import WindowStats
from streams.config import Settings
from streams.core.isolation import fold_isolated, one_by_one
from streams.core.monitor import ModelMonitor, Output
from streams.core.parse import (
    UNCHECKED,
    DeadLetter,
    FeedbackColumns,
    Key,
    ParseLimits,
    PredictionColumns,
    internal_error,
    is_batch,
    parse_control,
    parse_feedback,
    parse_predictions,
    parse_singles,
    raw_text,
)
from streams.core.references import ReferenceStore
from streams.core.series import SeriesRows, series_rows
from streams.core.state import SEP, InputMarks, subkey

__all__ = ["InMessage", "Outbox", "PredictionProcessor", "stats_record", "parse_limits"]

Record = dict[str, Any]
Saved = Callable[[str], "Record | None"]

log = logging.getLogger("sentinelle.worker")


@dataclass(frozen=True, slots=True)
class InMessage:
    value: bytes | None
    partition: int
    offset: int
    topic: str | None = None  # None: the predictions topic
    key: Key = UNCHECKED      # the Kafka message key (UNCHECKED: not known, not checked)


def parse_limits(settings: Settings, now: float) -> ParseLimits:
    """What the parser accepts, for a micro-batch read at wall-clock time ``now``."""
    lim = settings.limits
    return ParseLimits(max_bytes=lim.max_message_bytes, max_events=lim.max_batch_events,
                       max_id_chars=lim.max_id_chars, max_features=lim.max_features
                       ).at(now, lim.max_future_s)


def _no_state(key: str) -> Record | None:
    return None


@dataclass(slots=True)
class Outbox:
    """What to publish after a micro-batch; keys are the model (or dedup key)."""

    deadletters: list[Record] = field(default_factory=list)
    stats: list[tuple[str, Record]] = field(default_factory=list)
    alerts: list[tuple[str, Record]] = field(default_factory=list)
    checkpoints: list[tuple[int, str, Record | None]] = field(default_factory=list)
    commands: list[tuple[str, Record]] = field(default_factory=list)
    events: int = 0
    # models whose state was dropped (expired, evicted): the worker's metrics forget them
    retired: list[str] = field(default_factory=list)

    def add(self, model: str, out: Output) -> None:
        self.stats.extend((model, stats_record(w)) for w in out.stats)
        self.alerts.extend((a["dedup_key"], a) for a in out.alerts)
        self.commands.extend((model, c) for c in out.commands)
        for canary, v in out.verdicts:
            log.info("canary %s %s, window ending %s: %s%s", model, canary,
                     v.evidence["window"]["end"] if "window" in v.evidence else "-", v.outcome,
                     f" ({'; '.join(v.reasons)})" if v.reasons else "")

    def merge(self, other: Outbox) -> None:
        self.deadletters += other.deadletters
        self.stats += other.stats
        self.alerts += other.alerts
        self.checkpoints += other.checkpoints
        self.commands += other.commands
        self.events += other.events
        self.retired += other.retired


def stats_record(w: WindowStats) -> Record:
    """The ``ml.stats`` message of one closed window (CONTRACT.md, `ml.stats`)."""
    return {
        "model": w.model, "version": w.version, "cohort": w.cohort,
        "window": {"start": rfc3339(w.start), "end": rfc3339(w.end)},
        "count": w.count, "errors": w.errors, "error_rate": round(w.error_rate, 6),
        "slow": w.slow,
        "latency_ms": {"p50": _num(w.p50), "p95": _num(w.p95), "p99": _num(w.p99),
                       "max": _num(w.max_latency)},
    }


def _num(x: float) -> float | None:
    return None if x != x else round(x, 3)  # NaN (empty) -> null


Fold = Callable[[ModelMonitor, Sequence[int], "Outbox"], None]
Dead = Callable[[int, Exception], Record]


class PredictionProcessor:
    """Parse, window, detect and alert for the models of the assigned partitions.

    ``counts`` (monotonic) says what went wrong or was bounded, for the
    worker's metrics: ``fold_errors``, ``tick_errors``, ``state_reset``,
    ``evicted_models``, ``evicted_series``, ``refused_models``, ``refused_series``.
    """

    def __init__(self, settings: Settings, topic: str,
                 references: ReferenceStore | None = None,
                 feedback_topic: str | None = None,
                 silences: dict[str, Silence] | None = None) -> None:
        self.settings = settings
        self.silences = silences if silences is not None else {}
        self.topic = topic
        self.feedback_topic = feedback_topic or settings.topics.feedback
        self.references = references
        self.monitors: dict[str, ModelMonitor] = {}  # least recently used first
        self.counts: Counter[str] = Counter()
        self.marks = InputMarks()
        t = settings.topics
        self.control_topics = {t.deployments: "deployment", t.approvals: "approval"}

    # -- the state of one model -------------------------------------------------

    def _restore(self, model: str, now: float, saved: Saved) -> ModelMonitor | None:
        """The model's last checkpoint, or None (none, or one that cannot be read)."""
        data = saved(model)
        if data is None:
            return None
        try:
            mon = ModelMonitor.from_dict(data, self.settings, now)
            meta = (data.get("labels") or {}).get("join")
            if meta:
                segments = {int(sid): saved(subkey(model, "labels", sid))
                            for sid in meta.get("segments", [])}
                mon.labels.join.load(meta, segments)
        except Exception:
            log.exception("model %s: its checkpoint cannot be restored; starting afresh", model)
            self.counts["state_reset"] += 1
            return None
        mon.book.silences = self.silences
        return mon

    def _fresh(self, model: str, partition: int) -> ModelMonitor:
        mon = ModelMonitor(model, self.settings, partition)
        mon.book.silences = self.silences
        return mon

    def monitor(self, model: str, partition: int, now: float, saved: Saved = _no_state,
                box: Outbox | None = None) -> ModelMonitor | None:
        """The model's monitor, restored or new; None when ``worker.max_models`` is
        reached and no model is idle enough to make room."""
        mon = self.monitors.pop(model, None)
        if mon is None:
            if len(self.monitors) >= self.settings.worker.max_models and \
                    not self._evict_one(now, box if box is not None else Outbox()):
                self.counts["refused_models"] += 1
                return None
            mon = self._restore(model, now, saved) or self._fresh(model, partition)
        self.monitors[model] = mon  # most recently used last
        return mon

    def _evict_one(self, now: float, box: Outbox) -> bool:
        """Drop the least recently seen model if it has been idle for ``idle_close_s``."""
        name, oldest = next(iter(self.monitors.items()))
        if now - oldest.last_arrival < self.settings.worker.idle_close_s:
            return False
        self._retire(oldest, f"evicted: the worker holds worker.max_models "
                             f"({self.settings.worker.max_models}) and this model was the "
                             f"least recently seen", now, box)
        self.counts["evicted_models"] += 1
        return True

    def _retire(self, mon: ModelMonitor, reason: str, now: float, box: Outbox) -> None:
        """Forget a model: resolve what fires, tombstone its state."""
        self.monitors.pop(mon.model, None)
        box.add(mon.model, Output(alerts=mon.retire(now, reason)))
        box.retired.append(mon.model)
        _, segments = mon.labels.join.checkpoint()
        sids = set(segments) | set(mon.labels.join.meta()["segments"])
        box.checkpoints.append((mon.partition, mon.model, None))
        box.checkpoints.extend((mon.partition, subkey(mon.model, "labels", sid), None)
                               for sid in sorted(sids))

    # -- a micro-batch ------------------------------------------------------------

    def process_safely(self, messages: Sequence[InMessage], now: float,
                       saved: Saved = _no_state) -> Outbox:
        """:meth:`process`, with a last guard around what per-model isolation does not
        cover: if the micro-batch raises anyway, its messages are processed one at a
        time and any message that raises again is dead-lettered (``internal_error``)."""
        def dead(box: Outbox, msg: InMessage, exc: Exception) -> None:
            box.deadletters.append(internal_error(msg.value, msg.topic or self.topic,
                                                  msg.partition, msg.offset, exc))
            # dead-lettered once: marked read, so that a replay does not send it again
            self.marks.fresh(msg.topic or self.topic, msg.partition, msg.offset, saved)
            box.checkpoints += self.marks.checkpoints()

        return one_by_one(lambda part: self.process(part, now, saved), messages, Outbox, dead,
                          "predictions")

    def process(self, messages: Sequence[InMessage], now: float,
                saved: Saved = _no_state) -> Outbox:
        with self.marks.undone_on_error():  # read again one by one (process_safely)
            return self._process(messages, now, saved)

    def _process(self, messages: Sequence[InMessage], now: float, saved: Saved) -> Outbox:
        box = Outbox()
        limits = parse_limits(self.settings, now)
        messages = [m for m in messages
                    if self.marks.fresh(m.topic or self.topic, m.partition, m.offset, saved)]
        # Control messages (deployments, approvals) are rare: they cut the
        # micro-batch into runs, so each acts exactly where it arrived.
        run: list[InMessage] = []
        for msg in messages:
            if msg.topic in self.control_topics:
                if run:
                    self._process_data(run, now, saved, box, limits)
                    run = []
                self._process_control(msg, now, saved, box, limits)
            else:
                run.append(msg)
        if run:
            self._process_data(run, now, saved, box, limits)
        box.checkpoints += self.marks.checkpoints()  # last: see streams.core.state.InputMarks
        return box

    def _process_data(self, messages: Sequence[InMessage], now: float, saved: Saved,
                      box: Outbox, limits: ParseLimits) -> None:
        cols = PredictionColumns()
        # Predictions first, then labels: a label can only join a prediction the
        # worker has seen (one that arrives before its prediction counts as unmatched).
        feedback = [m for m in messages if m.topic == self.feedback_topic]
        if feedback:
            messages = [m for m in messages if m.topic != self.feedback_topic]
        if not _singles(messages, cols, limits):
            for i, msg in enumerate(messages):
                for dl in parse_predictions(msg.value, cols, i, limits, msg.key):
                    box.deadletters.append(dl.to_record(self.topic, msg.partition,
                                                        msg.offset))
        if len(cols):
            frame = pl.DataFrame({
                "model": cols.model, "version": cols.version, "cohort": cols.cohort,
                "ts": cols.ts, "latency_ms": cols.latency_ms, "error": cols.error,
                "message": cols.message,
            }, schema_overrides={"ts": pl.Float64, "latency_ms": pl.Float64}
            ).with_row_index("row")
            where = (np.array([m.partition for m in messages], dtype=np.int64),
                     np.array([m.offset for m in messages], dtype=np.int64))
            for (model,), rows in frame.partition_by("model", as_dict=True,
                                                     maintain_order=True).items():
                self._predictions(str(model), rows, messages, cols, now, saved, box, where)
        if feedback:
            self._process_feedback(feedback, now, saved, box, limits)

    def _dead_rows(self, rows: Sequence[int], messages: Sequence[InMessage],
                   cols: PredictionColumns, reason: str) -> list[Record]:
        out = []
        for row in rows:
            msg = messages[cols.message[row]]
            dl = DeadLetter(reason, cols.text(row),
                            cols.element[row] if is_batch(msg.value) else None)
            out.append(dl.to_record(self.topic, msg.partition, msg.offset))
        return out

    def _predictions(self, model: str, rows: pl.DataFrame, messages: Sequence[InMessage],
                     cols: PredictionColumns, now: float, saved: Saved, box: Outbox,
                     where: tuple[np.ndarray, np.ndarray]) -> None:
        """Fold one model's rows; ``where``: each message's partition and offset."""
        idx = rows["message"].to_numpy()
        parts, offs = where[0][idx], where[1][idx]
        mon = self.monitor(model, int(parts[-1]), now, saved, box)
        if mon is None:
            box.deadletters += self._dead_rows(
                rows["row"].to_list(), messages, cols,
                f"over_capacity: this worker holds worker.max_models "
                f"({self.settings.worker.max_models}) models, none idle; add workers or raise "
                f"the cap")
            return
        done = np.full(parts.size, -1, dtype=np.int64)
        for p in np.unique(parts):
            done[parts == p] = mon.offsets.get(int(p), -1)
        fresh = offs > done
        if not fresh.all():
            rows = rows.filter(pl.Series(fresh))
        found = series_rows(rows)  # once, for admit and the fold
        groups: SeriesRows | None = found
        refused, alerts = mon.admit([pair for pair, _ in found], now)
        box.alerts.extend((a["dedup_key"], a) for a in alerts)
        if refused:
            self.counts["refused_series"] += len(refused)
            out = pl.Series([(v, c) in refused for v, c in
                             zip(rows["version"], rows["cohort"], strict=True)])
            box.deadletters += self._dead_rows(
                rows.filter(out)["row"].to_list(), messages, cols,
                f"over_capacity: model {model[:64]!r} has worker.max_series "
                f"({self.settings.worker.max_series}) version/cohort series, none idle")
            rows = rows.filter(~out)
            groups = None
        if rows.height:
            self._isolated(mon, list(range(rows.height)),
                           lambda m, pos, sub: self._fold(
                               m, rows if len(pos) == rows.height else rows[pos], messages,
                               cols, now, sub, groups if len(pos) == rows.height else None),
                           lambda pos, exc: self._dead_rows(
                               [int(rows["row"][pos])], messages, cols, _internal(exc))[0],
                           now, saved, box)
        mon = self.monitors.get(model, mon)
        for p in np.unique(parts):
            mon.offsets[int(p)] = max(mon.offsets.get(int(p), -1), int(offs[parts == p].max()))
        mon.partition = int(parts[-1])
        self._checkpoint(mon, now, box)

    def _fold(self, mon: ModelMonitor, rows: pl.DataFrame, messages: Sequence[InMessage],
              cols: PredictionColumns, now: float, box: Outbox,
              groups: SeriesRows | None = None) -> None:
        """Fold one model's rows in (all of them, or raise); ``groups``: their
        :func:`~streams.core.series.series_rows`, when known."""
        lookup = None
        if self.references is not None:
            store, model = self.references, mon.model
            lookup = lambda version: store.get(model, version)  # noqa: E731
        picked = as_rows(rows["row"].to_numpy())
        features = cols.features.take(picked) if isinstance(cols.features, FeatureTable) \
            else pick(cols.features, picked)
        out = mon.ingest(rows, now, features, pick(cols.prediction, picked),
                         lookup, pick(cols.event_id, picked), groups)
        late = np.flatnonzero(out.late) if out.late is not None else np.empty(0, dtype=int)
        box.events += rows.height - late.size
        box.add(mon.model, out)
        if late.size:
            reason = (f"late: its window closed before it arrived (watermark "
                      f"{rfc3339(mon.windows.watermark)}, allowed lateness "
                      f"{self.settings.windows.allowed_lateness_s:g} s)")
            box.deadletters += self._dead_rows([picked[r] for r in late.tolist()], messages, cols,
                                               reason)

    def _isolated(self, mon: ModelMonitor, items: Sequence[int], fold: Fold, dead: Dead,
                  now: float, saved: Saved, box: Outbox) -> None:
        """Fold ``items`` into ``mon``, all or nothing (:mod:`streams.core.isolation`)."""
        model = mon.model

        def before(broken: ModelMonitor) -> ModelMonitor:
            self.counts["fold_errors"] += 1
            back = self._restore(model, now, saved) or self._fresh(model, broken.partition)
            back.labels.join = broken.labels.join  # predictions are keyed: adding again is harmless
            return back

        def copy(m: ModelMonitor) -> ModelMonitor:
            back = ModelMonitor.from_dict(orjson.loads(orjson.dumps(m.to_dict())), self.settings,
                                          m._wall)
            back.book.silences = self.silences
            back.labels.join = m.labels.join
            return back

        def dead_letter(i: int, exc: Exception) -> None:
            box.deadletters.append(dead(i, exc))

        try:
            self.monitors[model] = fold_isolated(mon, items, fold, Outbox, box, dead_letter,
                                                 before, copy, f"model {model}")
        except Exception:  # the state cannot even be copied: start it afresh
            log.exception("model %s: its state cannot be recovered; starting afresh", model)
            self.counts["state_reset"] += 1
            self.monitors[model] = self._fresh(model, mon.partition)
            box.deadletters += [dead(i, RuntimeError("state reset")) for i in items]

    def _checkpoint(self, mon: ModelMonitor, now: float, box: Outbox) -> None:
        self.counts["refused_alerts"] += mon.book.refused  # past alerts.max_alerts
        mon.book.refused = 0
        try:
            state = mon.to_dict()
        except Exception:
            log.exception("model %s: its state cannot be written; starting afresh", mon.model)
            self.counts["state_reset"] += 1
            mon = self.monitors[mon.model] = self._fresh(mon.model, mon.partition)
            state = mon.to_dict()
        box.checkpoints.append((mon.partition, mon.model, state))
        labels = mon.labels
        if now - labels.join_saved_at >= self.settings.labels.join_checkpoint_s:
            _, changed = labels.join.checkpoint()
            for sid, rec in changed.items():
                box.checkpoints.append((mon.partition, subkey(mon.model, "labels", sid),
                                        None if rec is None else
                                        {"kind": "labels", "partition": mon.partition, **rec}))
            labels.join_saved_at = now

    def _process_feedback(self, messages: Sequence[InMessage], now: float, saved: Saved,
                          box: Outbox, limits: ParseLimits) -> None:
        cols = FeedbackColumns()
        if not _singles(messages, cols, limits):
            for i, msg in enumerate(messages):
                for dl in parse_feedback(msg.value, cols, i, limits, msg.key):
                    box.deadletters.append(dl.to_record(self.feedback_topic, msg.partition,
                                                        msg.offset))
        by_model: dict[str, list[int]] = {}
        if len(set(cols.model)) == 1:  # the usual case: labels of one model
            by_model[cols.model[0]] = list(range(len(cols)))
        else:
            for j, model in enumerate(cols.model):
                by_model.setdefault(model, []).append(j)
        # each label's message's partition and offset, looked up once
        message = np.asarray(cols.message, dtype=np.int64)
        partitions = np.array([m.partition for m in messages], dtype=np.int64)
        offsets = np.array([m.offset for m in messages], dtype=np.int64)
        for model, rows in by_model.items():
            at = message[rows]
            parts, offs = partitions[at], offsets[at]
            mon = self.monitor(model, int(parts[-1]), now, saved, box)
            if mon is None:
                box.deadletters += [self._dead_label(messages, cols, j, "over_capacity: this "
                                                     "worker holds worker.max_models models, "
                                                     "none idle") for j in rows]
                continue
            done = np.full(parts.size, -1, dtype=np.int64)
            for p in np.unique(parts):
                done[parts == p] = mon.feedback_offsets.get(int(p), -1)
            fresh = as_rows(np.asarray(rows, dtype=np.int64)[offs > done])
            if fresh:
                self._isolated(mon, fresh,
                               lambda m, js, sub: self._fold_labels(m, cols, js, now, sub),
                               lambda j, exc: self._dead_label(messages, cols, j, _internal(exc)),
                               now, saved, box)
            mon = self.monitors.get(model, mon)
            for p in np.unique(parts):
                mon.feedback_offsets[int(p)] = max(mon.feedback_offsets.get(int(p), -1),
                                                   int(offs[parts == p].max()))
            self._checkpoint(mon, now, box)

    def _fold_labels(self, mon: ModelMonitor, cols: FeedbackColumns, rows: Sequence[int],
                     now: float, box: Outbox) -> None:
        store, model = self.references, mon.model
        lookup = (lambda version: store.get(model, version)) if store is not None else None
        out = mon.ingest_labels(pick(cols.event_id, rows), pick(cols.ts, rows),
                                pick(cols.label, rows), now, lookup)
        box.add(model, out)

    def _dead_label(self, messages: Sequence[InMessage], cols: FeedbackColumns, j: int,
                    reason: str) -> Record:
        msg = messages[cols.message[j]]
        dl = DeadLetter(reason, cols.text(j),
                        cols.element[j] if is_batch(msg.value) else None)
        return dl.to_record(self.feedback_topic, msg.partition, msg.offset)

    def _process_control(self, msg: InMessage, now: float, saved: Saved, box: Outbox,
                         limits: ParseLimits) -> None:
        """``ml.deployments`` and ``ml.deploy.approvals``: the rollout state of models."""
        topic = msg.topic or ""
        kind = self.control_topics[topic]
        records: list[Record] = []
        for dl in parse_control(msg.value, kind, records, limits, msg.key,
                                approvers=self.settings.canary.approvers):
            box.deadletters.append(dl.to_record(topic, msg.partition, msg.offset))
        for model in dict.fromkeys(r["model"] for r in records):
            mon = self.monitor(model, msg.partition, now, saved, box)
            where = f"{topic}:{msg.partition}"
            if mon is None:
                box.deadletters.append(DeadLetter(
                    "over_capacity: this worker holds worker.max_models models, none idle",
                    raw_text(msg.value or b"")).to_record(topic, msg.partition, msg.offset))
                continue
            if msg.offset <= mon.control_offsets.get(where, -1):
                continue  # folded in before a restart
            mine = [r for r in records if r["model"] == model]

            def fold(m: ModelMonitor, _: Sequence[int], sub: Outbox) -> None:
                sub.add(model, m.ingest_control(kind, mine, now))  # noqa: B023

            self._isolated(mon, [0], fold, lambda _, exc: DeadLetter(
                _internal(exc), raw_text(msg.value or b"")).to_record(
                    topic, msg.partition, msg.offset), now, saved, box)
            mon = self.monitors.get(model, mon)
            mon.control_offsets[where] = msg.offset
            self._checkpoint(mon, now, box)

    # -- the wall clock -------------------------------------------------------------

    def tick(self, now: float, saved_models: Iterable[tuple[str, Any]],
             saved: Saved = _no_state, behind: Collection[int] = ()) -> Outbox:
        """Wall-clock checks for every model whose state this worker holds.

        ``saved_models`` are the state table's items: models restored there (a
        partition taken over) and not yet loaded are loaded, within the cap.
        ``behind``: input partitions with a backlog (the worker catching up),
        whose models' silence is not theirs (see :meth:`ModelMonitor.tick`). One
        model's failure is logged and counted, and the others go on.
        """
        box = Outbox()
        cap = self.settings.worker.max_models
        for key, data in saved_models:
            if SEP in key or key in self.monitors or not isinstance(data, dict) or \
                    data.get("kind") not in ("model", "chunked") or len(self.monitors) >= cap:
                continue
            mon = self._restore(key, now, saved if saved is not _no_state
                                else lambda k: data if k == key else None)
            if mon is not None:
                self.monitors[key] = mon
        for model, mon in list(self.monitors.items()):
            try:
                out = mon.tick(now, mon.partition in behind)
                if mon.expired(now):
                    box.add(model, out)
                    ttl = self.settings.worker.model_ttl_s
                    self._retire(mon, f"model quiet for {ttl:.0f} s; its state expired", now,
                                 box)
                    continue
                box.add(model, out)
                if out.stats or out.alerts or out.commands:
                    box.checkpoints.append((mon.partition, model, mon.to_dict()))
            except Exception:
                self.counts["tick_errors"] += 1
                log.exception("model %s: its wall-clock checks failed; the others go on", model)
        return box

    def revoke(self, partitions: set[int]) -> list[str]:
        """Forget models of partitions another worker now owns; return their names."""
        gone = [m for m, mon in self.monitors.items() if mon.partition in partitions]
        for m in gone:
            del self.monitors[m]
        self.marks.revoke(partitions)
        return gone


def _internal(exc: Exception) -> str:
    return f"internal_error: {type(exc).__name__}: {exc}"[:500]


def _singles(messages: Sequence[InMessage], cols: PredictionColumns | FeedbackColumns,
             limits: ParseLimits) -> bool:
    """Single-event messages (several, each an object) read together, column by column
    (:func:`~streams.core.parse.parse_singles`): True when all of them were valid
    events and are in ``cols``; else nothing was read (the caller reads them one by
    one, for each one's dead letters)."""
    if len(messages) < 2 or not all(m.value is not None and m.value[:1] == b"{"
                                    for m in messages):
        return False
    return parse_singles([m.value for m in messages], [m.key for m in messages], cols,
                         limits)
