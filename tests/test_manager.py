"""The alert manager's stages, one by one, on an injected clock."""

from __future__ import annotations

from typing import Any

import orjson

from alerting.manager import AlertManager, ManagerSettings, Silence
from detectors.base import Signal


def sig(t: float, value: float, key: str = "latency_slo:m:v1:p99", check: str = "latency_slo",
        threshold: float = 500.0, severity: str = "error", model: str = "m",
        version: str | None = "v1", higher_is_worse: bool = True) -> Signal:
    active = value > threshold if higher_is_worse else value < threshold
    return Signal(check, key, active, severity, f"{key} {value}", t, model, version,
                  {"value": value, "threshold": threshold})


def actions(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event_action"], e["dedup_key"]) for e in events]


def run(m: AlertManager, signals: list[Signal]) -> list[tuple[str, str]]:
    out: list[dict[str, Any]] = []
    for s in signals:
        out += m.process([s])
    return actions(out)


K = "latency_slo:m:v1:p99"


def test_for_duration_holds_a_short_blip_back() -> None:
    m = AlertManager(ManagerSettings(for_s=120))
    assert run(m, [sig(0, 900), sig(60, 900), sig(90, 100)]) == []  # gone before 120 s
    assert run(m, [sig(200, 900), sig(260, 900), sig(320, 900)]) == [("trigger", K)]


def test_hysteresis_keeps_a_value_hovering_at_the_threshold_firing() -> None:
    m = AlertManager(ManagerSettings(hysteresis=0.1, keep_firing_for_s=0))  # hysteresis alone
    hovering = [sig(60 * i, v) for i, v in enumerate([900, 490, 510, 480, 505, 470, 300])]
    # 490 and 480 are under 500 but within the 10 % band: no resolve until 300 (< 450).
    assert run(m, hovering) == [("trigger", K), ("resolve", K)]
    assert m.alerts[K].state == "inactive"
    m.tick(360 + 601)  # past the flap window: the key is forgotten
    assert m.alerts == {}


def test_hysteresis_works_for_lower_is_worse_statistics() -> None:
    m = AlertManager(ManagerSettings(hysteresis=0.05, keep_firing_for_s=0))
    acc = [sig(60 * i, v, threshold=0.9, higher_is_worse=False)
           for i, v in enumerate([0.8, 0.91, 0.96])]
    assert run(m, acc) == [("trigger", K), ("resolve", K)]
    assert len(m.process([])) == 0


def test_a_flapping_alert_triggers_once_says_so_and_resolves_once_quiet() -> None:
    # Flap control on its own, as before keep_firing_for_s (which would hold it from the
    # first clear window: see test_manager_incidents.py).
    st = ManagerSettings(hysteresis=0.0, keep_firing_for_s=0, flap_window_s=600, flap_changes=4,
                         flap_hold_s=300)
    m = AlertManager(st)
    flaps = [sig(30 * i, 900 if i % 2 == 0 else 100) for i in range(10)]
    events = []
    for s in flaps:
        events += m.process([s])
    assert actions(events)[:3] == [("trigger", K), ("resolve", K), ("trigger", K)]
    assert len(events) == 4 - 1  # the 4th change made it flapping: held firing since
    assert m.alerts[K].flapping
    quiet = m.process([sig(270 + 301, 100)])
    assert actions(quiet) == [("resolve", K)]
    assert quiet[0]["payload"]["custom_details"]["flapping"] is True


def test_outage_inhibits_the_models_latency_alert_until_it_resolves() -> None:
    m = AlertManager()
    outage = Signal("outage", "outage:m", True, "critical", "m down", 0, "m")
    assert actions(m.process([outage])) == [("trigger", "outage:m")]
    assert m.process([sig(10, 900)]) == []          # held back: the outage explains it
    other = m.process([sig(10, 900, key="latency_slo:other:v1:p99", model="other")])
    assert actions(other) == [("trigger", "latency_slo:other:v1:p99")]
    back = Signal("outage", "outage:m", False, "critical", "m back", 20, "m")
    # The latency alert is still firing: released as soon as the outage resolves.
    assert actions(m.process([back])) == [("resolve", "outage:m"), ("trigger", K)]
    assert m.tick(21) == []


def test_a_resolve_without_a_trigger_sent_is_not_sent() -> None:
    m = AlertManager()
    m.process([Signal("outage", "outage:m", True, "critical", "down", 0, "m")])
    assert m.process([sig(10, 900)]) == [] and m.process([sig(20, 100)]) == []


def test_critical_inhibits_the_warning_of_the_same_check() -> None:
    m = AlertManager()
    crit = sig(0, 900, key="error_rate:m:v1:burn:page", check="error_rate", severity="critical")
    warn = sig(0, 900, key="error_rate:m:v1:burn:ticket", check="error_rate",
               severity="warning")
    assert actions(m.process([crit, warn])) == [("trigger", "error_rate:m:v1:burn:page")]


def test_a_silence_holds_a_trigger_back_and_its_expiry_releases_it() -> None:
    m = AlertManager(ManagerSettings(keep_firing_for_s=0))
    m.silences["s1"] = Silence("s1", {"class": "latency_slo", "model": "m*"}, 0, 100)
    assert m.process([sig(10, 900)]) == []
    assert m.tick(50) == []
    assert actions(m.tick(100)) == [("trigger", K)]
    assert actions(m.process([sig(110, 100)])) == [("resolve", K)]


def test_repeat_interval_renotifies_a_long_firing_alert() -> None:
    m = AlertManager(ManagerSettings(repeat_interval_s=3600))
    m.process([sig(0, 900)])
    assert m.tick(1800) == []
    [again] = m.tick(3600)
    assert again["event_action"] == "trigger"
    assert again["payload"]["custom_details"]["notify_reason"] == "repeat interval elapsed"


def test_alerts_of_one_version_firing_together_share_a_group_key() -> None:
    m = AlertManager(ManagerSettings(group_wait_s=30))
    a = m.process([sig(0, 900)])
    b = m.process([sig(20, 900, key="error_rate:m:v1:spike", check="error_rate",
                       threshold=0.05)])
    c = m.process([sig(25, 900, key="latency_slo:n:v1:p99", model="n")])
    keys = [e[0]["payload"]["custom_details"]["group_key"] for e in (a, b, c)]
    assert keys[0] == keys[1] != keys[2]


def test_state_round_trips_through_json_without_a_second_trigger() -> None:
    m = AlertManager(ManagerSettings(keep_firing_for_s=0))
    m.process([sig(0, 900)])
    other = AlertManager(m.settings)
    other.load_dict(orjson.loads(orjson.dumps(m.to_dict())))
    assert other.process([sig(60, 900)]) == []
    assert actions(other.process([sig(120, 100)])) == [("resolve", K)]


def test_silences_match_by_pattern_and_time() -> None:
    s = Silence.from_dict({"id": "x", "matchers": {"model": "fraud-*", "severity": "warning"},
                           "starts_at": 10, "ends_at": 20})
    hit = Signal("feature_drift", "k", True, "warning", "", 0, "fraud-scorer", "v7")
    assert s.matches(hit, 15) and not s.matches(hit, 25) and not s.matches(hit, 5)
    assert not s.matches(Signal("feature_drift", "k", True, "error", "", 0, "fraud-scorer"), 15)


# -- class rules (metric_anomaly's: what its detector's alert policy used to do) -------------

A = "metric_anomaly:svc:cpu"


def point(t: float, anomalous: bool) -> Signal:
    return Signal("metric_anomaly", A, anomalous, "warning", f"cpu at {t}", t, "svc", None,
                  {"value": 99.0 if anomalous else 40.0})


def ruled(keep: float, cooldown: float) -> AlertManager:
    return AlertManager(ManagerSettings(per_class={
        "metric_anomaly": {"keep_firing_for_s": keep, "cooldown_s": cooldown}}))


def test_a_class_rule_keeps_firing_for_its_own_time_and_cools_down() -> None:
    m = ruled(keep=10, cooldown=100)
    steps = [(0, True), (5, True), (15, False), (16, False), (50, True), (120, True)]
    said = [[e["event_action"] for e in m.process([point(t, a)])] for t, a in steps]
    # trigger; re-affirmed (nothing to send); resolved 10 s after the last anomalous point;
    # nothing; within the cooldown of the trigger at 0: ignored; past it: a new trigger
    assert said == [["trigger"], [], ["resolve"], [], [], ["trigger"]]
    again = ruled(keep=10, cooldown=100)
    again.load_dict(orjson.loads(orjson.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict()


def test_a_class_rule_reaffirms_rather_than_flaps() -> None:
    m = ruled(keep=1800, cooldown=3600)
    out = run(m, [point(t, t % 600 == 0) for t in range(0, 3000, 300)] +
              [point(t, False) for t in range(3000, 6000, 300)])
    assert out == [("trigger", A), ("resolve", A)]  # anomalous every other point: one incident
    assert not m.alerts[A].flapping


def test_the_cooldown_outlives_the_flap_window_and_survives_ticks() -> None:
    m = ruled(keep=0, cooldown=3600)
    assert run(m, [point(0, True), point(300, False)]) == [("trigger", A), ("resolve", A)]
    m.tick(2000, 2000)  # past the flap window (600 s): the key is kept, it is cooling down
    assert run(m, [point(2400, True)]) == []
    m.tick(3700, 3700)  # past the cooldown: forgotten
    assert A not in m.alerts
    assert run(m, [point(3800, True)]) == [("trigger", A)]


def test_default_class_rules_and_overrides() -> None:
    rule = ManagerSettings().per_class["metric_anomaly"]
    assert (rule.keep_firing_for_s, rule.cooldown_s) == (1800.0, 3600.0)
    merged = ManagerSettings(per_class={"metric_anomaly": {"cooldown_s": 60},
                                        "latency_slo": {"keep_firing_for_s": 120}}).per_class
    assert merged["metric_anomaly"].keep_firing_for_s == 1800.0  # merged field by field
    assert merged["metric_anomaly"].cooldown_s == 60
    assert merged["latency_slo"].keep_firing_for_s == 120 and merged["latency_slo"].cooldown_s == 0
