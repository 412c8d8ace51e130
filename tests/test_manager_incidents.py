"""One incident per incident: the alert manager with its default settings, driven
the way the worker drives it, on latency windows whose p99 comes and goes.

The worker closes a 60 s window once its watermark passes the window's end by
``allowed_lateness_s``, hands the ``latency_slo`` signal (stamped at the
window's end, event time) to the manager, and calls ``tick(wall, event_now=
watermark)`` every second. Here the wall clock is the event time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import orjson
import pytest

from alerting.manager import AlertManager, ManagerSettings
from detectors.base import Signal
from detectors.contract import rfc3339
from detectors.slo import LatencyThreshold
from detectors.windows import WindowStats
from streams.config import AlertSettings, Settings

T0 = 1_764_226_800.0  # on a window boundary
SETTINGS = Settings()
SIZE = SETTINGS.windows.size_s
LATENESS = SETTINGS.windows.allowed_lateness_s
KEY = "latency_slo:m:v1:p99"


def defaults() -> ManagerSettings:
    """What the worker builds from the default configuration."""
    return ManagerSettings(**SETTINGS.alerts.model_dump())


def window(i: int, bad: bool) -> WindowStats:
    p99 = 900.0 if bad else 200.0  # threshold 500 ms: far on either side of it
    return WindowStats("m", "v1", "stable", T0 + SIZE * i, T0 + SIZE * (i + 1), 5000, 3, 80,
                       90.0, 300.0, p99, 1500.0)


def drive(pattern: Sequence[bool | None], manager: AlertManager | None = None,
          after_s: float = 7200.0) -> list[tuple[float, dict[str, Any]]]:
    """Feed one window per entry of ``pattern`` (True: p99 above the threshold,
    False: below, None: too few requests to say), ticking every second until
    ``after_s`` past the last window; the notifications, with the clock they went
    out at."""
    m = manager or AlertManager(defaults())
    det = LatencyThreshold("m", "v1", threshold_ms=SETTINGS.latency.p99_threshold_ms,
                           min_events=SETTINGS.latency.min_events)
    closes = {int(T0 + SIZE * (i + 1) + LATENESS): i for i in range(len(pattern))}
    out: list[tuple[float, dict[str, Any]]] = []
    end = int(T0 + SIZE * len(pattern) + LATENESS + after_s)
    for now in range(int(T0), end + 1):
        i = closes.get(now)
        bad = pattern[i] if i is not None else None
        if i is not None and bad is not None:
            [signal] = det.update({"windows": [window(i, bad)]})
            out += [(float(now), e) for e in m.process([signal], now)]
        out += [(float(now), e) for e in m.tick(now, event_now=now)]
    return out


def actions(events: list[tuple[float, dict[str, Any]]]) -> list[str]:
    return [e["event_action"] for _, e in events]


def stamped(event: dict[str, Any]) -> str:
    return str(event["payload"]["timestamp"])


def last_bad_end(pattern: Sequence[bool | None]) -> float:
    return T0 + SIZE * (max(i for i, b in enumerate(pattern) if b) + 1)


KEEP = defaults().keep_firing_for_s
ALTERNATING = [i % 2 == 0 for i in range(40)]  # bad, good, bad, ... for 40 minutes


def test_defaults_keep_firing_for_ten_minutes() -> None:
    assert KEEP == 600.0


def test_a_p99_alternating_every_minute_for_40_minutes_pages_once_and_resolves_once() -> None:
    pattern = ALTERNATING + [False] * 30
    events = drive(pattern)
    assert actions(events) == ["trigger", "resolve"]
    (_, trigger), (sent, resolve) = events
    assert stamped(trigger) == rfc3339(T0 + SIZE)  # the first bad window's end
    # Resolved once clear for keep_firing_for_s since the last bad window, in event
    # time, and published no later than the window that shows it closes.
    assert stamped(resolve) == rfc3339(last_bad_end(pattern) + KEEP)
    assert sent <= last_bad_end(pattern) + KEEP + LATENESS
    details = resolve["payload"]["custom_details"]
    assert details["firing_since"] == rfc3339(T0 + SIZE)
    assert details["trigger_summary"] == trigger["payload"]["summary"]
    assert details["flapping"] is True  # it came back while held: say so
    assert resolve["payload"]["severity"] == trigger["payload"]["severity"]


@pytest.mark.parametrize("pattern", [
    [i % 3 == 0 for i in range(40)],   # bad one window in three
    [i % 9 == 0 for i in range(40)],   # one in nine: paged five times with flap control alone
    [i % 10 == 0 for i in range(40)],  # nine clear windows: 540 s, less than the hold
    [i % 8 < 4 for i in range(40)],    # four bad minutes, four good: five pages, too
], ids=["every-3rd", "every-9th", "every-10th", "4-on-4-off"])
def test_a_condition_back_within_keep_firing_for_is_one_incident(pattern: list[bool]) -> None:
    pattern = pattern + [False] * 30
    events = drive(pattern)
    assert actions(events) == ["trigger", "resolve"]
    assert stamped(events[1][1]) == rfc3339(last_bad_end(pattern) + KEEP)


def test_bad_again_after_keep_firing_for_of_clear_windows_is_a_new_incident() -> None:
    gap = int(KEEP // SIZE)  # exactly keep_firing_for of clear windows in between
    pattern = ([True] + [False] * gap) * 3 + [False] * 30
    assert actions(drive(pattern)) == ["trigger", "resolve"] * 3


def test_two_incidents_an_hour_apart_page_twice() -> None:
    pattern = [True] * 5 + [False] * 55 + [True] * 5 + [False] * 30
    events = drive(pattern)
    assert actions(events) == ["trigger", "resolve", "trigger", "resolve"]
    first_resolve, second_trigger = stamped(events[1][1]), stamped(events[2][1])
    assert first_resolve == rfc3339(T0 + 5 * SIZE + KEEP)
    assert second_trigger == rfc3339(T0 + 61 * SIZE)
    assert events[3][1]["payload"]["custom_details"]["firing_since"] == second_trigger
    assert "flapping" not in events[3][1]["payload"]["custom_details"]


def test_a_single_bad_window_pages_once_and_resolves_after_keep_firing_for() -> None:
    events = drive([True] + [False] * 30)
    assert actions(events) == ["trigger", "resolve"]
    assert stamped(events[1][1]) == rfc3339(T0 + SIZE + KEEP)
    assert "flapping" not in events[1][1]["payload"]["custom_details"]


def test_the_event_clock_resolves_when_no_more_windows_say_anything() -> None:
    # One clear window, then too few requests per window for a verdict: the
    # watermark moves on and the tick resolves once keep_firing_for has passed
    # since that last verdict.
    events = drive([True, False] + [None] * 20)
    assert actions(events) == ["trigger", "resolve"]
    sent, resolve = events[1]
    assert stamped(resolve) == rfc3339(T0 + 2 * SIZE + KEEP)
    assert sent == T0 + 2 * SIZE + KEEP
    assert "p99 latency 200 ms" in resolve["payload"]["summary"]  # what the clear window said


def test_no_verdict_after_a_bad_window_is_not_a_resolve() -> None:
    # "No data" is not "healthy": the last word was bad, so it keeps firing.
    m = AlertManager(defaults())
    assert actions(drive([True] + [None] * 30, m)) == ["trigger"]
    assert set(m.firing) == {KEY}


def test_a_tick_without_an_event_clock_does_not_resolve_an_event_time_alert() -> None:
    m = AlertManager(defaults())
    det = LatencyThreshold("m", "v1", threshold_ms=SETTINGS.latency.p99_threshold_ms,
                           min_events=SETTINGS.latency.min_events)
    for i, bad in enumerate([True, False]):
        [signal] = det.update({"windows": [window(i, bad)]})
        m.process([signal], T0 + SIZE * (i + 1))
    assert m.tick(T0 + 10 * KEEP) == []  # the wall clock says nothing about event time
    assert m.tick(T0 + 10 * KEEP, T0 + 2 * SIZE + KEEP - 1) == []
    assert actions([(0.0, e) for e in m.tick(T0 + 10 * KEEP, T0 + 2 * SIZE + KEEP)]) == [
        "resolve"]


@pytest.mark.parametrize("pattern", [ALTERNATING + [False] * 30, [True] * 3 + [False] * 30])
def test_without_keep_firing_for_the_old_flap_control_still_holds(
        pattern: list[bool]) -> None:
    """``keep_firing_for_s: 0`` with the old flap settings gives the old behaviour:
    trigger, resolve, trigger, then one final resolve for the alternating p99."""
    old = AlertManager(ManagerSettings(keep_firing_for_s=0))
    events = actions(drive(pattern, old))
    assert events == (["trigger", "resolve", "trigger", "resolve"] if len(pattern) > 33
                      else ["trigger", "resolve"])


# -- what keep_firing_for does not hold, and how it sits with the rest ----------------------


def sig(t: float, value: float, key: str = KEY, check: str = "latency_slo",
        threshold: float = 500.0, **details: Any) -> Signal:
    return Signal(check, key, value > threshold, "error", f"{key} {value}", t, "m", "v1",
                  {"value": value, "threshold": threshold, **details})


def run(m: AlertManager, signals: list[Signal]) -> list[str]:
    return [e["event_action"] for s in signals for e in m.process([s])]


@pytest.mark.parametrize("signals", [
    [Signal("outage", "outage:m", True, "critical", "m down", 0, "m"),
     Signal("outage", "outage:m", False, "critical", "m back", 90, "m")],
    [sig(0, 20.0, "latency_slo:m:v1:burn:page", threshold=14.4, statistic="burn_rate"),
     sig(60, 3.0, "latency_slo:m:v1:burn:page", threshold=14.4, statistic="burn_rate")],
    [Signal("pipeline_failure", "pipeline_failure:etl", True, "error", "r1 failed", 0, "etl"),
     Signal("pipeline_failure", "pipeline_failure:etl", False, "error", "r2 ok", 60, "etl")],
], ids=["outage", "burn-rate", "pipeline-failure"])
def test_alerts_with_their_own_resolve_rule_are_not_held(signals: list[Signal]) -> None:
    assert run(AlertManager(defaults()), signals) == ["trigger", "resolve"]


def test_a_value_back_inside_the_hysteresis_band_restarts_the_hold() -> None:
    m = AlertManager(defaults())
    # 900 fires; 300 is clear; 490 is under 500 but inside the 5 % band: still bad.
    assert run(m, [sig(0, 900), sig(60, 300), sig(120, 490), sig(600, 300)]) == ["trigger"]
    assert m.alerts[KEY].held
    assert run(m, [sig(720, 300)]) == ["resolve"]  # 600 s after the in-band 490


def test_held_alerts_are_firing_but_not_active() -> None:
    m = AlertManager(defaults())
    run(m, [sig(0, 900), sig(60, 100)])
    assert set(m.firing) == {KEY} and m.active == {}
    run(m, [sig(120, 900)])
    assert set(m.active) == {KEY}


def test_a_held_alert_survives_a_checkpoint_and_resolves_on_time() -> None:
    m = AlertManager(defaults())
    [trigger] = [e for s in (sig(0, 900), sig(60, 100)) for e in m.process([s])]
    other = AlertManager(defaults())
    other.load_dict(orjson.loads(orjson.dumps(m.to_dict())))
    assert other.tick(659, event_now=659) == []  # a hold since the last signal, at 60 s
    [resolve] = other.tick(660, event_now=660)
    assert resolve["event_action"] == "resolve"
    assert resolve["payload"]["timestamp"] == rfc3339(660)
    details = resolve["payload"]["custom_details"]
    assert details["firing_since"] == rfc3339(0)
    assert details["trigger_summary"] == trigger["payload"]["summary"]


def test_a_checkpoint_from_before_keep_firing_for_still_loads() -> None:
    m = AlertManager(ManagerSettings(keep_firing_for_s=0))
    m.process([sig(60, 900)])
    old = m.to_dict()
    for lc in old["alerts"].values():
        del lc["fired_at"], lc["clearing"]
    other = AlertManager(ManagerSettings(keep_firing_for_s=0))
    other.load_dict(orjson.loads(orjson.dumps(old)))
    [resolve] = other.process([sig(120, 100)])
    assert resolve["payload"]["custom_details"]["firing_since"] == rfc3339(60)


def test_a_new_incident_does_not_reuse_the_group_of_the_last_one() -> None:
    m = AlertManager(ManagerSettings(keep_firing_for_s=0, group_wait_s=30))
    first = m.process([sig(0, 900)])
    m.process([sig(60, 100)])
    again = m.process([sig(300, 900)])
    group = [e[0]["payload"]["custom_details"]["group_key"] for e in (first, again)]
    assert group[0] != group[1]


def test_settings_mirror_the_configuration_field_by_field() -> None:
    assert set(AlertSettings.model_fields) == {f.name for f in fields(ManagerSettings)}
    assert ManagerSettings(**AlertSettings().model_dump()) == ManagerSettings()


@pytest.mark.parametrize("bad", [{"keep_firing_for_s": -1}, {"max_alerts": 0},
                                 {"flap_changes": 1}, {"flap_window_s": 0}])
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ManagerSettings(**bad)


# -- bounded state ---------------------------------------------------------------------------


def test_groups_are_forgotten_once_neither_live_nor_within_group_wait() -> None:
    m = AlertManager(ManagerSettings(keep_firing_for_s=0, group_wait_s=30))
    for v in range(50):  # fifty versions, one short incident each
        key = f"latency_slo:m:v{v}:p99"
        m.process([Signal("latency_slo", key, True, "error", "slow", 100 * v, "m", f"v{v}",
                          {"value": 900, "threshold": 500})])
        m.process([Signal("latency_slo", key, False, "error", "ok", 100 * v + 20, "m", f"v{v}",
                          {"value": 100, "threshold": 500})])
        m.tick(100 * v + 30, event_now=100 * v + 30)
        assert len(m.to_dict()["groups"]) == 1  # not live, but within group_wait
        m.tick(100 * v + 31, event_now=100 * v + 31)
        assert m.to_dict()["groups"] == {}
    m.tick(5000 + 700, event_now=5000 + 700)
    assert m.alerts == {}  # and every key, once its flap window passed


def test_a_live_group_is_kept() -> None:
    m = AlertManager(ManagerSettings(group_wait_s=30))
    m.process([sig(0, 900)])
    m.tick(10_000, event_now=10_000)
    assert len(m.to_dict()["groups"]) == 1


def test_keys_beyond_max_alerts_are_refused_counted_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    m = AlertManager(ManagerSettings(keep_firing_for_s=0, max_alerts=3))
    caplog.set_level(logging.WARNING, logger="sentinelle.alerts")
    keys = [f"data_quality:m:v1:f{i}" for i in range(6)]
    fired = [e["dedup_key"] for k in keys for e in m.process([sig(0, 900, k)])]
    assert fired == keys[:3] and len(m.alerts) == 3
    assert m.refused == 3
    assert [r.getMessage() for r in caplog.records if "max_alerts" in r.getMessage()] == [
        "alert manager of m at max_alerts (3 keys): refusing new alert data_quality:m:v1:f3 "
        "(and any other new key until some are forgotten)"]
    # Known keys still go on: a refused one never entered, an admitted one resolves.
    assert [e["event_action"] for e in m.process([sig(60, 100, keys[0])])] == ["resolve"]
    m.tick(60 + 601, event_now=60 + 601)  # the resolved key is forgotten: room again
    assert [e["dedup_key"] for e in m.process([sig(700, 900, keys[5])])] == [keys[5]]
    assert m.refused == 3


def test_state_does_not_grow_with_weeks_of_one_flapping_alert() -> None:
    m = AlertManager(defaults())

    def size() -> int:
        return len(orjson.dumps(m.to_dict()))

    def week(start: int) -> tuple[int, int]:
        """The largest checkpoint and number of notifications in a week."""
        largest = sent = 0
        for i in range(start, start + 7 * 24 * 60):
            t = 60.0 * i
            # 20 minutes flapping minute by minute, then 40 minutes good, every hour
            sent += len(m.process([sig(t, 900 if i % 60 < 20 and i % 2 == 0 else 100)]))
            sent += len(m.tick(t, event_now=t))
            largest = max(largest, size())
            lc = m.alerts.get(KEY)
            if lc is not None:
                assert lc.last is not None and set(lc.last.details) == {"value", "threshold"}
                assert len(lc.changes) <= m.settings.flap_changes
        return largest, sent

    (first, sent_first), (second, sent_second) = week(0), week(7 * 24 * 60)
    assert second < first + 50  # a few more digits in the timestamps, nothing more
    assert sent_first == sent_second == 2 * 7 * 24  # one trigger and one resolve an hour


@pytest.mark.parametrize("bad", [{"per_class": {"latency": {"cooldown_s": 1}}},
                                 {"per_class": {"metric_anomaly": {"cooldown_s": -1}}},
                                 {"per_class": {"metric_anomaly": {"keep_firing_for_s": -1}}}])
def test_bad_class_rules_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ManagerSettings(**bad)
