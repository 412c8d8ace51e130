"""Holding up under production volume and hostile input, without Kafka.

Each test names a failure seen on the real system (the "hold up under real
traffic" issue) and checks it can no longer happen: state records that grow
with traffic, one input or one model stopping the others, events lost or
counted twice.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest

from detectors.profile import build_profile
from streams.config import Settings
from streams.core.monitor import ModelMonitor
from streams.core.operations import OperationsProcessor, OpsOutbox
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import ReferenceStore
from streams.core.state import Checkpointer, read

T0 = 1_795_000_000.0
MB = 1_000_000


class Changelog:
    """What the worker does with an outbox's checkpoints: the table and its writer."""

    def __init__(self, chunk_bytes: int = 600_000) -> None:
        self.data: dict[str, Any] = {}
        self.writer = Checkpointer(chunk_bytes)
        self.sizes: dict[str, int] = {}

    def apply(self, box: Outbox | OpsOutbox) -> None:
        for partition, key, value in box.checkpoints:
            for w in self.writer.writes(partition, key, value, self.data):
                if w.value is None:
                    self.data.pop(w.key, None)
                    self.sizes.pop(w.key, None)
                else:
                    self.data[w.key] = orjson.loads(w.value)  # what a restore reads
                    self.sizes[w.key] = len(w.value)

    def saved(self, key: str) -> dict[str, Any] | None:
        return read(self.data, key)


def prediction(model: str, ts: float, i: int, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"{model}-{i}", "ts": ts, "model": model, "version": "v1",
            "latency_ms": 20.0, **kw}


def message(events: list[dict[str, Any]], offset: int, key: str | None = None,
            topic: str | None = None) -> InMessage:
    k = (key or events[0]["model"]).encode()
    return InMessage(orjson.dumps(events), 0, offset, topic, k)


# -- state that stays bounded ---------------------------------------------------------


def test_a_busy_model_without_feedback_writes_no_record_over_the_bound() -> None:
    """Seen: 30,000 predictions at 10/s and no feedback at all made a 1.42 MB
    ``#labels`` record, and the worker crashed at its next write."""
    p = PredictionProcessor(Settings(), "ml.predictions")
    log = Changelog()
    label = "x" * 200  # long class names are kept as digests
    for sec in range(0, 3000, 10):
        evs = [prediction("busy", T0 + sec + j / 10, sec * 10 + j, prediction=f"{label}{j % 7}")
               for j in range(100)]
        log.apply(p.process([message(evs, sec)], now=T0 + sec, saved=log.saved))
    join = p.monitors["busy"].labels.join  # 30,000 in the TTL: a half sample of 20,000 at most
    assert len(join) <= Settings().labels.join_max and join.sample_rate == 0.5
    assert max(log.sizes.values()) < 300_000  # every record, well under Kafka's 1 MB
    # the buffer is split in segments, each written when it changed
    assert sum(1 for k in log.data if "\x1flabels\x1f" in k) >= 20


