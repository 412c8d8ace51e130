"""Pipeline runs, quotas and the validation gate: detectors alone, then the micro-batch
path (parse, state, alerts, commands, pool re-keying, checkpoints), on fixed seeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest

from detectors.base import Batch
from detectors.pipelines import DurationAnomaly, FailureStreak, RunInfo, StallWatch
from detectors.profile import build_profile
from detectors.quota import QuotaForecast, UsagePoint, usage_batch
from streams.config import Settings
from streams.core.operations import OperationsProcessor, OpsOutbox
from streams.core.predictions import InMessage
from streams.core.references import ReferenceStore

T0 = 1_795_000_000.0
HOUR = 3600.0
POOL_TOPIC = "s-pool-usage"


def runs(status: list[str], durations: list[float | None] | None = None, t0: float = T0,
         prefix: str = "r", errors: list[str | None] | None = None) -> Batch:
    """Run events, one a second from ``t0``."""
    n = len(status)
    return {"ts": t0 + np.arange(n, dtype=float), "run_id": [f"{prefix}{i}" for i in range(n)],
            "status": status, "error": errors or [None] * n,
            "duration_s": durations or [None] * n}


def test_failure_severity_rises_with_the_streak_and_a_success_resolves() -> None:
    f = FailureStreak("train", critical_after=3)
    sev = [s.severity for s in f.update(runs(["failed"] * 4, errors=["OOM"] * 4))]
    assert sev == ["error", "error", "critical", "critical"]
    [ok] = f.update(runs(["succeeded"], t0=T0 + 5, prefix="ok"))
    assert not ok.active and f.streak == 0


def test_stall_limit_is_learned_from_past_runs_within_floor_and_ceiling() -> None:
    w = StallWatch("train", floor_s=60, ceiling_s=10_000, factor=1.5, min_runs=5)
    run = RunInfo("r1", "training", T0, last_wall=1000.0)
    assert w.check([run], now=1000.0 + 9_999) == []  # before history: the ceiling
    assert w.update(runs(["succeeded"] * 5, [100, 110, 120, 105, 115])) == []
    limit = w.expected_s()
    assert 1.5 * 115 < limit <= 1.5 * 120
    assert w.check([run], now=1000.0 + limit - 1) == []
    [stalled] = w.check([run], now=1000.0 + limit + 1)
    assert stalled.active and stalled.key == "pipeline_stalled:train:r1"
    assert w.check([run], now=1000.0 + 2 * limit) == []  # said once
    [back] = w.update({"ts": np.array([5000.0]), "run_id": ["r1"], "status": ["heartbeat"],
                       "duration_s": [None]})
    assert not back.active
    w.update(runs(["succeeded"] * 61, [1.0] * 61, prefix="fast"))
    assert w.expected_s() == 60  # the floor


def test_duration_anomaly_is_silent_in_warm_up_then_catches_a_slow_run_and_adapts() -> None:
    rng = np.random.default_rng(3)
    d = DurationAnomaly("train", min_runs=10, threshold=0.999, accept_after=3)
    normal = rng.lognormal(np.log(600), 0.1, size=40)
    said = d.update(runs(["succeeded"] * 40, normal.tolist()))
    assert len(said) == 30 and said[0].timestamp == T0 + 10  # warm-up: nothing, not "normal"
    assert not any(s.active for s in said)
    [slow] = d.update(runs(["succeeded"], [1800.0], T0 + 100, "slow"))
    assert slow.active and slow.details["duration_s"] == 1800
    assert slow.details["expected"]["high"] < 1800 < 4 * slow.details["typical_s"]
    [back] = d.update(runs(["succeeded"], [610.0], T0 + 101, "ok"))
    assert not back.active
    # the input doubled for good: three slow runs in a row become the new normal
    shifted = d.update(runs(["succeeded"] * 12, [1500.0 + 10 * (i % 3) for i in range(12)],
                            T0 + 200, "s"))
    assert [s.active for s in shifted[:3]] == [True, True, True]
    # learned afresh: a new warm-up (runs 3 to 9 say nothing), then normal again
    assert [s.timestamp - T0 - 200 for s in shifted] == [0, 1, 2, 10, 11]
    assert not shifted[-1].active


def points(used: list[float], limit: float = 200.0, spacing: float = HOUR,
           run_used: list[float] | None = None, pipeline: str = "train",
           run_id: str = "r1", t0: float = T0) -> Batch:
    return usage_batch([UsagePoint(t0 + i * spacing, pipeline, run_id, "heartbeat",
                                   None if run_used is None else run_used[i], u, limit)
                        for i, u in enumerate(used)])


def test_quota_forecast_warns_within_the_horizon_and_pages_at_90_percent() -> None:
    q = QuotaForecast("team-a", "gpu_hours", window_s=6 * HOUR, horizon_s=24 * HOUR,
                      critical_share=0.9, errant_share=0.5)
    # 2 gpu-hours per hour, 100 left: 50 h away, beyond the 24 h horizon
    sig = {s.key: s for s in q.update(points([90, 92, 94, 96, 98, 100]))}
    forecast = sig["quota_exhaustion:team-a:gpu_hours:forecast"]
    assert not forecast.active and abs(forecast.details["hours_to_limit"] - 50) < 1e-6
    assert abs(forecast.details["rate_per_hour"] - 2) < 1e-9
    # now 10 per hour: 50 left is 5 h away
    sig = {s.key: s for s in q.update(points([120, 130, 140, 150], t0=T0 + 6 * HOUR))}
    assert sig["quota_exhaustion:team-a:gpu_hours:forecast"].active
    assert not sig["quota_exhaustion:team-a:gpu_hours:limit"].active
    sig = {s.key: s for s in q.update(points([170, 180], t0=T0 + 10 * HOUR))}
    page = sig["quota_exhaustion:team-a:gpu_hours:limit"]
    assert page.active and page.severity == "critical" and page.details["share_of_limit"] == 0.9


def test_top_consumers_and_an_errant_run_are_named() -> None:
    q = QuotaForecast("team-a", "gpu_hours", errant_share=0.25)
    pts = [UsagePoint(T0 + i, "nightly", "n1", "heartbeat", 2.0 * i, 10 + i, 200)
           for i in range(5)]
    pts += [UsagePoint(T0 + 10 + i, "hyperopt", "h1", "heartbeat", 20.0 * i, 20 + 20 * i, 200)
            for i in range(5)]
    sig = q.update(usage_batch(pts))
    errant = [s for s in sig if s.key == "quota_exhaustion:team-a:gpu_hours:run:h1"]
    assert [s.active for s in errant] == [True]  # 60 > 25 % of 200, said once
    assert errant[0].details["pipeline"] == "hyperopt"
    top = q.consumers()
    assert [c["pipeline"] for c in top] == ["hyperopt", "nightly"]
    assert top[0]["used"] == 80 and top[1]["used"] == 8
    [ended] = q.update(usage_batch([UsagePoint(T0 + 20, "hyperopt", "h1", "succeeded", 80, 100,
                                               200)]))[:1]
    assert ended.key.endswith("run:h1") and not ended.active


# -- the micro-batch path --------------------------------------------------------

def states(checkpoints: list[Any]) -> list[Any]:
    """The checkpoints of keys, without the input partitions' read marks."""
    return [c for c in checkpoints if c[2] is None or c[2].get("kind") != "input"]


