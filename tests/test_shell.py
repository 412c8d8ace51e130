"""The Faust shell without a broker: publishing, state writing, followers' loaders, the agents.

Outbound topics are mocks (Faust's testing guide: an unmocked send tries to
reach a real broker); the agents run under ``test_context()``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import orjson
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from detectors.profile import build_profile
from streams.config import Settings
from streams.core.operations import OpsOutbox
from streams.core.predictions import InMessage, Outbox
from streams.core.references import ReferenceStore
from streams.core.state import read
from streams.runtime.metrics import Metrics, make_metrics
from streams.runtime.shell import (
    Gap,
    GapFiller,
    Lag,
    Publisher,
    ReferenceLoader,
    Seen,
    SilenceLoader,
    StateWriter,
    Topics,
)
from tests.test_skew import training_frame

T0 = 1_795_000_000.0


class FakeTable:
    """What the writer needs of a Faust table: ``data`` and ``send_changelog``."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sent: list[tuple[int | None, Any, Any, Any]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> None:
        self.sent.append((partition, key, value, value_serializer))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


@pytest.fixture
def publisher() -> tuple[Publisher, Topics, FakeTable, Metrics]:
    metrics = make_metrics(CollectorRegistry())
    topics = Topics(*(AsyncMock() for _ in range(5)))
    table = FakeTable()
    pub = Publisher(topics, StateWriter(table, "model-state", metrics, 600_000),
                    StateWriter(FakeTable(), "ops-state", metrics, 600_000), metrics, 20_000,
                    delivery_timeout_s=0.2)
    return pub, topics, table, metrics


def alert(component: str, summary: str = "slow") -> dict[str, Any]:
    return {"event_action": "trigger", "dedup_key": f"latency_slo:{component}:v1:p99",
            "payload": {"summary": summary, "component": component, "class": "latency_slo"}}


async def test_outputs_go_to_their_topics_keyed_as_the_contract_says(
        publisher: tuple[Publisher, Topics, FakeTable, Metrics]) -> None:
    pub, topics, table, metrics = publisher
    box = Outbox(deadletters=[{"topic": "ml.predictions", "partition": 0, "offset": 3,
                               "reason": "not_json: x", "raw": "{"}],
                 stats=[("m", {"model": "m", "count": 3})], alerts=[("k", alert("m"))],
                 commands=[("m", {"command_id": "rollback:m:v8:5", "action": "rollback",
                                  "reason": "errors"})],
                 checkpoints=[(2, "m", {"kind": "model", "partition": 2, "n": 1})])
    await pub.publish(box)
    topics.deadletter.send.assert_awaited_once()  # type: ignore[attr-defined]
    assert topics.deadletter.send.await_args.kwargs["key"] is None  # type: ignore[attr-defined]
    for topic in (topics.stats, topics.alerts, topics.commands):
        assert topic.send.await_args.kwargs["key"] == b"m"  # type: ignore[attr-defined]
    sent = orjson.loads(topics.alerts.send.await_args.kwargs["value"])  # type: ignore[attr-defined]
    assert sent["dedup_key"] == "latency_slo:m:v1:p99"
    [(partition, key, value, serializer)] = table.sent
    assert (partition, key, serializer) == (2, "m", "raw") and orjson.loads(value)["n"] == 1
    assert read(table.data, "m") == {"kind": "model", "partition": 2, "n": 1}
    assert sample(metrics, "sentinelle_deadletters_total", topic="ml.predictions",
                  reason="not_json") == 1