def test_a_model_busier_than_the_join_is_sampled_and_late_labels_still_match() -> None:
    """At 1,000/s a buffer of the last 20,000 predictions covers 20 s: labels an hour
    late would never match. The join keeps a hash sample covering its TTL instead."""
    s = Settings(labels={"join_max": 2_000, "join_ttl_s": 3600})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions")
    log = Changelog()
    n = 0
    for sec in range(0, 600, 10):  # 10 minutes at 100/s
        evs = [prediction("m", T0 + sec + j / 100, n + j, prediction=0.5) for j in range(1000)]
        n += 1000
        log.apply(p.process([message(evs[i:i + 500], sec * 2 + i // 500) for i in (0, 500)],
                            now=T0 + sec, saved=log.saved))
    join = p.monitors["m"].labels.join
    assert len(join) <= 2_000 and join.sample_rate <= 2_000 / 60_000 * 2
    labels = [{"event_id": f"m-{i}", "ts": T0 + 900, "model": "m", "version": "v1", "label": 1}
              for i in range(0, 60_000, 7)]  # labels for the first minutes, much later
    p.process([message(labels, 0, topic="ml.feedback")], now=T0 + 900, saved=log.saved)
    stats = join.stats()
    assert stats["matched"] > 0.5 * len(labels) * join.sample_rate
    assert stats["matched"] + stats["unsampled"] + stats["unmatched"] == len(labels)
    assert stats["unmatched"] < 0.1 * len(labels) * join.sample_rate + 5


def metrics_messages(source: str, metrics: int, points: int, start: float,
                     offset: int) -> list[InMessage]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(points // 100):
        evs = [{"source": source, "metric": f"m{j}", "ts": start + (k * 100 + i) * 300.0,
                "value": float(50 + 10 * rng.standard_normal())}
               for i in range(100) for j in range(metrics)]
        out.append(InMessage(orjson.dumps(evs), 0, offset + k, "ml.metrics", source.encode()))
    return out


def test_a_metrics_source_keeps_one_bounded_record_per_metric() -> None:
    """Seen: ~80 kB of anomaly state per metric in one record per source, so 13
    metrics of one source made a record over 1 MB."""
    ops = OperationsProcessor(Settings(), "pool")
    log = Changelog()
    for i, msg in enumerate(metrics_messages("api", 20, 1000, T0 - 1000 * 300, 0)):
        log.apply(ops.process([msg], now=T0 + i, saved=log.saved))
    metric_keys = [k for k in log.data if k.startswith("metric:api")]
    assert len(metric_keys) == 20
    assert max(log.sizes.values()) < 250_000


def test_metrics_past_the_cap_of_a_source_are_dead_lettered() -> None:
    s = Settings(metric_anomaly={"max_metrics_per_source": 5})  # type: ignore[arg-type]
    ops = OperationsProcessor(s, "pool")
    box = ops.process(metrics_messages("api", 8, 100, T0 - 100 * 300, 0), now=T0)
    over = [d for d in box.deadletters if d["reason"].startswith("over_capacity")]
    assert len(ops.states) == 5 and len(over) == 3 * 100
    assert "max_metrics_per_source" in over[0]["reason"] and over[0]["index"] >= 0


def profiled_store(s: Settings) -> ReferenceStore:
    rng = np.random.default_rng(1)
    frame = pl.DataFrame({"amount": rng.lognormal(4, 0.5, 5000),
                          "country": rng.choice(["FR", "DE"], 5000)})
    store = ReferenceStore(s.skew)
    store.add(build_profile(frame.lazy(), "m", "v1", created_at=1.0))
    return store


def test_unknown_feature_names_are_counted_not_kept() -> None:
    """Seen: one 429 kB message of unknown feature names made a 430 kB checkpoint."""
    s = Settings(quality={"window_events": 200},  # type: ignore[arg-type]
                 skew={"window_events": 200, "hop_events": 100})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions", profiled_store(s))
    log = Changelog()
    rng = random.Random(2)
    box = Outbox()
    for k in range(3):
        evs = [prediction("m", T0 + k * 10 + i / 100, k * 1000 + i,
                          features={"amount": 50.0, "country": "FR",
                                    **{f"{rng.random():.12f}" * 12: 1 for _ in range(50)}})
               for i in range(100)]
        out = p.process([message(evs, k)], now=T0 + k, saved=log.saved)
        log.apply(out)
        box.merge(out)
    assert max(log.sizes.values()) < 60_000
    [alert] = [a for k, a in box.alerts if k.endswith("schema:unknown_features")]
    details = alert["payload"]["custom_details"]
    assert details["names_truncated"] is True and len(details["counts"]) <= 20
    assert details["events_share"] == 1.0


def test_a_flood_of_model_ids_stays_within_the_models_cap() -> None:
    """A million distinct model ids must not take the worker's memory with it
    (here: a cap of 50 and 2,000 ids)."""
    s = Settings(worker={"max_models": 50, "idle_close_s": 60})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions")
    log = Changelog()
    box = Outbox()
    for i in range(2000):
        now = T0 + i // 10
        out = p.process([message([prediction(f"id-{i}", now, i)], i)], now=now, saved=log.saved)
        log.apply(out)
        box.merge(out)
    assert len(p.monitors) <= 50
    refused = [d for d in box.deadletters if d["reason"].startswith("over_capacity")]
    assert refused and box.events + len(refused) == 2000  # each folded or dead-lettered once
    assert p.counts["evicted_models"] > 0  # idle ones made room for new ones
    assert sum(1 for k in log.data if "\x1f" not in k) <= 50  # evicted state is tombstoned


def test_series_past_the_cap_of_a_model_are_dead_lettered() -> None:
    s = Settings(worker={"max_series": 3})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions")
    evs = [prediction("m", T0 + i, i, version=f"v{i % 5}") for i in range(50)]
    box = p.process([message(evs, 0)], now=T0 + 50)
    refused = [d for d in box.deadletters if d["reason"].startswith("over_capacity")]
    assert len(p.monitors["m"].series) == 3 and len(refused) == 20
    assert {orjson.loads(d["raw"])["version"] for d in refused} == {"v3", "v4"}


# -- nothing crashes the worker; every input folded once or dead-lettered once ------


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met only on a latency of exactly 666 ms, deep in the fold."""
    real = ModelMonitor.ingest

    def ingest(self: ModelMonitor, frame: pl.DataFrame, *args: Any, **kw: Any) -> Any:
        out = real(self, frame, *args, **kw)  # the state is updated, then it breaks
        if (frame["latency_ms"] == 666.0).any():
            raise RuntimeError("poison")
        return out

    monkeypatch.setattr(ModelMonitor, "ingest", ingest)


def stats_counts(box: Outbox) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for model, rec in box.stats:
        key = (model, rec["window"]["start"])
        out[key] = out.get(key, 0) + rec["count"]
    return out


@pytest.mark.usefixtures("poisoned")
def test_one_bad_element_is_dead_lettered_alone_and_the_rest_folded_once() -> None:
    log = Changelog()
    p = PredictionProcessor(Settings(windows={"size_s": 10, "allowed_lateness_s": 0}),  # type: ignore[arg-type]
                           "ml.predictions")
    first = [prediction("m", T0 + i, i) for i in range(5)]
    log.apply(p.process([message(first, 0)], now=T0 + 5, saved=log.saved))
    batch = [prediction("m", T0 + 5 + i, 10 + i, latency_ms=666.0 if i == 3 else 20.0)
             for i in range(10)]
    other = [prediction("n", T0 + i, 100 + i) for i in range(30)]
    box = p.process([message(batch, 1), message(other, 2)], now=T0 + 30, saved=log.saved)
    [dead] = box.deadletters
    assert dead["reason"].startswith("internal_error: RuntimeError: poison")
    assert (dead["offset"], dead["index"]) == (1, 3)
    assert box.events == 9 + 30
    assert sum(v for k, v in stats_counts(box).items() if k[0] == "n") == 20  # 2 windows closed
    # the windows count each good event once: 5 before, 9 of the batch
    closer = p.process([message([prediction("m", T0 + 40, 99)], 3)], now=T0 + 40,
                       saved=log.saved)
    counts = {k: v for k, v in stats_counts(box).items() if k[0] == "m"}
    counts.update({k: v for k, v in stats_counts(closer).items() if k[0] == "m"})
    assert sum(counts.values()) == 14


def test_a_checkpoint_that_cannot_be_restored_starts_the_model_afresh() -> None:
    p = PredictionProcessor(Settings(), "ml.predictions")
    broken = {"m": {"kind": "model", "model": "m", "partition": 0, "offsets": "garbage"}}
    box = p.process([message([prediction("m", T0, 1)], 0)], now=T0, saved=broken.get)
    assert box.events == 1 and p.counts["state_reset"] == 1


def test_one_models_wall_clock_failure_does_not_stop_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = PredictionProcessor(Settings(), "ml.predictions")
    p.process([message([prediction(m, T0, i)], i) for i, m in enumerate("abc")], now=T0)
    real = ModelMonitor.tick

    def tick(self: ModelMonitor, now: float, behind: bool = False) -> Any:
        if self.model == "b":
            raise RuntimeError("broken clock")
        return real(self, now, behind)

    monkeypatch.setattr(ModelMonitor, "tick", tick)
    box = p.tick(T0 + 10 * 86_400, [])  # a, c expire; b fails
    assert p.counts["tick_errors"] == 1 and set(p.monitors) == {"b"}
    assert {k for _, k, v in box.checkpoints if v is None} == {"a", "c"}


def test_a_late_event_after_a_replayed_message_is_dead_lettered_as_late() -> None:
    """Seen: a late event that followed a replayed message was lost."""
    s = Settings(windows={"size_s": 10, "allowed_lateness_s": 0})  # type: ignore[arg-type]
    log = Changelog()
    p = PredictionProcessor(s, "ml.predictions")
    m0 = message([prediction("m", T0 + 25, 0)], 40)
    log.apply(p.process([m0], now=T0 + 25, saved=log.saved))
    again = PredictionProcessor(s, "ml.predictions")  # restarted: m0 is read again
    m1 = message([prediction("m", T0 + 26, 1), prediction("m", T0 + 3, 2)], 41)
    box = again.process([m0, m1], now=T0 + 26, saved=log.saved)
    [dead] = box.deadletters
    assert (dead["offset"], dead["index"]) == (41, 1) and dead["reason"].startswith("late:")
    assert orjson.loads(dead["raw"])["event_id"] == "m-2" and box.events == 1


def test_an_event_from_the_far_future_does_not_blind_the_model() -> None:
    """Seen: one event a year ahead made every following event "late", silently."""
    s = Settings(windows={"size_s": 10, "allowed_lateness_s": 0})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions")
    ahead = prediction("m", T0 + 365 * 86_400, 0)
    box = p.process([message([ahead], 0), message([prediction("m", T0 + i, i + 1)
                                                   for i in range(30)], 1)], now=T0 + 30)
    [dead] = box.deadletters
    assert dead["reason"].startswith("bad_timestamp") and "ahead" in dead["reason"]
    assert box.events == 30 and p.monitors["m"].windows.watermark == T0 + 29


def test_many_late_events_raise_data_quality() -> None:
    s = Settings(windows={"size_s": 10, "allowed_lateness_s": 0})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions")
    box = Outbox()
    for w in range(6):  # each window: 45 on time, 5 stamped a window back (a slow clock)
        evs = [prediction("m", T0 + 10 * w + i / 5, 100 * w + i) for i in range(45)]
        evs += [prediction("m", T0 + 10 * w - 15 + i, 100 * w + 50 + i) for i in range(5)]
        box.merge(p.process([message(evs, w)], now=T0 + 10 * w))
    [alert] = [a for k, a in box.alerts if k == "data_quality:m:late_events"]
    assert alert["event_action"] == "trigger" and "clocks" in alert["payload"]["summary"]
    assert sum(d["reason"].startswith("late:") for d in box.deadletters) > 0


def test_events_keyed_by_something_else_than_their_model_are_dead_lettered() -> None:
    p = PredictionProcessor(Settings(), "ml.predictions")
    good = message([prediction("m", T0, 0)], 0)
    wrong = message([prediction("m", T0, 1)], 1, key="request-123")
    unkeyed = InMessage(orjson.dumps(prediction("m", T0, 2)), 0, 2, None, None)
    box = p.process([good, wrong, unkeyed], now=T0)
    assert box.events == 1
    assert [d["reason"].split(":")[0] for d in box.deadletters] == ["bad_key", "bad_key"]


# -- the checkpoint codec ---------------------------------------------------------------

def big_state(n: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    return {"kind": "model", "partition": 1, "values": [rng.random() for _ in range(n)]}


def test_a_large_record_is_written_in_chunks_and_read_back_whole() -> None:
    data: dict[str, Any] = {}
    ck = Checkpointer(chunk_bytes=10_000)

    def write(value: dict[str, Any] | None, upto: int | None = None) -> None:
        writes = ck.writes(1, "m", value, data)
        for w in writes[:upto]:
            if w.data is None:
                data.pop(w.key, None)
            else:
                data[w.key] = orjson.loads(w.value or b"null")

    first = big_state(3000)
    write(first)
    assert read(data, "m") == first and data["m"]["kind"] == "chunked"
    assert all(len(orjson.dumps(v)) < 15_000 for v in data.values())
    write(first)  # unchanged: nothing written
    assert ck.skipped == 1
    second = big_state(2000, seed=1)
    write(second, upto=2)  # the worker dies half-way through the next write
    assert read(data, "m") == first  # the last whole generation, not a mix
    ck = Checkpointer(chunk_bytes=10_000)  # a new worker, from what the changelog holds
    write(second)
    assert read(data, "m") == second
    write({"kind": "model", "partition": 1})  # small again: the chunks are tombstoned
    assert set(data) == {"m"}
    write(None)
    assert data == {}


def test_every_state_record_carries_its_partition() -> None:
    """A revoked partition's keys are found by their ``partition`` (agents.forget_revoked)."""
    log = Changelog(chunk_bytes=2_000)
    p = PredictionProcessor(Settings(), "ml.predictions")
    evs = [prediction("m", T0 + i / 10, i, prediction=0.3) for i in range(3000)]
    msgs = [InMessage(orjson.dumps(evs[i:i + 500]), 3, i // 500, None, b"m")
            for i in range(0, 3000, 500)]
    log.apply(p.process(msgs, now=T0 + 300, saved=log.saved))
    assert log.data and all(v["partition"] == 3 for v in log.data.values())


def test_a_worker_catching_up_does_not_call_its_backlog_an_outage() -> None:
    """A partition with a backlog is the worker's silence, not the producer's: no outage,
    no early flush of open windows (whose events may still be in the backlog)."""
    s = Settings(outage={"floor_s": 5, "min_arrivals": 1},  # type: ignore[arg-type]
                 worker={"idle_close_s": 5})  # type: ignore[arg-type]
    p = PredictionProcessor(s, "ml.predictions")
    p.process([message([prediction("m", T0 + i, i) for i in range(20)], 0)], now=T0 + 20)
    waiting = p.tick(T0 + 200, [], behind={0})
    assert waiting.alerts == [] and waiting.stats == []
    caught_up = p.tick(T0 + 400, [])
    assert [a["dedup_key"] for _, a in caught_up.alerts] == ["outage:m"]
    assert caught_up.stats  # the idle windows are flushed now


def test_a_micro_batch_is_processed_in_slices_of_bounded_input() -> None:
    from types import SimpleNamespace

    from streams.runtime.agents import slices

    events = [SimpleNamespace(message=SimpleNamespace(value=b"x" * n))
              for n in (300, 300, 300, 50, 900, 10)]
    parts = list(slices(events, 600))  # type: ignore[arg-type]
    assert [len(p) for p in parts] == [2, 3, 1]  # a slice ends once it holds 600 bytes
    assert sum(len(p) for p in parts) == len(events)