SETTINGS = Settings(
    # the tests' wall clock starts near 0 while events are stamped in 2026
    limits={"max_future_s": 4e9},  # type: ignore[arg-type]
    pipelines={"stall_floor_s": 10, "stall_min_runs": 3,  # type: ignore[arg-type]
               "duration_min_runs": 5},
    quota={"window_s": 6 * HOUR},  # type: ignore[arg-type]
)


class Feed:
    def __init__(self) -> None:
        self.offset = 0

    def msg(self, topic: str, value: Any, partition: int = 0) -> InMessage:
        self.offset += 1
        return InMessage(orjson.dumps(value), partition, self.offset, topic)

    def run(self, pipeline: str, run_id: str, status: str, ts: float, partition: int = 0,
            **kw: Any) -> InMessage:
        return self.msg("ml.pipeline", {"event_id": f"{run_id}-{status}-{ts}", "ts": ts,
                                        "pipeline": pipeline, "kind": kw.pop("kind", "training"),
                                        "run_id": run_id, "status": status, **kw}, partition)


def keys(box: OpsOutbox) -> list[tuple[str, str]]:
    return [(a["event_action"], k) for k, a in box.alerts]


def test_failures_trigger_escalate_and_resolve_through_the_pipeline() -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    msgs = []
    for i in range(3):
        msgs += [f.run("train", f"r{i}", "started", T0 + i * 100),
                 f.run("train", f"r{i}", "failed", T0 + i * 100 + 50, error="CUDA OOM")]
    msgs += [f.run("train", "r9", "started", T0 + 900), f.run("train", "r9", "succeeded",
                                                              T0 + 950)]
    box = ops.process(msgs, now=1000.0)
    assert keys(box) == [("trigger", "pipeline_failure:train"),
                         ("resolve", "pipeline_failure:train")]
    trigger = box.alerts[0][1]
    assert trigger["payload"]["group"] == "training" and "CUDA OOM" in trigger["payload"]["summary"]
    [(_, key, state)] = states(box.checkpoints)
    assert key == "pipeline:train" and state["failures"]["streak"] == 0