async def test_an_output_that_cannot_be_sent_is_counted_and_the_rest_goes_on(
        publisher: tuple[Publisher, Topics, FakeTable, Metrics]) -> None:
    pub, topics, _, metrics = publisher
    topics.stats.send.side_effect = RuntimeError("broker said no")  # type: ignore[attr-defined]
    box = Outbox(alerts=[("big", alert("m", "x" * 30_000)), ("bad", alert("m", "\ud800")),
                         ("ok", alert("n"))], stats=[("m", {"count": 1})])
    await pub.publish(box)
    [(args, kwargs)] = topics.alerts.send.await_args_list  # type: ignore[attr-defined]
    assert kwargs["key"] == b"n"
    for reason in ("oversized", "unencodable"):
        assert sample(metrics, "sentinelle_outputs_dropped_total", kind="alert",
                      reason=reason) == 1
    assert sample(metrics, "sentinelle_outputs_dropped_total", kind="stats",
                  reason="send_failed") == 1


async def test_outputs_are_acknowledged_before_the_state_that_records_them(
        publisher: tuple[Publisher, Topics, FakeTable, Metrics]) -> None:
    pub, topics, table, metrics = publisher
    order: list[str] = []
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    attempts = 0

    async def send(*, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        nonlocal attempts
        attempts += 1
        order.append("alert sent")
        if attempts == 1:  # the broker does not take the first try
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(ConnectionError("broker away"))
            return failed
        acked.add_done_callback(lambda _: order.append("alert acknowledged"))
        asyncio.get_running_loop().call_soon(acked.set_result, None)
        return acked

    topics.alerts.send = send  # type: ignore[attr-defined]
    real = table.send_changelog

    def changelog(*args: Any, **kw: Any) -> None:
        order.append("state written")
        real(*args, **kw)

    table.send_changelog = changelog  # type: ignore[method-assign]
    trouble: list[bool] = []
    pub.on_trouble = trouble.append
    pub.delivery_timeout_s = 10.0  # long enough for one more try (after 0.5 s)
    await pub.publish(Outbox(alerts=[("k", alert("m"))],
                             checkpoints=[(0, "m", {"kind": "model", "partition": 0})]))
    assert order == ["alert sent", "alert sent", "alert acknowledged", "state written"]
    assert trouble == [True, False]  # the readiness page is told, both ways
    assert sample(metrics, "sentinelle_outputs_dropped_total", kind="alert",
                  reason="send_failed") == 0


async def test_pool_usage_is_sent_keyed_by_pool(
        publisher: tuple[Publisher, Topics, FakeTable, Metrics]) -> None:
    pub, topics, _, _ = publisher
    await pub.publish(OpsOutbox(pool_usage=[("team-a", [{"pool": "team-a", "ts": T0}])]))
    assert topics.pool_usage.send.await_args.kwargs["key"] == b"team-a"  # type: ignore[attr-defined]


async def test_a_large_state_is_written_in_chunks_and_unchanged_state_not_at_all() -> None:
    metrics = make_metrics(CollectorRegistry())
    table = FakeTable()
    writer = StateWriter(table, "model-state", metrics, 1_000)
    big = {"kind": "model", "partition": 0, "values": list(range(2_000))}
    writer.write(0, "m", big)
    writer.write(0, "m", big)
    assert len(table.sent) > 3 and writer.saved("m") == big
    assert sample(metrics, "sentinelle_state_writes_total", table="model-state",
                  outcome="unchanged") == 1


@pytest.fixture
def loader_parts() -> tuple[Publisher, Topics, Metrics]:
    metrics = make_metrics(CollectorRegistry())
    topics = Topics(*(AsyncMock() for _ in range(5)))
    pub = Publisher(topics, StateWriter(FakeTable(), "a", metrics, 10_000),
                    StateWriter(FakeTable(), "b", metrics, 10_000), metrics, 1_000_000)
    return pub, topics, metrics


def dead_reasons(topics: Topics) -> list[str]:
    return [orjson.loads(c.kwargs["value"])["reason"].split(":")[0]
            for c in topics.deadletter.send.await_args_list]  # type: ignore[attr-defined]


async def test_profiles_are_loaded_or_dead_lettered_with_their_reason(
        loader_parts: tuple[Publisher, Topics, Metrics],
        monkeypatch: pytest.MonkeyPatch) -> None:
    pub, topics, metrics = loader_parts
    store = ReferenceStore(Settings().skew)
    load = ReferenceLoader(store, pub, "ml.references", metrics)
    good = build_profile(training_frame().lazy(), "m", "v1", created_at=1.0)
    await load(b"m:v1", orjson.dumps(good), 0, 0)
    await load(b"x:v1", b"{nope", 0, 1)
    await load(b"x:v1", orjson.dumps({"version": "v1"}), 0, 2)
    monkeypatch.setattr(store, "prepare", MagicMock(side_effect=ZeroDivisionError("bug")))
    await load(b"y:v1", orjson.dumps(good), 0, 3)
    assert store.get("m", "v1") is not None
    assert dead_reasons(topics) == ["not_json", "missing_field", "internal_error"]
    await load(b"m:v1", None, 0, 4)  # a tombstone withdraws the profile
    assert store.get("m", "v1") is None


async def test_silences_past_the_cap_are_refused_once_the_expired_ones_are_gone(
        loader_parts: tuple[Publisher, Topics, Metrics]) -> None:
    pub, topics, metrics = loader_parts
    held: dict[str, Any] = {}
    load = SilenceLoader(held, pub, "ml.silences", 2, metrics, clock=lambda: T0)

    def silence(sid: str, ends: float) -> bytes:
        return orjson.dumps({"id": sid, "matchers": {"model": sid}, "starts_at": T0 - 10,
                             "ends_at": ends})

    await load(b"a", silence("a", T0 - 1), 0, 0)  # already expired
    await load(b"b", silence("b", T0 + 60), 0, 1)
    await load(b"c", silence("c", T0 + 60), 0, 2)  # makes room by dropping "a"
    await load(b"d", silence("d", T0 + 60), 0, 3)  # over the cap
    await load(b"e", b'{"id": "e"}', 0, 4)
    assert sorted(held) == ["b", "c"]
    assert dead_reasons(topics) == ["over_capacity", "bad_value"]


class FakeConsumer:
    def __init__(self, high: dict[TP, int | None], position: dict[TP, int]) -> None:
        self.high, self.pos = high, position

    def assignment(self) -> set[TP]:
        return set(self.high)

    def highwater(self, tp: TP) -> int | None:
        return self.high[tp]

    async def position(self, tp: TP) -> int:
        return self.pos[tp]


async def test_a_partition_is_behind_when_messages_wait_and_the_last_read_is_old() -> None:
    lag = Lag(Settings())
    tps = [TP("ml.predictions", p) for p in range(3)]
    consumer = FakeConsumer({tps[0]: 100, tps[1]: 100, tps[2]: 5},
                            {tps[0]: 0, tps[1]: 0, tps[2]: 5})
    lag.seen([SimpleNamespace(message=SimpleNamespace(tp=tps[1], offset=98,  # type: ignore[list-item]
                                                      timestamp=T0 - 0.5))])
    # 0: never read, a backlog; 1: read half a second ago, keeping up; 2: caught up
    assert await lag.behind(consumer, {"ml.predictions"}, T0) == {0}
    assert await lag.behind(consumer, {"other"}, T0) == set()


def taken(tp: TP, offset: int, stamp: float = T0) -> Any:
    """What Lag reads of an event."""
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset, timestamp=stamp))


