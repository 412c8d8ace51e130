"""The reference controller's state machine, without Kafka."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from alerting.rollout import make_command
from streams.tools import controller
from streams.tools.controller import (
    ControllerState,
    ControllerWatch,
    parse_command,
    parse_start,
    run_controller,
)


def promote(step: int, **extra: Any) -> dict:
    return make_command("promote", "m", "v1", "v2", step, "passed", 0.0, traffic_percent=step,
                        **extra)


def test_promotes_step_by_step_to_the_new_stable_version(tmp_path: Path) -> None:
    st = ControllerState()
    assert st.start("m", "v1", "v2", 5, "prod")["weights"] == {"v1": 95, "v2": 5}
    rec = st.apply(promote(25))
    assert rec is not None and (rec["phase"], rec["weights"]) == ("step", {"v1": 75, "v2": 25})
    assert rec["command_id"] == "promote:m:v2:25" and rec["environment"] == "prod"
    rec = st.apply(promote(100))
    assert rec is not None and rec["phase"] == "promoted"
    assert (rec["stable_version"], rec["weights"]) == ("v2", {"v2": 100})
    st.save(tmp_path / "s.json")
    again = ControllerState.load(tmp_path / "s.json")
    assert again.rollouts == st.rollouts and again.applied == st.applied


def test_a_command_seen_twice_acts_once_and_a_waiting_one_not_at_all() -> None:
    st = ControllerState()
    st.start("m", "v1", "v2", 25)
    wait = promote(50, requires_approval=True)
    wait["command_id"] += ":awaiting-approval"
    assert st.apply(wait) is None and st.rollouts["m"]["traffic_percent"] == 25
    assert st.waiting == {"m": wait["command_id"]} and st.outcome == "awaiting_approval"
    assert st.apply(promote(50)) is not None and st.outcome == "applied"
    assert st.apply(promote(50)) is None  # the same command_id again
    assert st.outcome == "duplicate"
    assert st.rollouts["m"]["traffic_percent"] == 50 and st.waiting == {}


def test_rollback_sends_all_traffic_to_stable_and_ignores_other_versions() -> None:
    st = ControllerState()
    st.start("m", "v1", "v2", 5)
    other = make_command("rollback", "m", "v1", "v9", 5, "bad", 0.0)
    assert st.apply(other) is None  # not the canary in flight
    assert st.outcome == "not_in_flight"
    rec = st.apply(make_command("rollback", "m", "v1", "v2", 5, "errors", 0.0))
    assert rec is not None and (rec["phase"], rec["weights"]) == ("rolled_back", {"v1": 100})
    assert rec["canary_version"] == "v2"  # which canary ended
    assert st.apply(promote(25)) is None  # a late promotion of a rolled-back canary


def test_start_option_is_checked() -> None:
    with pytest.raises(ValueError, match="MODEL:STABLE:CANARY"):
        parse_start("m:v1")
    with pytest.raises(ValueError, match="1-99"):
        parse_start("m:v1:v2:100")


VALID = make_command("promote", "m", "v1", "v2", 25, "passed", 0.0, traffic_percent=25)


@pytest.mark.parametrize(("raw", "code"), [
    (None, "not_json"),
    (b"{not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"null", "not_object"),
    (b"[1, 2]", "not_object"),
    (b'"rollback"', "not_object"),
    (orjson.dumps({**VALID, "traffic_percent": None}), "missing_field"),
    (orjson.dumps({k: v for k, v in VALID.items() if k != "traffic_percent"}), "missing_field"),
    (orjson.dumps({**VALID, "traffic_percent": "25"}), "bad_type"),
    (orjson.dumps({**VALID, "traffic_percent": True}), "bad_type"),
    (orjson.dumps({**VALID, "traffic_percent": 250}), "bad_value"),
    (orjson.dumps({**VALID, "traffic_percent": 0}), "bad_value"),
    (orjson.dumps({**VALID, "action": "explode"}), "bad_value"),
    (orjson.dumps({**VALID, "action": None}), "missing_field"),
    (orjson.dumps({k: v for k, v in VALID.items() if k != "model"}), "missing_field"),
    (orjson.dumps({**VALID, "model": ""}), "bad_value"),
    (orjson.dumps({**VALID, "model": 7}), "bad_type"),
    (orjson.dumps({k: v for k, v in VALID.items() if k != "command_id"}), "missing_field"),
    (orjson.dumps({**VALID, "from_version": None}), "missing_field"),
    (orjson.dumps({**VALID, "requires_approval": "no"}), "bad_type"),
])
def test_a_bad_command_is_refused_with_a_reason(raw: bytes | None, code: str) -> None:
    cmd, reason = parse_command(raw)
    assert cmd is None and reason is not None
    assert reason.split(":")[0] == code


def test_good_commands_pass_validation() -> None:
    rollback = make_command("rollback", "m", "v1", "v2", 5, "errors", 0.0)
    pause = make_command("pause", "m", "v1", "v2", 5, "errors", 0.0)
    for cmd in (VALID, rollback, pause, {**VALID, "traffic_percent": 25.0},
                {**rollback, "traffic_percent": None}):  # unused by a rollback
        assert parse_command(orjson.dumps(cmd)) == (cmd, None)


def test_apply_refuses_a_bad_command_instead_of_raising() -> None:
    st = ControllerState()
    st.start("m", "v1", "v2", 5)
    before = orjson.dumps(st.rollouts)
    assert st.apply({**VALID, "traffic_percent": None}) is None
    assert st.apply({**VALID, "traffic_percent": "25"}) is None
    assert orjson.dumps(st.rollouts) == before and st.applied == []
    assert st.apply(VALID) is not None  # the next good command is applied


class FakeMessage:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self.value, self.offset, self.partition, self.topic = value, offset, 0, "cmds"
        self.key = b"m"


async def test_the_controller_loop_skips_bad_commands_and_commits_past_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = asyncio.Event()
    sent: list[tuple[str, dict]] = []
    commits: list[int] = []
    batch = [FakeMessage(orjson.dumps({**VALID, "traffic_percent": None}), 0),
             FakeMessage(b"{not json", 1),
             FakeMessage(None, 2),
             FakeMessage(orjson.dumps(VALID), 3)]

    class Consumer:
        def __init__(self, *a: object, **k: object) -> None:
            self.calls = 0

        def subscribe(self, topics: list[str], listener: object = None) -> None:
            assert topics == ["cmds"]

        async def start(self) -> None: ...
        async def stop(self) -> None: ...

        async def getmany(self, timeout_ms: int) -> dict:
            self.calls += 1
            if self.calls == 1:
                return {"tp": batch}
            stop.set()
            return {}

        async def commit(self) -> None:
            commits.append(self.calls)

    class Producer:
        def __init__(self, *a: object, **k: object) -> None: ...
        async def start(self) -> None: ...
        async def stop(self) -> None: ...

        async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
            sent.append((topic, orjson.loads(value)))

    monkeypatch.setattr(controller, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(controller, "AIOKafkaProducer", Producer)
    registry = CollectorRegistry()
    watch = ControllerWatch(registry)
    await run_controller("x:9092", "cmds", "deps", tmp_path / "s.json", "g",
                         [("m", "v1", "v2", 5)], stop=stop, deadletter_topic="dead",
                         watch=watch)
    assert commits == [1]  # the batch, bad commands and all, is committed
    deps = [r for t, r in sent if t == "deps"]
    assert [(d["phase"], d.get("command_id")) for d in deps] == [
        ("started", None), ("step", "promote:m:v2:25")]
    dead = [r for t, r in sent if t == "dead"]
    assert [(d["offset"], d["reason"].split(":")[0]) for d in dead] == [
        (0, "missing_field"), (1, "not_json"), (2, "not_json")]
    assert dead[0]["topic"] == "cmds" and dead[1]["raw"] == "{not json"
    assert ControllerState.load(tmp_path / "s.json").rollouts["m"]["traffic_percent"] == 25
    # what its /metrics page shows: the three bad ones invalid, the good one applied
    value = registry.get_sample_value
    assert value("sentinelle_controller_commands_total",
                 {"action": "unknown", "outcome": "invalid"}) == 3
    assert value("sentinelle_controller_commands_total",
                 {"action": "promote", "outcome": "applied"}) == 1
    assert value("sentinelle_controller_announcements_total") == 2
    assert value("sentinelle_controller_canary_traffic_percent",
                 {"model": "m", "stable": "v1", "canary": "v2", "phase": "step"}) == 25
    assert watch.announced and watch.waiting_for() == ["joining the consumer group"]
