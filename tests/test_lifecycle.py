"""One trigger and one resolve per incident (the alert manager with its other stages
quiet), and the ml.alerts event shape."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from alerting.events import alert_event
from alerting.manager import AlertManager, ManagerSettings
from detectors.base import Signal
from detectors.contract import GROUP_OF_CLASS as GROUP_OF_CHECK
from detectors.contract import MAX_SUMMARY_CHARS as MAX_SUMMARY
from detectors.contract import SEVERITIES, rfc3339
from detectors.slo import LatencyThreshold
from detectors.windows import WindowStats

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PAYLOAD_KEYS = {"summary", "source", "severity", "timestamp", "component", "group", "class",
                "custom_details"}
T0 = 1_764_226_800.0  # 2025-11-27T07:00:00Z


def sig(active: bool, t: float, key: str = "latency_slo:m:v1:p99", severity: str = "error",
        check: str = "latency_slo", version: str | None = "v1",
        summary: str = "m v1: p99 latency 900 ms > 500 ms",
        details: dict[str, Any] | None = None) -> Signal:
    return Signal(check, key, active, severity, summary, t, "m", version,
                  details if details is not None else {"value": 900.0})


class AlertBook:
    """The manager as a plain lifecycle: no hysteresis, keep_firing_for, flap control or
    grouping."""

    def __init__(self) -> None:
        self.manager = AlertManager(ManagerSettings(hysteresis=0.0, keep_firing_for_s=0,
                                                    flap_changes=10**6))

    def apply(self, signal: Signal) -> dict[str, Any] | None:
        events = self.manager.process([signal])
        assert len(events) <= 1
        return events[0] if events else None

    @property
    def firing(self) -> dict[str, Any]:
        return self.manager.firing

    def resolve_where(self, reason: str, now: float, model: str,
                      version: str | None = None) -> list[dict[str, Any]]:
        return self.manager.resolve_where(reason, now, model, version)

    def to_dict(self) -> dict[str, Any]:
        return self.manager.to_dict()

    def load_dict(self, data: dict[str, Any]) -> None:
        self.manager.load_dict(data)


def parse(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def assert_contract(event: dict[str, Any]) -> None:
    assert set(event) == {"event_action", "dedup_key", "payload"}
    assert event["event_action"] in ("trigger", "resolve")
    p = event["payload"]
    assert set(p) == PAYLOAD_KEYS
    assert 0 < len(p["summary"]) <= MAX_SUMMARY == 1024
    assert p["severity"] in SEVERITIES
    assert RFC3339_MS.match(p["timestamp"]), p["timestamp"]
    assert p["class"] in GROUP_OF_CHECK
    assert p["group"] in ("serving", "data", "training", "validation", "deployment")
    orjson.dumps(event)  # plain JSON all the way down


# -- AlertBook ---------------------------------------------------------------------------


def test_persisting_condition_triggers_once() -> None:
    book = AlertBook()
    events = [book.apply(sig(True, T0 + 60 * i)) for i in range(100)]
    triggers = [e for e in events if e is not None]
    assert len(triggers) == 1
    assert events[0] is triggers[0]
    assert triggers[0]["event_action"] == "trigger"
    assert set(book.firing) == {"latency_slo:m:v1:p99"}
    assert_contract(triggers[0])


def test_resolve_carries_key_severity_and_summary_of_the_trigger() -> None:
    book = AlertBook()
    trigger = book.apply(sig(True, T0, severity="critical"))
    # The clearing signal may carry another severity; the resolve keeps the trigger's.
    resolve = book.apply(sig(False, T0 + 300, severity="warning", summary="m v1: p99 ok"))
    assert trigger is not None and resolve is not None
    assert resolve["event_action"] == "resolve"
    assert resolve["dedup_key"] == trigger["dedup_key"]
    p = resolve["payload"]
    assert p["severity"] == "critical"
    assert p["summary"].startswith("RESOLVED: ") and "p99 ok" in p["summary"]
    assert p["source"] == "m@v1"
    assert p["timestamp"] == rfc3339(T0 + 300)
    assert p["custom_details"]["trigger_summary"] == trigger["payload"]["summary"]
    assert_contract(resolve)
    assert book.firing == {}
    # Staying clear says nothing more.
    assert book.apply(sig(False, T0 + 360)) is None


def test_no_resolve_without_a_trigger() -> None:
    book = AlertBook()
    assert all(book.apply(sig(False, T0 + i)) is None for i in range(10))
    assert book.firing == {}


def test_a_new_incident_after_resolve_triggers_again() -> None:
    book = AlertBook()
    actions = [e and e["event_action"] for e in (
        book.apply(sig(True, T0)), book.apply(sig(False, T0 + 60)),
        book.apply(sig(True, T0 + 120)), book.apply(sig(True, T0 + 180)),
    )]
    assert actions == ["trigger", "resolve", "trigger", None]


def test_keys_fire_independently() -> None:
    book = AlertBook()
    a = "latency_slo:m:v1:p99"
    b = "error_rate:m:v1:spike"
    first = book.apply(sig(True, T0, key=a))
    second = book.apply(sig(True, T0, key=b, check="error_rate"))
    assert first is not None and first["dedup_key"] == a
    assert second is not None and second["dedup_key"] == b
    resolved = book.apply(sig(False, T0 + 60, key=a))
    assert resolved is not None and resolved["dedup_key"] == a
    assert set(book.firing) == {b}


def test_firing_property_is_a_copy() -> None:
    book = AlertBook()
    book.apply(sig(True, T0))
    book.firing.clear()
    assert set(book.firing) == {"latency_slo:m:v1:p99"}


def test_resolve_where_version_resolves_only_that_version() -> None:
    book = AlertBook()
    book.apply(sig(True, T0, key="latency_slo:m:v1:p99", severity="error"))
    book.apply(sig(True, T0, key="error_rate:m:v1@canary:spike", check="error_rate",
                   severity="critical"))
    book.apply(sig(True, T0, key="latency_slo:m:v2:p99", version="v2"))
    book.apply(sig(True, T0, key="outage:m", check="outage", version=None))
    events = book.resolve_where("version went quiet", T0 + 900, "m", "v1")
    assert sorted(e["dedup_key"] for e in events) == [
        "error_rate:m:v1@canary:spike", "latency_slo:m:v1:p99"]
    severities = {e["dedup_key"]: e["payload"]["severity"] for e in events}
    assert severities == {"error_rate:m:v1@canary:spike": "critical",
                          "latency_slo:m:v1:p99": "error"}
    for e in events:
        assert e["event_action"] == "resolve"
        assert "version went quiet" in e["payload"]["summary"]
        assert e["payload"]["source"] == "m@v1"
        assert e["payload"]["timestamp"] == rfc3339(T0 + 900)
        assert_contract(e)
    assert set(book.firing) == {"latency_slo:m:v2:p99", "outage:m"}
    # Nothing left for v1: a second sweep is silent.
    assert book.resolve_where("again", T0 + 901, "m", "v1") == []


def test_resolve_where_without_version_resolves_everything() -> None:
    book = AlertBook()
    book.apply(sig(True, T0, key="latency_slo:m:v1:p99"))
    book.apply(sig(True, T0, key="outage:m", check="outage", version=None, severity="critical"))
    events = book.resolve_where("model expired", T0 + 10, "m")
    by_key = {e["dedup_key"]: e for e in events}
    assert set(by_key) == {"latency_slo:m:v1:p99", "outage:m"}
    assert by_key["outage:m"]["payload"]["source"] == "m"
    assert by_key["outage:m"]["payload"]["class"] == "outage"
    assert by_key["outage:m"]["payload"]["severity"] == "critical"
    assert book.firing == {}


def test_round_trip_keeps_firing_state() -> None:
    book = AlertBook()
    book.apply(sig(True, T0, severity="critical"))
    restored = AlertBook()
    restored.load_dict(orjson.loads(orjson.dumps(book.to_dict())))
    assert restored.firing == book.firing
    assert restored.apply(sig(True, T0 + 60)) is None  # no second trigger after takeover
    resolve = restored.apply(sig(False, T0 + 120, severity="info"))
    assert resolve is not None
    assert resolve["event_action"] == "resolve"
    assert resolve["dedup_key"] == "latency_slo:m:v1:p99"
    assert resolve["payload"]["severity"] == "critical"
    assert restored.firing == {}


def test_resolve_firing_since_is_an_rfc3339_timestamp() -> None:
    """Every timestamp Sentinelle emits is RFC 3339 UTC with milliseconds
    (CONTRACT.md, and the docstring of ``alerting.events.rfc3339``)."""
    book = AlertBook()
    book.apply(sig(True, T0))
    resolve = book.apply(sig(False, T0 + 60))
    assert resolve is not None
    assert resolve["payload"]["custom_details"]["firing_since"] == rfc3339(T0)


# -- alert_event ------------------------------------------------------------------------------


def test_alert_event_shape_for_a_window_signal() -> None:
    w = WindowStats("fraud-scorer", "v7", "stable", T0, T0 + 60, 5000, 3, 80, 90.0, 400.0,
                    912.25, 1500.0)
    [s] = LatencyThreshold("fraud-scorer", "v7", threshold_ms=500,
                           min_events=10).update({"windows": [w]})
    assert s.active
    e = alert_event(s, "trigger")
    assert_contract(e)
    assert e["event_action"] == "trigger"
    assert e["dedup_key"] == "latency_slo:fraud-scorer:v7:p99"
    p = e["payload"]
    assert p["source"] == "fraud-scorer@v7"
    assert p["component"] == "fraud-scorer"
    assert p["group"] == "serving" and p["class"] == "latency_slo"
    assert p["severity"] == "error"
    assert p["timestamp"] == "2025-11-27T07:01:00.000Z"  # the window's end, T0 + 60
    d = p["custom_details"]
    assert d["window"] == {"start": "2025-11-27T07:00:00.000Z",
                           "end": "2025-11-27T07:01:00.000Z", "events": 5000}
    assert d["value"] == 912.25 and d["threshold"] == 500
    assert s.details["window"]["start"] == T0  # the signal itself is left untouched


def test_summary_is_capped_at_1024_characters() -> None:
    long = sig(True, T0, summary="x" * 5000)
    for action in ("trigger", "resolve"):
        summary = alert_event(long, action)["payload"]["summary"]
        assert len(summary) == MAX_SUMMARY
    assert alert_event(long, "resolve")["payload"]["summary"].startswith("RESOLVED: x")


def test_source_without_version_is_the_model() -> None:
    e = alert_event(sig(True, T0, key="outage:m", check="outage", version=None), "trigger")
    assert e["payload"]["source"] == "m"
    assert e["payload"]["component"] == "m"


@pytest.mark.parametrize(("check", "group"), [
    ("latency_slo", "serving"), ("data_quality", "data"), ("pipeline_stalled", "training"),
    ("canary_regression", "deployment"), ("validation_gate", "validation"),
    ("something_new", "serving"),
])
def test_group_follows_the_check(check: str, group: str) -> None:
    e = alert_event(sig(True, T0, check=check), "trigger")
    assert e["payload"]["group"] == group
    assert e["payload"]["class"] == check


def test_severity_override_and_extra_details() -> None:
    e = alert_event(sig(False, T0, severity="info", details={"value": 1.0}), "resolve",
                    extra={"note": "x"}, severity="critical")
    assert e["payload"]["severity"] == "critical"
    assert e["payload"]["custom_details"] == {"value": 1.0, "note": "x"}


def test_details_without_a_window_pass_through() -> None:
    details = {"statistic": "silence_s", "value": 12.5, "window": None}
    e = alert_event(sig(True, T0, details=details), "trigger")
    assert e["payload"]["custom_details"] == details


@pytest.mark.parametrize("epoch", [0.0, 0.5, T0, T0 + 0.123, T0 + 59.9994, 4_102_444_800.25])
def test_rfc3339_is_utc_milliseconds(epoch: float) -> None:
    text = rfc3339(epoch)
    assert RFC3339_MS.match(text), text
    # Milliseconds are truncated, never rounded up past the true instant.
    assert 0 <= epoch - parse(text) < 0.001 + 1e-6


def test_rfc3339_known_values() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(T0 + 0.25) == "2025-11-27T07:00:00.250Z"