async def test_a_partition_not_fetched_from_yet_is_behind() -> None:
    # just assigned (a takeover): its high watermark is unknown until the first fetch
    # answers, and the models restored there must not be judged idle meanwhile
    lag = Lag(Settings())
    new, old = TP("ml.predictions", 0), TP("ml.predictions", 1)
    lag.seen([taken(old, 4)])
    consumer = FakeConsumer({new: None, old: 5}, {new: 0, old: 5})
    assert await lag.behind(consumer, {"ml.predictions"}, T0) == {0}
    consumer.high[new] = 0  # fetched: an empty partition is caught up
    assert await lag.behind(consumer, {"ml.predictions"}, T0) == set()


async def test_a_revoked_partition_is_forgotten_and_offsets_read_again_are_counted() -> None:
    lag = Lag(Settings())
    tp = TP("ml.predictions", 0)
    lag.seen([taken(tp, 10, T0 - 60), taken(tp, 11, T0 - 60)])
    assert lag.rewinds == 0
    lag.seen([taken(tp, 9), taken(tp, 10), taken(tp, 12)])  # Faust read from the commit again
    assert (lag.rewinds, lag.jumps) == (2, 0)
    assert lag.seen([taken(tp, 15)]) == Seen(0, [Gap(0, tp, 13, 14)])  # never handed over
    assert (lag.rewinds, lag.jumps) == (2, 1)
    # 14 handed over late (a reorder): the marks will skip it, so it is lost, and said;
    # 14 again, or 11 (read before: a replay), is not
    assert lag.seen([taken(tp, 14), taken(tp, 14), taken(tp, 11)]).lost == 1
    assert lag.seen([taken(tp, 13)]).lost == 1
    assert lag.gaps[tp] == deque()
    # revoked, then assigned back after another worker read on to 40: the stale mark
    # (11, a minute old) would make the partition look behind for good
    lag.forget({tp})
    consumer = FakeConsumer({tp: 41}, {tp: 41})
    assert await lag.behind(consumer, {"ml.predictions"}, T0) == set()
    assert lag.seen([taken(tp, 41)]) == Seen(0, [])
    assert lag.rewinds == 6  # 9, 10, 14, 14, 11, 13: none since


