"""One micro-batch of ``ml.predictions`` messages, start to finish, without Kafka.

The agent in :mod:`streams.agents` only moves bytes: it hands the messages of a
micro-batch to :meth:`PredictionPipeline.process` and sends what comes back
(:class:`Outbox`): dead letters, window statistics, alert events, and one state
checkpoint per model touched. Everything here is plain Python, so it is unit
tested without a broker.

Exactly-once state over at-least-once delivery: each model's checkpoint records
the last input offset folded in, per partition; a message at or below it (a
replay after a crash, before the consumer offset was committed) is skipped for
that model instead of being counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from alerting.events import rfc3339
from alerting.manager import Silence
from detectors.windows import WindowStats
from streams.config import Settings
from streams.monitor import ModelMonitor, Output
from streams.parse import (
    DeadLetter,
    FeedbackColumns,
    PredictionColumns,
    parse_control,
    parse_feedback,
    parse_predictions,
    raw_text,
)
from streams.references import ReferenceStore

__all__ = ["InMessage", "Outbox", "PredictionPipeline", "stats_record"]

Record = dict[str, Any]

log = logging.getLogger("sentinelle.worker")


@dataclass(frozen=True, slots=True)
class InMessage:
    value: bytes | None
    partition: int
    offset: int
    topic: str | None = None  # None: the predictions topic


LABELS_SUFFIX = "#labels"  # state-table key of a model's label-join buffer


@dataclass(slots=True)
class Outbox:
    """What to publish after a micro-batch; keys are the model (or dedup key)."""

    deadletters: list[Record] = field(default_factory=list)
    stats: list[tuple[str, Record]] = field(default_factory=list)
    alerts: list[tuple[str, Record]] = field(default_factory=list)
    checkpoints: list[tuple[int, str, Record | None]] = field(default_factory=list)
    commands: list[tuple[str, Record]] = field(default_factory=list)
    events: int = 0

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


def stats_record(w: WindowStats) -> Record:
    """The ``ml.stats`` message of one closed window (documented in the README)."""
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


class PredictionPipeline:
    """Parse, window, detect and alert for the models of the assigned partitions."""

    def __init__(self, settings: Settings, topic: str,
                 references: ReferenceStore | None = None,
                 feedback_topic: str | None = None,
                 silences: dict[str, Silence] | None = None) -> None:
        self.settings = settings
        self.silences = silences if silences is not None else {}
        self.topic = topic
        self.feedback_topic = feedback_topic or settings.topics.feedback
        self.references = references
        self.monitors: dict[str, ModelMonitor] = {}
        t = settings.topics
        self.control_topics = {t.deployments: "deployment", t.approvals: "approval"}

    def monitor(self, model: str, partition: int, now: float,
                saved: Callable[[str], Record | None]) -> ModelMonitor:
        mon = self.monitors.get(model)
        if mon is None:
            data = saved(model)
            mon = (ModelMonitor.from_dict(data, self.settings, now) if data is not None
                   else ModelMonitor(model, self.settings, partition))
            mon.book.silences = self.silences
            join = saved(model + LABELS_SUFFIX)
            if join is not None and "waiting" in join:
                mon.labels.join.load_dict(join)
            self.monitors[model] = mon
        return mon

    def process_safely(self, messages: Sequence[InMessage], now: float,
                       saved: Callable[[str], Record | None] = lambda m: None) -> Outbox:
        """:meth:`process`, but a bug met on some input costs only that input.

        If the micro-batch raises, its messages are processed one at a time and
        any message that raises again is dead-lettered (``internal_error``)
        instead of stopping the worker in a crash loop on the same batch.
        """
        try:
            return self.process(messages, now, saved)
        except Exception:
            log.exception("a micro-batch of %d messages failed; retrying one by one",
                          len(messages))
        box = Outbox()
        for msg in messages:
            try:
                one = self.process([msg], now, saved)
            except Exception as exc:
                log.exception("message %s/%s failed; dead-lettered", msg.partition, msg.offset)
                topic = msg.topic or self.topic
                box.deadletters.append(DeadLetter(
                    f"internal_error: {type(exc).__name__}: {exc}"[:500],
                    raw_text(msg.value or b"")).to_record(topic, msg.partition, msg.offset))
                continue
            box.merge(one)
        return box

    def process(self, messages: Sequence[InMessage], now: float,
                saved: Callable[[str], Record | None] = lambda m: None) -> Outbox:
        box = Outbox()
        # Control messages (deployments, approvals) are rare: they cut the
        # micro-batch into runs, so each acts exactly where it arrived.
        run: list[InMessage] = []
        for msg in messages:
            if msg.topic in self.control_topics:
                if run:
                    self._process_data(run, now, saved, box)
                    run = []
                self._process_control([msg], now, saved, box)
            else:
                run.append(msg)
        if run:
            self._process_data(run, now, saved, box)
        return box

    def _process_data(self, messages: Sequence[InMessage], now: float,
                      saved: Callable[[str], Record | None], box: Outbox) -> None:
        cols = PredictionColumns()
        lim = self.settings.limits
        # Predictions first, then labels: a label can only join a prediction the
        # worker has seen (one that arrives before its prediction counts as unmatched).
        feedback = [m for m in messages if m.topic == self.feedback_topic]
        if feedback:
            messages = [m for m in messages if m.topic != self.feedback_topic]
        for i, msg in enumerate(messages):
            for dl in parse_predictions(msg.value, cols, i, lim.max_message_bytes,
                                          lim.max_batch_events):
                box.deadletters.append(dl.to_record(self.topic, msg.partition, msg.offset))
        if len(cols):
            self._process_predictions(cols, messages, now, saved, box)
        if feedback:
            self._process_feedback(feedback, now, saved, box)

    def _process_predictions(self, cols: PredictionColumns, messages: Sequence[InMessage],
                             now: float, saved: Callable[[str], Record | None],
                             box: Outbox) -> None:
        frame = pl.DataFrame({
            "model": cols.model, "version": cols.version, "cohort": cols.cohort,
            "ts": cols.ts, "latency_ms": cols.latency_ms, "error": cols.error,
            "message": cols.message, "element": cols.element,
        }, schema_overrides={"ts": pl.Float64, "latency_ms": pl.Float64}).with_row_index("row")
        by_model = frame.partition_by("model", as_dict=True, maintain_order=True)
        for (model,), rows in by_model.items():
            self._process_model(str(model), rows, messages, now, saved, box, cols)

    def _process_model(self, model: str, rows: pl.DataFrame, messages: Sequence[InMessage],
                       now: float, saved: Callable[[str], Record | None], box: Outbox,
                       cols: PredictionColumns) -> None:
        idx = rows["message"].to_numpy()
        parts = np.fromiter((messages[i].partition for i in idx), dtype=np.int64, count=len(idx))
        offs = np.fromiter((messages[i].offset for i in idx), dtype=np.int64, count=len(idx))
        mon = self.monitor(model, int(parts[-1]), now, saved)
        done = np.array([mon.offsets.get(int(p), -1) for p in parts], dtype=np.int64)
        fresh = offs > done
        if not fresh.all():
            rows, parts, offs = rows.filter(pl.Series(fresh)), parts[fresh], offs[fresh]
            if rows.height == 0:
                return
        lookup = None
        if self.references is not None:
            store = self.references
            lookup = lambda version: store.get(model, version)  # noqa: E731
        picked = rows["row"].to_list()
        out = mon.ingest(rows, now, [cols.features[i] for i in picked],
                         [cols.prediction[i] for i in picked], lookup,
                         [cols.event_id[i] for i in picked])
        box.events += rows.height
        box.add(model, out)
        if out.late is not None and out.late.any():
            wm = rfc3339(mon.windows.watermark)
            for r in np.flatnonzero(out.late):
                msg = messages[int(idx[r])]
                el = int(rows["element"][int(r)])
                box.deadletters.append(self._late(msg, el, wm))
        for p in np.unique(parts):
            mon.offsets[int(p)] = int(offs[parts == p].max())
        mon.partition = int(parts[-1])
        self._checkpoint(mon, now, box)

    def _checkpoint(self, mon: ModelMonitor, now: float, box: Outbox) -> None:
        box.checkpoints.append((mon.partition, mon.model, mon.to_dict()))
        labels = mon.labels
        due = now - labels.join_saved_at >= self.settings.labels.join_checkpoint_s
        if len(labels.join) and due:
            box.checkpoints.append((mon.partition, mon.model + LABELS_SUFFIX,
                                    {"partition": mon.partition, **labels.join.to_dict()}))
            labels.join_saved_at = now

    def _process_feedback(self, messages: Sequence[InMessage], now: float,
                          saved: Callable[[str], Record | None], box: Outbox) -> None:
        lim = self.settings.limits
        cols = FeedbackColumns()
        where: list[int] = []
        for i, msg in enumerate(messages):
            before = len(cols)
            for dl in parse_feedback(msg.value, cols, i, lim.max_message_bytes,
                                     lim.max_batch_events):
                box.deadletters.append(dl.to_record(self.feedback_topic, msg.partition,
                                                    msg.offset))
            where.extend([i] * (len(cols) - before))
        by_model: dict[str, list[int]] = {}
        for j, model in enumerate(cols.model):
            by_model.setdefault(model, []).append(j)
        for model, rows in by_model.items():
            msgs = [messages[where[j]] for j in rows]
            mon = self.monitor(model, msgs[-1].partition, now, saved)
            fresh = [j for j, m in zip(rows, msgs, strict=True)
                     if m.offset > mon.feedback_offsets.get(m.partition, -1)]
            for m in msgs:
                mon.feedback_offsets[m.partition] = max(mon.feedback_offsets.get(m.partition, -1),
                                                        m.offset)
            if not fresh:
                continue
            store = self.references
            lookup = (lambda version: store.get(model, version)) if store is not None else None
            out = mon.ingest_labels([cols.event_id[j] for j in fresh], [cols.ts[j] for j in fresh],
                                    [cols.label[j] for j in fresh], now, lookup)
            box.add(model, out)
            self._checkpoint(mon, now, box)

    def _process_control(self, messages: Sequence[InMessage], now: float,
                         saved: Callable[[str], Record | None], box: Outbox) -> None:
        """``ml.deployments`` and ``ml.deploy.approvals``: the rollout state of models."""
        for msg in messages:
            topic = msg.topic or ""
            kind = self.control_topics[topic]
            records: list[Record] = []
            for dl in parse_control(msg.value, kind, records,
                                    self.settings.limits.max_message_bytes):
                box.deadletters.append(dl.to_record(topic, msg.partition, msg.offset))
            for model in dict.fromkeys(r["model"] for r in records):
                mon = self.monitor(model, msg.partition, now, saved)
                where = f"{topic}:{msg.partition}"
                if msg.offset <= mon.control_offsets.get(where, -1):
                    continue  # folded in before a restart
                mon.control_offsets[where] = msg.offset
                out = mon.ingest_control(kind, [r for r in records if r["model"] == model], now)
                box.add(model, out)
                self._checkpoint(mon, now, box)

    def _late(self, msg: InMessage, element: int, watermark: str) -> Record:
        reason = (f"late: its window closed before it arrived "
                  f"(watermark {watermark}, allowed lateness "
                  f"{self.settings.windows.allowed_lateness_s:g} s)")
        raw = msg.value or b""
        doc = orjson.loads(raw)
        if isinstance(doc, list):
            dl = DeadLetter(reason, orjson.dumps(doc[element]).decode(), element)
        else:
            dl = DeadLetter(reason, raw.decode("utf-8"))
        return dl.to_record(self.topic, msg.partition, msg.offset)

    def tick(self, now: float, saved_models: Iterable[tuple[str, Record]]) -> Outbox:
        """Wall-clock checks for every model whose state this worker holds."""
        box = Outbox()
        for model, data in saved_models:
            if model.endswith(LABELS_SUFFIX):
                continue  # loaded with its model
            if model not in self.monitors and data is not None:
                mon = self.monitors[model] = ModelMonitor.from_dict(data, self.settings, now)
                mon.book.silences = self.silences
        for model, mon in list(self.monitors.items()):
            out = mon.tick(now)
            if mon.expired(now):
                out.alerts.extend(mon.retire(now))
                del self.monitors[model]
                box.add(model, out)
                box.checkpoints.append((mon.partition, model, None))
                box.checkpoints.append((mon.partition, model + LABELS_SUFFIX, None))
                continue
            box.add(model, out)
            if out.stats or out.alerts or out.commands:
                box.checkpoints.append((mon.partition, model, mon.to_dict()))
        return box

    def revoke(self, partitions: set[int]) -> list[str]:
        """Forget models of partitions another worker now owns; return their names."""
        gone = [m for m, mon in self.monitors.items() if mon.partition in partitions]
        for m in gone:
            del self.monitors[m]
        return gone