def test_a_stalled_run_alerts_on_the_wall_clock_and_resolves_on_its_heartbeat() -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    history = []
    for i in range(3):
        history += [f.run("etl", f"r{i}", "started", T0 + i * 100),
                    f.run("etl", f"r{i}", "succeeded", T0 + i * 100 + 20, duration_s=20)]
    ops.process(history + [f.run("etl", "live", "started", T0 + 500)], now=1000.0)
    assert keys(ops.tick(1000.0 + 29, [])) == []  # 1.5 x 20 s = 30 s
    box = ops.tick(1000.0 + 31, [])
    assert keys(box) == [("trigger", "pipeline_stalled:etl:live")]
    assert box.alerts[0][1]["payload"]["custom_details"]["expected_s"] == 30
    box = ops.process([f.run("etl", "live", "heartbeat", T0 + 540)], now=1040.0)
    assert keys(box) == [("resolve", "pipeline_stalled:etl:live")]


def test_quota_usage_is_rekeyed_by_pool_and_judged_where_the_pool_lives() -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    msgs = [f.run("train", "r1", "heartbeat", T0 + i * HOUR, resources={"gpu_hours": 30.0 * i},
                  quota={"pool": "team-a", "resource": "gpu_hours", "used": 100 + 30 * i,
                         "limit": 400}, partition=1) for i in range(5)]
    box = ops.process(msgs, now=1.0)
    [(pool, pts)] = box.pool_usage
    assert pool == "team-a" and len(pts) == 5 and pts[-1]["run_used"] == 120
    # the pool's worker: 30 per hour, 160 left, 5.3 h away; the run used 30 % of the limit
    box = ops.process([f.msg(POOL_TOPIC, pts, partition=3)], now=2.0)
    fired = {k for a, k in keys(box) if a == "trigger"}
    assert fired == {"quota_exhaustion:team-a:gpu_hours:forecast",
                     "quota_exhaustion:team-a:gpu_hours:run:r1"}
    forecast = next(a for k, a in box.alerts if k.endswith("forecast"))
    assert forecast["payload"]["custom_details"]["top_consumers"][0]["pipeline"] == "train"
    [(partition, key, _)] = states(box.checkpoints)
    assert (partition, key) == (3, "pool:team-a")