async def test_a_gap_fetched_again_is_no_loss_when_faust_hands_it_over_late() -> None:
    lag = Lag(Settings())
    tp, other = TP("ml.predictions", 0), TP("ml.predictions", 1)
    seen = lag.seen([taken(tp, 1), taken(other, 7), taken(tp, 4), taken(other, 9)])
    assert seen == Seen(0, [Gap(2, tp, 2, 3), Gap(3, other, 8, 8)])
    lag.filled([InMessage(b"", 0, 2, tp.topic), InMessage(b"", 0, 3, tp.topic)])
    assert lag.seen([taken(tp, 3), taken(other, 8)]).lost == 1  # only 8 was not filled


async def test_a_partition_s_last_messages_fetched_but_never_handed_over_are_a_tail_gap(
        ) -> None:
    lag = Lag(Settings())
    tp = TP("ml.predictions", 0)
    lag.seen([taken(tp, 4), taken(tp, 5)])
    consumer = FakeConsumer({tp: 8}, {tp: 8})  # Faust fetched up to 7
    later = time.monotonic() + lag.tail_after_s
    assert await lag.tails(consumer, {"ml.predictions"}, later) == [Gap(-1, tp, 6, 7)]
    assert await lag.tails(consumer, {"ml.predictions"}, later - 1) == []  # not quiet yet
    assert await lag.tails(consumer, {"other"}, later) == []
    consumer.pos[tp] = 7  # not all fetched: a backlog
    assert await lag.tails(consumer, {"ml.predictions"}, later) == []
    consumer.pos[tp] = 8
    lag.filled([InMessage(b"", 0, 6, tp.topic), InMessage(b"", 0, 7, tp.topic)])
    assert await lag.tails(consumer, {"ml.predictions"}, later) == []
    assert await lag.behind(consumer, {"ml.predictions"}, T0) == set()  # caught up
    assert lag.seen([taken(tp, 6), taken(tp, 7)]).lost == 0  # handed over late: replays


