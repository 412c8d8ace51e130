"""Rollout identity in ``command_id`` and announced rollouts awaiting their
traffic, on :class:`RolloutTracker` alone (no Kafka, no pipeline)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from alerting.rollout import RolloutPolicy, RolloutTracker, make_command
from detectors.canary import CanaryAnalysis, PredictionHistograms
from detectors.windows import WindowStats
from streams.cli.rollout import manual_command
from streams.config import Settings
from streams.tools.controller import ControllerState

T0 = 1_795_000_000.0
SIZE = 60.0


def tracker() -> RolloutTracker:
    return RolloutTracker("m", CanaryAnalysis(min_requests=100),
                          RolloutPolicy(fail_windows=2, pass_windows=2, cooldown_s=0))


def deployment(phase: str, percent: float | None = 5, canary: str | None = "v8",
               ts: float = T0, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"model": "m", "stable_version": "v7", "canary_version": canary,
                           "phase": phase, "ts": ts, "environment": "prod-eu", **extra}
    if percent is not None:
        rec["traffic_percent"] = percent
    return rec


def windows(start: float, canary_error: float, seed: int, n: int = 2000,
            share: float = 0.05) -> list[WindowStats]:
    rng = np.random.default_rng(seed)
    nc = int(n * share)
    ns = n - nc
    es, ec = int(rng.binomial(ns, 0.004)), int(rng.binomial(nc, canary_error))
    end = start + SIZE
    return [WindowStats("m", "v7", "stable", start, end, ns, es, 0, 50.0, 80.0, 100.0, 120.0),
            WindowStats("m", "v8", "canary", start, end, nc, ec, 0, 50.0, 80.0, 100.0, 120.0)]


def fail(t: RolloutTracker, first_window: int, count: int = 3) -> list[dict[str, Any]]:
    out = []
    for i in range(first_window, first_window + count):
        closed = windows(T0 + i * SIZE, 0.08, seed=i)
        out += t.on_windows(closed, {}, PredictionHistograms()).commands
    return out


def roll_out_twice(t: RolloutTracker, numbered: bool = False) -> list[dict[str, Any]]:
    """v8 rolled out, failed and rolled back; then v8 rolled out again and failed."""
    extra: list[dict[str, Any]] = [{"rollout": 1}, {"rollout": 2}] if numbered else [{}, {}]
    t.on_deployment(deployment("started", **extra[0]), T0)
    cmds = fail(t, 1)
    t.on_deployment(deployment("rolled_back", 0, ts=T0 + 300, **extra[0]), T0 + 300)
    t.on_deployment(deployment("started", ts=T0 + 600, **extra[1]), T0 + 600)
    return cmds + fail(t, 11)


def test_rolling_the_same_version_out_again_and_failing_issues_a_new_rollback() -> None:
    first, second = roll_out_twice(tracker())
    assert first["action"] == second["action"] == "rollback"
    # the first rollout of a version keeps the plain id; the next names its rollout
    assert (first["command_id"], second["command_id"]) == ("rollback:m:v8:5",
                                                           "rollback:m:v8:5:r2")
    # a controller deduping on command_id acts on both
    st = ControllerState()
    st.start("m", "v7", "v8", 5)
    rec = st.apply(first)
    assert rec is not None and rec["phase"] == "rolled_back"
    st.start("m", "v7", "v8", 5)
    assert st.apply(first) is None  # the first rollback, seen again
    rec = st.apply(second)
    assert rec is not None and rec["phase"] == "rolled_back"
    assert rec["command_id"] == "rollback:m:v8:5:r2"


def test_the_rollout_identity_is_the_same_on_a_replay_and_across_a_checkpoint() -> None:
    ids = [c["command_id"] for c in roll_out_twice(tracker())]
    assert [c["command_id"] for c in roll_out_twice(tracker())] == ids
    # a worker restored between the two rollouts goes on with the same numbering
    t = tracker()
    t.on_deployment(deployment("started"), T0)
    cut = fail(t, 1)
    t.on_deployment(deployment("rolled_back", 0, ts=T0 + 300), T0 + 300)
    restored = tracker()
    restored.load_dict(orjson.loads(orjson.dumps(t.to_dict())))
    restored.on_deployment(deployment("started", ts=T0 + 600), T0 + 600)
    assert [c["command_id"] for c in cut + fail(restored, 11)] == ids


def test_the_controller_numbers_its_rollouts_and_the_worker_and_cli_follow() -> None:
    st = ControllerState()
    assert st.start("m", "v7", "v8", 5)["rollout"] == 1
    st.rollouts["m"]["phase"] = "rolled_back"
    again = st.start("m", "v7", "v8", 5)
    assert again["rollout"] == 2
    cmds = roll_out_twice(tracker(), numbered=True)
    assert [c["command_id"] for c in cmds] == ["rollback:m:v8:5", "rollback:m:v8:5:r2"]
    # a person's rollback of the second rollout is the worker's decision, not the first's
    by_hand = manual_command(Settings(), "fail", "m", again, "ana", now=0)
    assert by_hand["command_id"] == "rollback:m:v8:5:r2"


def test_a_controller_reannouncing_a_rollout_does_not_start_a_new_one() -> None:
    t = tracker()
    t.on_deployment(deployment("started"), T0)
    [cmd] = fail(t, 1)
    # the controller restarts before it applied the rollback and says where it stands
    t.on_deployment(deployment("started", ts=T0 + 200), T0 + 200)
    assert fail(t, 5) == []  # still the rollout already rolled back: judged once
    assert t.active is not None and t.active.rollout == 1


def test_an_announced_rollout_is_held_until_its_ttl_and_not_once_finished() -> None:
    t = RolloutTracker("m", CanaryAnalysis(), RolloutPolicy(), announced_ttl_s=3600)
    assert not t.holds(T0)
    t.on_deployment(deployment("started"), T0)
    assert t.holds(T0 + 2) and t.holds(T0 + 3600)
    assert not t.holds(T0 + 3601)
    t.on_deployment(deployment("step", 25, ts=T0 + 3000), T0 + 3000)  # a later step renews it
    assert t.holds(T0 + 6000)
    t.on_deployment(deployment("rolled_back", 0, ts=T0 + 3100), T0 + 3100)
    assert not t.holds(T0 + 3101)


def test_a_rollback_of_an_announced_rollout_names_its_step_not_the_traffic_share() -> None:
    t = tracker()
    t.on_deployment(deployment("started", 5), T0)
    cmds = []
    for i in range(1, 4):  # 20 % of the traffic is canary: the nearest step would be 25
        cmds += t.on_windows(windows(T0 + i * SIZE, 0.08, seed=i, share=0.2), {},
                             PredictionHistograms()).commands
    [cmd] = cmds
    assert (cmd["command_id"], cmd["environment"]) == ("rollback:m:v8:5", "prod-eu")


def test_tracker_state_is_bounded() -> None:
    t = tracker()
    for k in range(400):  # 400 canary versions rolled out and back, one after another
        c = f"c{k}"
        t.on_deployment(deployment("started", canary=c, ts=T0 + k), T0 + k)
        t.on_deployment(deployment("rolled_back", 0, canary=c, ts=T0 + k), T0 + k)
    hist = PredictionHistograms()
    for w in range(100):  # windows that never close
        hist.add("canary", np.array([T0 + w * SIZE]), np.array([1]), 4)
    state = t.to_dict()
    assert len(state["done"]) <= 50 and len(state["numbers"]) <= 256
    assert len(hist.to_dict()) <= 16
    assert len(orjson.dumps(state)) < 40_000
    # an old, larger checkpoint is cut to the same bounds when loaded
    big = {**state, "done": {f"x{k}": float(k) for k in range(1000)},
           "numbers": {f"x{k}": 1 for k in range(1000)}}
    t.load_dict(big)
    assert len(t.done) == 50 and len(t.numbers) == 256
    assert "x999" in t.done and "x0" not in t.done  # the latest are kept


def test_make_command_ids() -> None:
    ids = [make_command("rollback", "m", "v7", "v8", 5, "r", 0, rollout=n)["command_id"]
           for n in (1, 2, 11)]
    assert ids == ["rollback:m:v8:5", "rollback:m:v8:5:r2", "rollback:m:v8:5:r11"]