@pytest.mark.parametrize(("change", "says"), [
    ({"run_id": None}, "'run_id' must be a string"),
    ({"ts": "soon"}, "'ts' must be a finite number"),
    ({"used": True}, "'used' must be a finite number"),
    ({"pool": "team-b"}, "is about another pool than point 0"),
])
def test_a_pool_usage_point_not_as_a_worker_writes_it_is_dead_lettered(
        change: dict[str, Any], says: str) -> None:
    """The pool-usage topic is written by workers; a point written otherwise (another
    program, a bug) is refused whole, with its field, and the pool's state stays
    writable: a null run_id used to make its checkpoint unencodable for good."""
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    msgs = [f.run("train", "r1", "heartbeat", T0 + i * HOUR, resources={"gpu_hours": 30.0 * i},
                  quota={"pool": "team-a", "resource": "gpu_hours", "used": 100 + 30 * i,
                         "limit": 400}, partition=1) for i in range(3)]
    [(_, pts)] = ops.process(msgs, now=1.0).pool_usage
    bad = f.msg(POOL_TOPIC, [pts[0], {**pts[1], **change}], partition=3)
    box = ops.process([bad, f.msg(POOL_TOPIC, pts, partition=3)], now=2.0)
    [dead] = box.deadletters
    assert dead["offset"] == bad.offset and dead["reason"].endswith(says)
    [(_, key, state)] = states(box.checkpoints)
    assert key == "pool:team-a" and orjson.loads(orjson.dumps(state))["kind"] == "pool"


def test_a_regressed_validation_raises_the_gate_and_pauses_that_version_once() -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()

    def validated(version: str, auc: float, logloss: float, t: float) -> list[InMessage]:
        return [f.run("fraud-validation", f"val-{version}", "started", t, kind="validation",
                      model="fraud-scorer", version=version),
                f.run("fraud-validation", f"val-{version}", "succeeded", t + 60,
                      kind="validation", model="fraud-scorer", version=version,
                      metrics={"auc": auc, "logloss": logloss, "rows": 1e5})]

    box = ops.process(validated("v7", 0.91, 0.30, T0) + validated("v8", 0.85, 0.303, T0 + 600),
                      now=1.0)
    assert keys(box) == [("trigger", "validation_gate:fraud-scorer:v8")]
    details = box.alerts[0][1]["payload"]["custom_details"]
    assert set(details["regressions"]) == {"auc"} and details["previous_version"] == "v7"
    [(model, cmd)] = box.commands
    assert (model, cmd["action"], cmd["from_version"]) == ("fraud-scorer", "pause", "v8")
    assert cmd["command_id"] == "pause:fraud-scorer:v8:validation"
    assert cmd["alert_dedup_keys"] == ["validation_gate:fraud-scorer:v8"]
    # a fixed v8 validates as well as v7: resolved, nothing paused
    box = ops.process(validated("v8", 0.915, 0.29, T0 + 1200), now=2.0)
    assert keys(box) == [("resolve", "validation_gate:fraud-scorer:v8")] and box.commands == []


def test_validation_data_skewed_against_the_training_profile_also_gates() -> None:
    rng = np.random.default_rng(5)
    train = pl.DataFrame({"amount": rng.exponential(80, 20_000)})
    refs = ReferenceStore(SETTINGS.skew)
    refs.add(build_profile(train.lazy(), "fraud-scorer", "v8", created_at=1.0))
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC, refs), Feed()
    same = build_profile(pl.DataFrame({"amount": rng.exponential(80, 20_000)}).lazy(), "x", "y")
    moved = build_profile(pl.DataFrame({"amount": rng.exponential(200, 20_000)}).lazy(), "x",
                          "y")
    box = ops.process([f.run("val", "a", "succeeded", T0, kind="validation",
                             model="fraud-scorer", version="v8", profile=same)], now=1.0)
    assert box.alerts == []
    box = ops.process([f.run("val", "b", "succeeded", T0 + 1, kind="validation",
                             model="fraud-scorer", version="v8", profile=moved)], now=2.0)
    assert keys(box) == [("trigger", "validation_gate:fraud-scorer:v8:skew")]
    assert [c["command_id"] for _, c in box.commands] == [
        "pause:fraud-scorer:v8:validation-skew"]