async def test_faust_starting_an_assignment_past_what_the_state_folded_is_a_gap() -> None:
    tp = TP("ml.predictions", 0)
    marks = {tp: 12}
    lag = Lag(Settings())
    assert lag.seen([taken(tp, 15), taken(tp, 16)], marks.__getitem__) == Seen(
        0, [Gap(0, tp, 13, 14)])
    for mark in (-1, 14, 20):  # no state; the next offset; a replay ahead
        lag.forget({tp})
        assert lag.seen([taken(tp, 15)], {tp: mark}.__getitem__).gaps == []


class Fetched:
    """A :data:`Fetch` answering from a dict of offsets, counting its calls."""

    def __init__(self, offsets: dict[int, bytes], fail: bool = False) -> None:
        self.offsets, self.fail, self.calls = offsets, fail, 0

    async def __call__(self, gap: Gap) -> list[InMessage]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("broker away")
        return [InMessage(v, gap.tp.partition, o, gap.tp.topic)
                for o, v in sorted(self.offsets.items()) if o >= gap.first]


async def test_the_gap_filler_fetches_gaps_and_stops_on_a_partition_whose_gaps_are_empty(
        ) -> None:
    tp = TP("ml.predictions", 0)
    fetch = Fetched({2: b"two", 3: b"three", 5: b"five"})
    gaps = GapFiller(fetch, max_span=10, give_up_after=2)
    got = await gaps.fill([Gap(4, tp, 2, 3), Gap(9, tp, 5, 5)])
    assert {i: [(m.offset, m.value) for m in ms] for i, ms in got.items()} == {
        4: [(2, b"two"), (3, b"three")], 9: [(5, b"five")]}
    assert gaps.refetched == 3
    assert await gaps.fill([Gap(0, tp, 20, 40)]) == {}  # wider than max_span: not fetched
    assert fetch.calls == 2
    # transaction markers: two gaps in a row fetch nothing, then no more fetches
    assert await gaps.fill([Gap(0, tp, 6, 6), Gap(1, tp, 8, 8), Gap(2, tp, 10, 10)]) == {}
    assert fetch.calls == 4
    gaps.forget({tp})  # assigned again: fetched again
    await gaps.fill([Gap(0, tp, 12, 12)])
    assert fetch.calls == 5
    failing = GapFiller(Fetched({}, fail=True))
    assert await failing.fill([Gap(0, tp, 1, 1)]) == {} and failing.unfilled == 1


def loaded(wiring: Any) -> None:
    """The profiles and silences read: the agents fold."""
    wiring.references_loaded.set()
    wiring.silences_loaded.set()


def checkpointed(written: Any, model: str, offsets: dict[str, int]) -> bool:
    """Whether a checkpoint of ``model`` with these input offsets was written."""
    return any(orjson.loads(c.args[2])["offsets"] == offsets
               for c in written.call_args_list if c.args[1] == model)


async def test_a_message_faust_skipped_is_fetched_again_and_folded_in_its_place(
        wired: tuple[Any, Any], registry: CollectorRegistry) -> None:
    # Faust hands over offsets 0 and 2 of the partition, never 1 (as it did after a
    # takeover, see GapFiller): the worker fetches 1 and folds all three, in order.
    s, wiring = wired
    loaded(wiring)
    agent = wiring.agents["predictions"]
    ev = {"event_id": "e0", "ts": T0, "model": "m", "version": "v1", "latency_ms": 5.0}
    fetch = Fetched({1: orjson.dumps({**ev, "event_id": "e1"})})
    wiring.gaps.fetch = fetch
    written = s.state.send_changelog
    async with agent.test_context() as test:
        await test.put(value=orjson.dumps(ev), key=b"m")
        test.sent_offset += 1  # offset 1 never reaches the agent
        await test.put(value=orjson.dumps({**ev, "event_id": "e2"}), key=b"m")
        await until(lambda: checkpointed(written, "m", {"0": 2}))
    assert fetch.calls == 1
    topic = {"topic": s.inputs.topics[0]}
    assert registry.get_sample_value("sentinelle_events_total", topic) == 3
    assert registry.get_sample_value("sentinelle_guard_total", {"event": "input_refetched"}) == 1


