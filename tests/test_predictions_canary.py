"""Canary rollouts through the whole micro-batch path (parse, windows, analysis,
decisions, alerts, checkpoints), without Kafka, on fixed seeds."""

from __future__ import annotations

import random
from typing import Any

import orjson

from detectors.profile import build_profile
from streams.config import Settings
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import ReferenceStore

T0 = 1_795_000_000.0
SIZE = 10.0
PER_WINDOW = 2000
SETTINGS = Settings(
    # the tests' wall clock starts near 0 while events are stamped in 2026
    limits={"max_future_s": 4e9},  # type: ignore[arg-type]
    windows={"size_s": SIZE, "allowed_lateness_s": 0, "max_lead_s": 4e9},  # type: ignore[arg-type]
    burn_rate={"enabled": False},  # type: ignore[arg-type]
    canary={"min_requests": 80, "fail_windows": 2, "pass_windows": 2,  # type: ignore[arg-type]
            "approval_above": 25, "cooldown_s": SIZE},
)
PREDICTIONS = "ml.predictions"


class Traffic:
    """Windows of one model's traffic, stable and canary, as batch messages."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.offset = 0
        self.window = 0

    def windows(self, n: int, percent: float, canary_error: float = 0.005,
                canary_score_shift: float = 0.0, stable: str = "v1",
                canary: str = "v2") -> list[InMessage]:
        out = []
        for _ in range(n):
            start = T0 + self.window * SIZE
            evs = []
            for i in range(PER_WINDOW):
                is_canary = self.rng.random() < percent / 100
                err = canary_error if is_canary else 0.005
                score = min(1.0, self.rng.random() + (canary_score_shift if is_canary else 0))
                evs.append({"event_id": f"e{self.window}-{i}", "ts": start + i * SIZE / PER_WINDOW,
                            "model": "m", "version": canary if is_canary else stable,
                            "cohort": "canary" if is_canary else "stable",
                            "latency_ms": self.rng.lognormvariate(3.5, 0.4),
                            "status": "error" if self.rng.random() < err else "ok",
                            "prediction": round(score, 4)})
            for j in range(0, PER_WINDOW, 500):
                out.append(self.message(PREDICTIONS, evs[j:j + 500]))
            self.window += 1
        return out

    def message(self, topic: str, value: Any) -> InMessage:
        self.offset += 1
        return InMessage(orjson.dumps(value), 0, self.offset, topic)

    def deployment(self, phase: str, percent: float | None, canary: str | None = "v2",
                   stable: str = "v1") -> InMessage:
        rec = {"model": "m", "stable_version": stable, "canary_version": canary,
               "phase": phase, "ts": T0 + self.window * SIZE, "environment": "prod-eu"}
        if percent is not None:
            rec["traffic_percent"] = percent
        return self.message("ml.deployments", rec)

    def approval(self, action: str = "promote", version: str = "v2") -> InMessage:
        return self.message("ml.deploy.approvals", {
            "model": "m", "version": version, "action": action, "approved_by": "ana",
            "ts": T0 + self.window * SIZE})


def commands(box: Outbox) -> list[dict[str, Any]]:
    return [c for _, c in box.commands]


def canary_alerts(box: Outbox) -> list[tuple[str, str]]:
    return [(a["event_action"], k) for k, a in box.alerts
            if a["payload"]["class"] == "canary_regression"]


def test_a_canary_ten_times_worse_is_rolled_back_once_and_its_alert_resolves() -> None:
    p = PredictionProcessor(SETTINGS, PREDICTIONS)
    t = Traffic()
    box = p.process(t.windows(6, percent=5, canary_error=0.05), now=0.0)
    [cmd] = commands(box)  # learned from traffic alone: no controller announced it
    assert (cmd["action"], cmd["from_version"], cmd["to_version"]) == ("rollback", "v2", "v1")
    assert cmd["command_id"] == "rollback:m:v2:5"
    assert "error rate" in cmd["reason"] and cmd["evidence"]["error_rate"]["p_value"] < 0.01
    assert canary_alerts(box) == [("trigger", "canary_regression:m:v2")]
    assert cmd["alert_dedup_keys"] == ["canary_regression:m:v2"]
    trigger = next(a for _, a in box.alerts if a["payload"]["class"] == "canary_regression")
    assert trigger["payload"]["group"] == "deployment"
    assert trigger["payload"]["severity"] == "critical"
    # the controller rolls back and says so; the regression no longer serves
    box = p.process([t.deployment("rolled_back", 0)] + t.windows(2, percent=0), now=1.0)
    assert canary_alerts(box) == [("resolve", "canary_regression:m:v2")]
    assert commands(box) == []


def test_an_equal_canary_is_promoted_step_by_step_and_waits_for_approval_above_25() -> None:
    p = PredictionProcessor(SETTINGS, PREDICTIONS)
    t = Traffic(seed=2)
    box = p.process([t.deployment("started", 5)] + t.windows(4, percent=5), now=0.0)
    [promote] = commands(box)
    assert (promote["command_id"], promote["traffic_percent"]) == ("promote:m:v2:25", 25)
    assert promote["environment"] == "prod-eu" and not promote["requires_approval"]
    # the controller moves traffic; the next windows at 25 % pass: 50 % waits
    box = p.process([t.deployment("step", 25)] + t.windows(5, percent=25), now=1.0)
    [wait] = commands(box)
    assert wait["requires_approval"] is True and "waits for an approval" in wait["reason"]
    assert wait["command_id"] == "promote:m:v2:50:awaiting-approval"
    assert commands(p.process(t.windows(2, percent=25), now=2.0)) == []  # said once
    box = p.process([t.approval()], now=3.0)
    [approved] = commands(box)
    assert (approved["command_id"], approved["traffic_percent"]) == ("promote:m:v2:50", 50)
    assert "approved by ana" in approved["reason"]
    assert canary_alerts(box) == []


def test_a_low_traffic_canary_stays_inconclusive() -> None:
    p = PredictionProcessor(SETTINGS, PREDICTIONS)
    box = p.process(Traffic(seed=3).windows(8, percent=1, canary_error=0.2), now=0.0)
    assert commands(box) == [] and canary_alerts(box) == []


def test_diverging_predictions_fail_the_canary_on_the_profile_bins() -> None:
    refs = ReferenceStore(SETTINGS.skew, SETTINGS.drift.baseline_factor)
    rng = random.Random(4)
    import polars as pl
    rows = pl.DataFrame({"prediction": [rng.random() for _ in range(5000)]})
    refs.add(build_profile(rows.lazy(), "m", "v1", created_at=1.0))
    p = PredictionProcessor(SETTINGS, PREDICTIONS, refs)
    box = p.process(Traffic(seed=5).windows(5, percent=20, canary_score_shift=0.4), now=0.0)
    [cmd] = commands(box)
    assert cmd["action"] == "rollback" and "predictions diverge" in cmd["reason"]
    assert cmd["evidence"]["predictions"]["jensen_shannon"] > 0.1
    # the same traffic without the shift passes
    p2 = PredictionProcessor(SETTINGS, PREDICTIONS, refs)
    assert all(c["action"] == "promote"
               for c in commands(p2.process(Traffic(seed=5).windows(5, percent=20), now=0.0)))


def test_a_restored_worker_goes_on_without_repeating_a_command() -> None:
    t = Traffic(seed=6)
    msgs = ([t.deployment("started", 5)] + t.windows(4, percent=5)
            + [t.deployment("step", 25)] + t.windows(5, percent=25) + [t.approval()])
    whole = commands(PredictionProcessor(SETTINGS, PREDICTIONS).process(msgs, now=0.0))
    cut = 9
    first = PredictionProcessor(SETTINGS, PREDICTIONS)
    a = first.process(msgs[:cut], now=0.0)
    # what the changelog holds: the latest checkpoint of each key
    table = {key: orjson.loads(orjson.dumps(v)) for _, key, v in a.checkpoints}
    second = PredictionProcessor(SETTINGS, PREDICTIONS)
    # the consumer offset was not committed: the new worker reads some messages again
    b = second.process(msgs[cut - 4:], now=1.0, saved=table.get)
    ids = [c["command_id"] for c in commands(a) + commands(b)]
    assert ids == [c["command_id"] for c in whole] == [
        "promote:m:v2:25", "promote:m:v2:50:awaiting-approval", "promote:m:v2:50"]


def test_bad_deployment_and_approval_records_are_dead_lettered() -> None:
    p = PredictionProcessor(SETTINGS, PREDICTIONS)
    t = Traffic()
    box = p.process([
        t.message("ml.deployments", {"model": "m", "phase": "started", "ts": T0,
                                     "stable_version": "v1", "canary_version": "v2"}),
        t.message("ml.deploy.approvals", {"model": "m", "version": "v2", "action": "yes",
                                          "approved_by": "ana", "ts": T0}),
        InMessage(b"{not json", 0, 99, "ml.deploy.approvals"),
    ], now=0.0)
    reasons = [(d["topic"], d["reason"].split(":")[0]) for d in box.deadletters]
    assert reasons == [("ml.deployments", "missing_field"), ("ml.deploy.approvals", "bad_value"),
                       ("ml.deploy.approvals", "not_json")]


def test_a_rollout_announced_before_its_traffic_is_kept_until_the_traffic_comes() -> None:
    """The controller announces the canary at 5 %, then (wall clock and event
    time later) its traffic arrives and fails: the rollback names the announced
    rollout (its step and environment), not one guessed from the traffic."""
    p = PredictionProcessor(SETTINGS, PREDICTIONS)
    t = Traffic(seed=7)
    wall = T0 + 0.5
    box = p.process([t.deployment("started", 5)], now=wall)
    assert commands(box) == []
    t.window = 3  # the first canary requests come 30 s (event time) after the announcement
    for second in (1.0, 2.0, 5.0, 30.0):  # the worker's wall-clock ticks meanwhile
        p.tick(wall + second, [])
        assert "m" in p.monitors, f"rollout state dropped {second} s after its announcement"
    box = p.process(t.windows(4, percent=20, canary_error=0.05), now=wall + 60.0)
    [cmd] = commands(box)
    assert (cmd["action"], cmd["from_version"]) == ("rollback", "v2")
    # the announced step (5 %), not the nearest step to the 20 % seen (25 %)
    assert cmd["command_id"] == "rollback:m:v2:5"
    assert cmd["environment"] == "prod-eu"  # only the announcement says where it runs


def test_the_same_canary_rolled_out_again_and_failing_again_is_rolled_back_again() -> None:
    p = PredictionProcessor(SETTINGS, PREDICTIONS)
    t = Traffic(seed=8)
    box = p.process([t.deployment("started", 5)] + t.windows(4, percent=5, canary_error=0.05),
                    now=0.0)
    assert [c["command_id"] for c in commands(box)] == ["rollback:m:v2:5"]
    assert canary_alerts(box) == [("trigger", "canary_regression:m:v2")]
    box = p.process([t.deployment("rolled_back", 0)] + t.windows(2, percent=0)
                    + [t.deployment("started", 5)]
                    + t.windows(4, percent=5, canary_error=0.05), now=1.0)
    # a new rollout of v2, hence a new decision: a controller deduping on ids acts on it
    assert [c["command_id"] for c in commands(box)] == ["rollback:m:v2:5:r2"]
    assert canary_alerts(box) == [("resolve", "canary_regression:m:v2"),
                                  ("trigger", "canary_regression:m:v2")]