def test_state_survives_a_checkpoint_and_bad_events_are_dead_lettered() -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    box = ops.process([f.run("train", "r1", "started", T0),
                       f.run("train", "r1", "failed", T0 + 5),
                       f.msg("ml.pipeline", {"pipeline": "train", "ts": T0}),
                       f.msg("ml.metrics", {"source": "api", "metric": "cpu", "ts": T0,
                                            "value": "high"})], now=1.0)
    assert [d["reason"].split(":")[0] for d in box.deadletters] == ["missing_field", "bad_type"]
    table = {k: orjson.loads(orjson.dumps(v)) for _, k, v in box.checkpoints}
    again = OperationsProcessor(SETTINGS, POOL_TOPIC)
    # a replay of the failed run's message is skipped; the next failure makes 2 in a row
    replay = InMessage(orjson.dumps({"event_id": "x", "ts": T0 + 5, "pipeline": "train",
                                     "kind": "training", "run_id": "r1", "status": "failed"}),
                       0, 2, "ml.pipeline")
    box = again.process([replay, f.run("train", "r2", "failed", T0 + 10)], now=2.0,
                        saved=table.get)
    assert box.alerts == []  # still firing since the first failure: no second trigger
    [(_, _, state)] = states(box.checkpoints)
    assert state["failures"]["streak"] == 2


def test_event_time_alerts_are_not_repeated_by_the_wall_clock() -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    old = T0 - 30 * 86400  # a replay of last month's runs
    box = ops.process([f.run("train", "r1", "failed", old)], now=T0)
    assert keys(box) == [("trigger", "pipeline_failure:train")]
    assert ops.tick(T0 + 60, []).alerts == []  # 4 h of repeat interval: in event time


def test_a_bug_after_the_batch_is_marked_read_costs_only_its_message(monkeypatch: Any) -> None:
    """The fault strikes after the messages were marked read (see test_predictions)."""
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    msgs = [f.run("train", "r1", "started", T0), f.run("other", "r9", "failed", T0 + 5),
            f.run("train", "r2", "failed", T0 + 10)]
    import streams.core.operations as operations

    real = operations.parse_pipeline

    def flaky(data: bytes | None, *args: Any) -> Any:
        if data is not None and b'"other"' in data:
            raise RuntimeError("a bug")
        return real(data, *args)

    monkeypatch.setattr(operations, "parse_pipeline", flaky)
    box = ops.process_safely(msgs, now=1.0)
    [dead] = box.deadletters
    assert (dead["topic"], dead["offset"]) == ("ml.pipeline", msgs[1].offset)
    assert dead["reason"] == "internal_error: RuntimeError: a bug"
    assert keys(box) == [("trigger", "pipeline_failure:train")]  # r1, r2 folded


def test_a_bug_on_one_message_costs_only_that_message(monkeypatch: Any) -> None:
    ops, f = OperationsProcessor(SETTINGS, POOL_TOPIC), Feed()
    real = ops.process
    msgs = [f.run("train", "r1", "started", T0), f.run("train", "r1", "failed", T0 + 5),
            f.run("train", "r2", "failed", T0 + 10)]

    def flaky(messages: list[InMessage], now: float, saved: Any = None) -> OpsOutbox:
        if any(m.offset == msgs[1].offset for m in messages):
            raise RuntimeError("a bug")
        return real(messages, now)

    monkeypatch.setattr(ops, "process", flaky)
    box = ops.process_safely(msgs, now=1.0)
    [dead] = box.deadletters
    assert (dead["topic"], dead["offset"]) == ("ml.pipeline", msgs[1].offset)
    assert dead["reason"] == "internal_error: RuntimeError: a bug"
    assert keys(box) == [("trigger", "pipeline_failure:train")]  # r2 folded, alone