# -- the agents, under Faust's test_context ---------------------------------------------

@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def wired(registry: CollectorRegistry) -> AsyncIterator[tuple[Any, Any]]:
    from streams.runtime.agents import register
    from streams.runtime.app import create_app

    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"},  # type: ignore[arg-type]
                        worker={"web_port": 0, "batch_within_s": 0.05})  # type: ignore[arg-type]
    s = create_app(settings)
    wiring = register(s, registry)
    s.app.finalize()
    s.app.flow_control.resume()
    for topic in (s.alerts, s.stats, s.deadletter, s.commands, s.pool_usage):
        topic.send = AsyncMock()  # type: ignore[method-assign]
    for table in (s.state, s.ops_state):
        table.send_changelog = MagicMock()  # type: ignore[method-assign]
    yield s, wiring


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition``, woken by each turn of the event loop."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


async def test_the_predictions_agent_waits_for_the_followers_then_publishes(
        wired: tuple[Any, Any]) -> None:
    s, wiring = wired
    agent = wiring.agents["predictions"]
    ev = {"event_id": "e1", "ts": T0, "model": "m", "version": "v1", "latency_ms": 5.0}
    async with agent.test_context() as test:
        await test.put(value=b"{not json", key=b"m")
        await test.put(value=orjson.dumps(ev), key=b"m")
        # the agent has its micro-batch and waits for the profiles (asyncio.Event keeps
        # its waiters): nothing was judged meanwhile
        await until(lambda: bool(wiring.references_loaded._waiters))
        assert not s.deadletter.send.await_count, "judged before the followers were read"
        wiring.references_loaded.set()
        wiring.silences_loaded.set()
        await until(lambda: s.deadletter.send.await_count == 1
                    and s.state.send_changelog.called)
    dead = orjson.loads(s.deadletter.send.await_args.kwargs["value"])
    assert dead["reason"].startswith("not_json")
    assert "m" in wiring.predictions.monitors


async def test_a_slice_that_fails_outside_the_folding_is_counted_and_the_agent_goes_on(
        wired: tuple[Any, Any], registry: CollectorRegistry) -> None:
    s, wiring = wired
    wiring.references_loaded.set()
    wiring.silences_loaded.set()
    agent = wiring.agents["predictions"]
    fold = wiring.predictions.process_safely
    calls: list[int] = []

    def once_broken(messages: Any, now: float, saved: Any) -> Outbox:
        calls.append(len(messages))
        if len(calls) == 1:
            raise RuntimeError("a bug around the folding")
        return fold(messages, now, saved)

    wiring.predictions.process_safely = once_broken  # type: ignore[method-assign]
    ev = {"event_id": "e1", "ts": T0, "model": "m", "version": "v1", "latency_ms": 5.0}
    async with agent.test_context() as test:
        await test.put(value=orjson.dumps(ev), key=b"m")
        await until(lambda: len(calls) == 1)
        await test.put(value=b"{not json", key=b"m")
        await until(lambda: s.deadletter.send.await_count == 1)
    assert registry.get_sample_value("sentinelle_guard_total",
                                     {"event": "slice_errors"}) == 1.0
    dead = orjson.loads(s.deadletter.send.await_args.kwargs["value"])
    assert dead["reason"].startswith("not_json")


