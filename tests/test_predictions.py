"""The whole prediction path of one micro-batch, without Kafka."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.config import Settings
from streams.core.predictions import InMessage, Outbox, PredictionProcessor

T0 = 1_795_000_000.0
SETTINGS = Settings(
    alerts={"keep_firing_for_s": 0},  # type: ignore[arg-type]  # resolve on the next window
    # the tests' wall clock starts near 0 while events are stamped in 2026
    limits={"max_future_s": 4e9},  # type: ignore[arg-type]
    windows={"size_s": 10, "allowed_lateness_s": 0, "max_lead_s": 4e9},  # type: ignore[arg-type]
    latency={"p99_threshold_ms": 300, "min_events": 5},  # type: ignore[arg-type]
    burn_rate={"enabled": False},  # type: ignore[arg-type]
    outage={"floor_s": 5, "k": 10, "min_arrivals": 1},  # type: ignore[arg-type]
    worker={"idle_close_s": 30, "series_ttl_s": 100, "model_ttl_s": 1000},  # type: ignore[arg-type]
)


def ev(model: str, ts: float, latency: float, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"{model}{ts}", "ts": ts, "model": model, "version": "v1",
            "latency_ms": latency, **kw}


def stream(model: str = "m") -> list[InMessage]:
    """Four 10 s windows, the middle two slow, as single and batch messages."""
    msgs = []
    for w, latency in enumerate([50.0, 900.0, 900.0, 50.0, 50.0]):
        evs = [ev(model, T0 + 10 * w + i, latency) for i in range(10)]
        msgs.append(orjson.dumps(evs[:5]))
        msgs += [orjson.dumps(e) for e in evs[5:]]
    return [InMessage(v, 0, i) for i, v in enumerate(msgs)]


def states(checkpoints: list[Any]) -> list[Any]:
    """The checkpoints of keys, without the input partitions' read marks."""
    return [c for c in checkpoints if c[2] is None or c[2].get("kind") != "input"]


def actions(box: Outbox) -> list[tuple[str, str]]:
    return [(a["event_action"], k) for k, a in box.alerts]


def test_stream_gives_windows_and_one_trigger_one_resolve() -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions")
    box = p.process(stream(), now=100.0)
    assert [s["count"] for _, s in box.stats] == [10, 10, 10, 10]
    assert actions(box) == [("trigger", "latency_slo:m:v1:p99"),
                            ("resolve", "latency_slo:m:v1:p99")]
    assert box.events == 50 and box.deadletters == []
    [(partition, model, state)] = states(box.checkpoints)
    assert (partition, model, state["offsets"]) == (0, "m", {"0": len(stream()) - 1})


def test_replay_after_a_crash_is_not_counted_twice() -> None:
    msgs = stream()
    cut = 17
    first = PredictionProcessor(SETTINGS, "ml.predictions")
    a = first.process(msgs[:cut], now=100.0)
    saved = orjson.loads(orjson.dumps(states(a.checkpoints)[-1][2]))  # what the changelog holds
    # The consumer offset was not committed: a new worker reads from an older offset.
    second = PredictionProcessor(SETTINGS, "ml.predictions")
    b = second.process(msgs[cut - 9:], now=101.0, saved=lambda m: saved)
    uninterrupted = PredictionProcessor(SETTINGS, "ml.predictions").process(msgs, now=100.0)
    assert [s for _, s in a.stats + b.stats] == [s for _, s in uninterrupted.stats]
    assert actions(a) + actions(b) == actions(uninterrupted)


@pytest.mark.parametrize("space", [b"", b" \n"])
def test_late_events_are_dead_lettered_with_their_origin(space: bytes) -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions")
    late = space + orjson.dumps([ev("m", T0 + 26, 10.0), ev("m", T0 + 3, 10.0)])
    msgs = [InMessage(orjson.dumps(ev("m", T0 + 25, 10.0)), 1, 40), InMessage(late, 1, 41)]
    box = p.process(msgs, now=1.0)
    [dead] = box.deadletters
    assert (dead["partition"], dead["offset"], dead["index"]) == (1, 41, 1)
    assert dead["reason"].startswith("late:") and orjson.loads(dead["raw"])["ts"] == T0 + 3


def test_malformed_messages_do_not_stop_the_good_ones() -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions")
    msgs = [InMessage(b"{oops", 0, 0), InMessage(orjson.dumps(ev("m", T0, 10.0)), 0, 1),
            InMessage(None, 0, 2)]
    box = p.process(msgs, now=1.0)
    assert [(d["offset"], d["reason"].split(":")[0]) for d in box.deadletters] == \
        [(0, "not_json"), (2, "not_json")]
    assert box.events == 1


def test_wall_clock_checks_outage_idle_flush_and_expiry() -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions")
    p.process([InMessage(orjson.dumps(ev("m", T0, 10.0)), 0, 0)], now=0.0)
    assert p.tick(4.0, []).alerts == []
    out = p.tick(6.0, [])
    assert actions(out) == [("trigger", "outage:m")]
    assert p.tick(7.0, []).alerts == []  # still silent: no second trigger
    flushed = p.tick(31.0, [])
    assert [s["count"] for _, s in flushed.stats] == [1]  # idle: the open window closes
    gone = p.tick(1001.0, [])
    assert actions(gone) == [("resolve", "outage:m")]
    # Tombstones for the model's state and for its label-join buffer.
    assert gone.checkpoints == [(0, "m", None)] and p.monitors == {}


