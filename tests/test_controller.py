"""The reference controller's state machine, without Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerting.rollout import make_command
from streams.controller import ControllerState, parse_start


def promote(step: int, **extra: object) -> dict:
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
    assert st.waiting == {"m": wait["command_id"]}
    assert st.apply(promote(50)) is not None
    assert st.apply(promote(50)) is None  # the same command_id again
    assert st.rollouts["m"]["traffic_percent"] == 50 and st.waiting == {}


def test_rollback_sends_all_traffic_to_stable_and_ignores_other_versions() -> None:
    st = ControllerState()
    st.start("m", "v1", "v2", 5)
    other = make_command("rollback", "m", "v1", "v9", 5, "bad", 0.0)
    assert st.apply(other) is None  # not the canary in flight
    rec = st.apply(make_command("rollback", "m", "v1", "v2", 5, "errors", 0.0))
    assert rec is not None and (rec["phase"], rec["weights"]) == ("rolled_back", {"v1": 100})
    assert rec["canary_version"] == "v2"  # which canary ended
    assert st.apply(promote(25)) is None  # a late promotion of a rolled-back canary


def test_start_option_is_checked() -> None:
    with pytest.raises(ValueError, match="MODEL:STABLE:CANARY"):
        parse_start("m:v1")
    with pytest.raises(ValueError, match="1-99"):
        parse_start("m:v1:v2:100")