async def test_a_tick_and_a_slice_write_a_model_s_state_in_the_order_they_took_it(
        wired: tuple[Any, Any]) -> None:
    # The tick flushes m's idle window and waits for the broker to take the window's
    # statistics; a slice of m arrives meanwhile. Had the slice run then, its newer
    # checkpoint (and the input mark saying its message was read) would be written
    # before the tick's older one: a takeover would restore the older state, then
    # skip the message as read. In turns, the slice waits for the tick.
    s, wiring = wired
    wiring.references_loaded.set()
    wiring.silences_loaded.set()
    agent = wiring.agents["predictions"]
    acked = asyncio.Event()

    async def slow_stats(**kwargs: Any) -> None:
        await acked.wait()

    s.stats.send = slow_stats
    written = s.state.send_changelog
    now = time.time()
    first = {"event_id": "e1", "ts": now, "model": "m", "version": "v1", "latency_ms": 5.0}
    async with agent.test_context() as test:
        await test.put(value=orjson.dumps(first), key=b"m")
        await until(lambda: written.called)
        tick = asyncio.create_task(wiring.ticks["predictions"](now=now + 3600))
        await until(lambda: bool(acked._waiters))  # the tick waits for its acks
        await test.put(value=orjson.dumps({**first, "event_id": "e2"}), key=b"m")
        # the slice has waited for its turn, or (out of turn) written its checkpoint
        turn = wiring.turns["predictions"]
        await until(lambda: bool(turn._waiters) or written.call_count >= 4)
        acked.set()
        await tick
        await until(lambda: written.call_count >= 4)  # both turns wrote their checkpoints
    states = [orjson.loads(c.args[2]) for c in written.call_args_list if c.args[1] == "m"]
    assert [st["offsets"] for st in states] == [{"0": 0}, {"0": 0}, {"0": 1}], states


async def test_a_tick_folds_a_partition_s_last_messages_faust_never_handed_over(
        wired: tuple[Any, Any], registry: CollectorRegistry) -> None:
    s, wiring = wired
    loaded(wiring)
    tp = TP(s.inputs.topics[0], 0)
    wiring.lag.seen([taken(tp, 0)])  # offset 0 handed over; Faust fetched up to 2
    wiring.lag.tail_after_s = 0.0
    s.app.consumer = FakeConsumer({tp: 3}, {tp: 3})
    ev = {"event_id": "e1", "ts": time.time(), "model": "m", "version": "v1",
          "latency_ms": 5.0}
    fetch = Fetched({1: orjson.dumps(ev), 2: orjson.dumps({**ev, "event_id": "e2"})})
    wiring.gaps.fetch = fetch
    await wiring.ticks["predictions"]()
    assert fetch.calls == 1
    assert registry.get_sample_value("sentinelle_events_total", {"topic": tp.topic}) == 2
    assert registry.get_sample_value("sentinelle_guard_total", {"event": "input_refetched"}) == 2
    await wiring.ticks["predictions"]()
    assert fetch.calls == 1  # caught up: nothing more to fetch


async def test_a_takeover_that_starts_past_the_state_s_mark_fetches_what_lies_between(
        wired: tuple[Any, Any], registry: CollectorRegistry) -> None:
    # Offset 0 folded; the partition goes and comes back (a rebalance), and Faust's
    # first message is offset 3: 1 and 2 were committed though no agent saw them.
    s, wiring = wired
    loaded(wiring)
    agent = wiring.agents["predictions"]
    ev = {"event_id": "e0", "ts": T0, "model": "m", "version": "v1", "latency_ms": 5.0}
    fetch = Fetched({o: orjson.dumps({**ev, "event_id": f"e{o}"}) for o in (1, 2)})
    wiring.gaps.fetch = fetch
    written = s.state.send_changelog
    async with agent.test_context() as test:
        await test.put(value=orjson.dumps(ev), key=b"m")
        await until(lambda: written.called)
        wiring.lag.forget(set(wiring.lag.top))  # revoked, then assigned again
        test.sent_offset += 2
        await test.put(value=orjson.dumps({**ev, "event_id": "e3"}), key=b"m")
        await until(lambda: checkpointed(written, "m", {"0": 3}))
    assert fetch.calls == 1
    assert registry.get_sample_value("sentinelle_events_total",
                                     {"topic": s.inputs.topics[0]}) == 4