def test_state_restored_by_tick_keeps_firing_alerts_and_grants_grace() -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions")
    p.process([InMessage(orjson.dumps(ev("m", T0, 10.0)), 0, 0)], now=0.0)
    [(_, _, state)] = p.tick(6.0, []).checkpoints
    other = PredictionProcessor(SETTINGS, "ml.predictions")
    # Takeover at t=20: the silence clock restarts, the firing outage is remembered.
    assert other.tick(20.0, [("m", orjson.loads(orjson.dumps(state)))]).alerts == []
    back = other.process([InMessage(orjson.dumps(ev("m", T0 + 1, 10.0)), 0, 1)], now=21.0)
    assert actions(back) == [("resolve", "outage:m")]
    assert other.revoke({0}) == ["m"] and other.monitors == {}


def three_messages_failing_at(monkeypatch: Any,
                              bad: int) -> tuple[PredictionProcessor, list[InMessage]]:
    """A processor whose micro-batch fold raises, after the input marks are set, on
    any batch holding the event of message ``bad`` (of 0, 1, 2), and the messages."""
    import streams.core.predictions as predictions

    real = predictions.series_rows

    def flaky(rows: Any) -> Any:
        if T0 + bad in rows["ts"].to_list():
            raise RuntimeError("a bug")
        return real(rows)

    monkeypatch.setattr(predictions, "series_rows", flaky)
    msgs = [InMessage(orjson.dumps(ev("m", T0 + i, 10.0)), 0, i) for i in range(3)]
    return PredictionProcessor(SETTINGS, "ml.predictions"), msgs


def test_a_bug_after_the_batch_is_marked_read_costs_only_its_message(monkeypatch: Any) -> None:
    """The fault strikes after the micro-batch's messages were marked read: read
    again one by one, they must not look read already (nothing would fold)."""
    p, msgs = three_messages_failing_at(monkeypatch, 1)
    box = p.process_safely(msgs, now=0.0)
    assert box.events == 2
    [dead] = box.deadletters
    assert (dead["offset"], dead["reason"]) == (1, "internal_error: RuntimeError: a bug")
    marks = [rec["offset"] for _, _, rec in box.checkpoints if rec and rec.get("kind") == "input"]
    assert marks[-1] == 2


def test_the_last_message_of_a_batch_failing_alone_is_marked_read(monkeypatch: Any) -> None:
    """Dead-lettered once: its offset is the input's mark, so a replay of the batch (a
    crash before Faust commits) sends neither its dead letter nor the others' again."""
    p, msgs = three_messages_failing_at(monkeypatch, 2)
    box = p.process_safely(msgs, now=0.0)
    assert [d["offset"] for d in box.deadletters] == [2]
    assert box.checkpoints[-1][2] == {"kind": "input", "partition": 0,
                                      "topic": "ml.predictions", "offset": 2}
    again = p.process_safely(msgs, now=0.0)
    assert (again.events, again.deadletters) == (0, [])


def test_a_bug_on_one_message_costs_only_that_message(monkeypatch: Any) -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions")
    real = p.process

    def flaky(messages: list[InMessage], now: float, saved: Any = None) -> Outbox:
        if any(m.offset == 1 for m in messages):
            raise RuntimeError("a bug")
        return real(messages, now)

    monkeypatch.setattr(p, "process", flaky)
    msgs = [InMessage(orjson.dumps(ev("m", T0 + i, 10.0)), 0, i) for i in range(3)]
    box = p.process_safely(msgs, now=0.0)
    assert box.events == 2
    [dead] = box.deadletters
    assert (dead["offset"], dead["reason"]) == (1, "internal_error: RuntimeError: a bug")


def test_a_producer_whose_clock_runs_fast_makes_no_other_event_late() -> None:
    """An event stamped 590 s ahead (inside limits.max_future_s) is folded, but the
    model's watermark stays at the worker's clock: the other producers' events, on
    time, are not dead-lettered as late for the next ten minutes."""
    p = PredictionProcessor(Settings(), "ml.predictions")
    fast = p.process([InMessage(orjson.dumps(ev("m", T0 + 590, 10.0)), 0, 0)], now=T0)
    assert (fast.events, fast.deadletters) == (1, [])
    on_time = [InMessage(orjson.dumps(ev("m", T0 + i, 10.0)), 0, 1 + i) for i in range(1, 120)]
    box = p.process(on_time, now=T0 + 120)
    assert (box.events, box.deadletters) == (119, [])
    # the windows that closed (their end plus 10 s of lateness behind the last event,
    # T0 + 119) counted every on-time event of theirs
    closed = [i for i in range(1, 120) if ((T0 + i) // 60 + 1) * 60 + 10 <= T0 + 119]
    assert closed and sum(s["count"] for _, s in box.stats) == len(closed)
