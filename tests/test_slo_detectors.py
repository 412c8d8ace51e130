"""Window checks (LatencyThreshold, BurnRate, ErrorRateSpike) and the OutageDetector."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alerting.events import alert_event
from detectors.base import Signal
from detectors.errors import ErrorRateSpike
from detectors.outage import OutageDetector
from detectors.slo import DEFAULT_BURN_RULES, BurnRate, BurnRule, LatencyThreshold
from detectors.windows import WindowStats

SIZE = 60.0
PAGE, TICKET = DEFAULT_BURN_RULES


def win(i: int, count: int = 100, errors: int = 0, slow: int = 0, p99: float = 100.0,
        version: str = "v1", cohort: str = "stable") -> WindowStats:
    """The i-th 60 s window of a series."""
    return WindowStats("m", version, cohort, i * SIZE, (i + 1) * SIZE, count, errors, slow,
                       p99 / 3, p99 / 1.5, p99, p99 * 1.2)


def one(det: LatencyThreshold | ErrorRateSpike, w: WindowStats) -> Signal | None:
    """The signal of one window, if any (a window detector says one thing per window)."""
    out = det.update({"windows": [w]})
    assert len(out) <= 1
    return out[0] if out else None


def burn(det: BurnRate, w: WindowStats) -> list[Signal]:
    return det.update({"windows": [w]})


def arrive(det: OutageDetector, t: float) -> Signal:
    [s] = det.update({"ts": np.array([t])})
    return s


def by_rule(signals: list[Signal]) -> dict[str, Signal]:
    return {s.details["rule"]: s for s in signals}


# -- LatencyThreshold ----------------------------------------------------------------


def test_latency_threshold_active_strictly_above() -> None:
    det = LatencyThreshold("m", "v1", threshold_ms=300, min_events=10)
    above, at, below = (one(det, win(0, p99=p)) for p in (300.5, 300.0, 120.0))
    assert above is not None and above.active
    assert at is not None and not at.active
    assert below is not None and not below.active
    assert above.details["value"] == 300.5 and above.details["threshold"] == 300


def test_latency_threshold_says_nothing_under_min_events() -> None:
    det = LatencyThreshold("m", "v1", threshold_ms=300, min_events=10)
    assert one(det, win(0, count=9, p99=5000.0)) is None
    edge = one(det, win(1, count=10, p99=5000.0))
    assert edge is not None and edge.active


def test_latency_threshold_signal_fields() -> None:
    det = LatencyThreshold("m", "v8", "canary", threshold_ms=300, min_events=10,
                           severity="warning")
    s = one(det, win(4, p99=450.0, version="v8", cohort="canary"))
    assert s is not None
    assert s.check == "latency_slo"
    assert s.key == "latency_slo:m:v8@canary:p99"
    assert s.severity == "warning"
    assert s.timestamp == 5 * SIZE  # the end of the window that decided
    assert (s.model, s.version) == ("m", "v8")
    assert s.details["window"] == {"start": 4 * SIZE, "end": 5 * SIZE, "events": 100}
    assert "450" in s.summary and "300" in s.summary


# -- BurnRate ----------------------------------------------------------------------------


def first_bad_count_that_fires(healthy: int, rule: BurnRule, objective: float) -> int:
    """Bad windows (all requests bad) after ``healthy`` good ones until ``rule`` fires.

    With equal-sized windows the long window's bad share after b bad windows is
    b / (healthy + b) (while it still holds every window); the short window is
    entirely bad much sooner, so the long window decides.
    """
    limit = rule.factor * (1 - objective)
    return next(b for b in itertools.count(1) if b / (healthy + b) > limit)


def test_burn_rate_fires_only_after_the_change_point() -> None:
    det = BurnRate("m", "v1", sli="latency", objective=0.99)
    healthy, bad = 30, 20
    history = [by_rule(burn(det, win(i))) for i in range(healthy)]
    history += [by_rule(burn(det, win(healthy + j, slow=100))) for j in range(bad)]
    page = [h["page"].active for h in history]
    ticket = [h["ticket"].active for h in history]
    assert not any(page[:healthy]) and not any(ticket[:healthy])

    b = first_bad_count_that_fires(healthy, PAGE, 0.99)
    assert 1 < b < bad  # the long window delays the page beyond the first bad window
    first = healthy + b - 1
    assert page[first:] == [True] * (len(page) - first)
    assert not any(page[:first])
    # The ticket rule's factor is lower: it fires no later than the page.
    assert ticket.index(True) <= first
    assert history[first]["page"].severity == "critical"
    assert history[first]["ticket"].severity == "error"


def test_burn_rate_resolves_once_the_short_window_is_healthy() -> None:
    det = BurnRate("m", "v1", sli="latency", objective=0.99)
    i = 0
    for _ in range(30):
        burn(det, win(i))
        i += 1
    for _ in range(20):
        last = by_rule(burn(det, win(i, slow=100)))
        i += 1
    assert last["page"].active
    short_windows = int(PAGE.short_s / SIZE)
    recovered = []
    for _ in range(short_windows + 2):
        recovered.append(by_rule(burn(det, win(i)))["page"].active)
        i += 1
    # While a bad window is still inside the 5 min short window (at least 1 in 5 bad:
    # a 20x burn) the page holds; the first time the short window is all healthy, it
    # resolves, although the 1 h window still shows a high burn.
    assert recovered == [True] * (short_windows - 1) + [False] * 3


def test_burn_rate_min_bad_guard() -> None:
    """One slow request among 30 is a 33x burn at 99.9 %, but not an incident."""
    w = win(0, count=30, slow=1)
    guarded = burn(BurnRate("m", "v1", sli="latency", objective=0.999, min_events=20,
                            min_bad=5), w)
    assert len(guarded) == 2
    assert all(s.details["value"] > PAGE.factor for s in guarded)  # the burn is there...
    assert not any(s.active for s in guarded)  # ...but min_bad holds it back
    unguarded = burn(BurnRate("m", "v1", sli="latency", objective=0.999, min_events=20,
                              min_bad=1), w)
    assert all(s.active for s in unguarded)


def test_burn_rate_says_nothing_under_min_events() -> None:
    det = BurnRate("m", "v1", sli="latency", objective=0.99, min_events=20)
    assert burn(det, win(0, count=19, slow=19)) == []
    # The next window brings the short-window total to 19 + 19 = 38 >= 20.
    assert len(burn(det, win(1, count=19, slow=19))) == 2


def test_burn_rate_history_is_bounded_by_the_longest_rule() -> None:
    det = BurnRate("m", "v1", sli="latency")
    for i in range(1000):
        burn(det, win(i))
    assert len(det.to_dict()["history"]) == int(TICKET.long_s / SIZE)
    short = BurnRate("m", "v1", sli="latency",
                     rules=(BurnRule("fast", 600, 120, 10, "critical"),))
    for i in range(100):
        burn(short, win(i))
    assert len(short.to_dict()["history"]) == 10


def test_availability_counts_errors_and_reports_error_rate() -> None:
    det = BurnRate("m", "v1", sli="availability", objective=0.99)
    assert det.check == "error_rate"
    # All requests slow but none failed: availability is fine.
    for i in range(10):
        assert not any(s.active for s in burn(det, win(i, slow=100)))
    out = []
    for i in range(10, 20):
        out = burn(det, win(i, errors=100))
    page = by_rule(out)["page"]
    assert page.active
    assert page.check == "error_rate"
    assert page.key == "error_rate:m:v1:burn:page"
    assert page.details["sli"] == "availability"
    event = alert_event(page, "trigger")
    assert event["payload"]["class"] == "error_rate"


def test_latency_burn_ignores_errors() -> None:
    det = BurnRate("m", "v1", sli="latency", objective=0.99)
    for i in range(20):
        sigs = burn(det, win(i, errors=100))
        assert not any(s.active for s in sigs)
        assert all(s.check == "latency_slo" for s in sigs)


# -- ErrorRateSpike ------------------------------------------------------------------------


def test_first_healthy_window_sets_the_baseline() -> None:
    det = ErrorRateSpike("m", "v1", threshold=0.05, min_events=20)
    s = one(det, win(0, errors=2))
    assert s is not None and not s.active
    assert s.details["baseline"] == pytest.approx(0.02)
    assert det.to_dict() == {"baseline": pytest.approx(0.02)}


def test_learned_baseline_raises_the_limit() -> None:
    """A series that always fails 10 % is judged against 3 x 10 %, not the 15 % floor."""
    learned = ErrorRateSpike("m", "v1", threshold=0.15, factor=3.0, min_events=20)
    for i in range(20):
        s = one(learned, win(i, errors=10))
        assert s is not None and not s.active
    at_20 = one(learned, win(20, errors=20))
    assert at_20 is not None and not at_20.active
    assert at_20.details["threshold"] == pytest.approx(0.3)
    fresh = ErrorRateSpike("m", "v1", threshold=0.15, factor=3.0, min_events=20)
    cold = one(fresh, win(0, errors=20))
    assert cold is not None and cold.active  # no baseline yet: the floor applies


def test_rate_above_threshold_from_the_start_never_becomes_baseline() -> None:
    """Baselines learn only from non-spiking windows (documented): a series that
    fails 10 % from its first window, with a 5 % floor, stays active."""
    det = ErrorRateSpike("m", "v1", threshold=0.05, factor=3.0, min_events=20)
    for i in range(30):
        s = one(det, win(i, errors=10))
        assert s is not None and s.active
        assert s.details["baseline"] is None


def test_spike_fires_and_resolves_without_moving_the_baseline() -> None:
    det = ErrorRateSpike("m", "v1", threshold=0.05, factor=3.0, min_events=20)
    for i in range(10):
        one(det, win(i, errors=1))
    baseline = det.to_dict()["baseline"]
    assert baseline == pytest.approx(0.01)
    for i in range(10, 15):
        s = one(det, win(i, errors=30))
        assert s is not None and s.active
        assert s.details["baseline"] == baseline  # spikes are not learned
        assert s.key == "error_rate:m:v1:spike"
        assert s.timestamp == (i + 1) * SIZE
    back = one(det, win(15, errors=1))
    assert back is not None and not back.active


def test_error_spike_min_events() -> None:
    det = ErrorRateSpike("m", "v1", threshold=0.05, min_events=20)
    assert one(det, win(0, count=19, errors=19)) is None
    assert det.to_dict() == {"baseline": None}  # small windows teach nothing either
    s = one(det, win(1, count=20, errors=19))
    assert s is not None and s.active


# -- OutageDetector -------------------------------------------------------------------------


def feed(det: OutageDetector, gap: float, n: int, start: float = 0.0) -> float:
    """n arrivals every ``gap`` seconds from ``start``; return the last one."""
    t = start
    for i in range(n):
        t = start + i * gap
        s = arrive(det, t)
        assert not s.active
    return t


def test_outage_does_not_arm_before_min_arrivals() -> None:
    det = OutageDetector("m", k=5, floor_s=10, min_arrivals=5)
    last = feed(det, 1.0, 4)
    assert not det.armed
    assert det.check(last + 10_000) == []
    arrive(det, last + 1)
    assert det.armed
    [s] = det.check(last + 1 + det.limit_s + 1)
    assert s.active


def test_outage_check_before_any_arrival_is_none() -> None:
    det = OutageDetector("m", min_arrivals=0)
    assert det.check(1e9) == []


@pytest.mark.parametrize(("k", "floor_s", "gap"), [
    (5.0, 10.0, 1.0),    # the floor decides: 5 x 1 s < 10 s
    (10.0, 60.0, 10.0),  # the learned gap decides: 10 x 10 s > 60 s
])
def test_outage_fires_after_limit_not_before(k: float, floor_s: float, gap: float) -> None:
    det = OutageDetector("m", k=k, floor_s=floor_s, min_arrivals=3)
    last = feed(det, gap, 30)
    assert det.limit_s == pytest.approx(max(k * gap, floor_s))
    assert det.check(last + det.limit_s) == []
    assert det.check(last + det.limit_s - 0.5) == []
    now = last + det.limit_s + 0.5
    [s] = det.check(now)
    assert s.active
    assert s.check == "outage" and s.key == "outage:m"
    assert s.version is None and s.severity == "critical"
    assert s.timestamp == now  # wall clock
    assert s.details["value"] == pytest.approx(det.limit_s + 0.5)
    assert s.details["threshold"] == pytest.approx(max(k * gap, floor_s))


def test_arrival_after_silence_is_an_inactive_signal() -> None:
    det = OutageDetector("m", k=5, floor_s=10, min_arrivals=3)
    last = feed(det, 1.0, 10)
    s = arrive(det, last + 100)
    assert not s.active
    assert s.key == "outage:m"
    assert s.details["value"] == pytest.approx(100.0)
    assert det.check(last + 101) == []


def test_outage_gaps_do_not_inflate_the_typical_gap() -> None:
    det = OutageDetector("m", k=10, floor_s=5, min_arrivals=3)
    last = feed(det, 2.0, 20)
    limit = det.limit_s
    assert limit == pytest.approx(20.0)
    arrive(det, last + 500)  # the end of an outage: not a typical gap
    assert det.limit_s == pytest.approx(limit)
    assert det.to_dict()["gap"] == pytest.approx(2.0)


def test_ordinary_longer_gaps_are_learned() -> None:
    """Contrast with the outage case: a gap under the limit moves the mean."""
    det = OutageDetector("m", k=10, floor_s=5, min_arrivals=3, alpha=0.1)
    last = feed(det, 2.0, 20)
    arrive(det, last + 4.0)
    assert det.to_dict()["gap"] == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def test_grace_restarts_the_silence_clock() -> None:
    det = OutageDetector("m", k=5, floor_s=10, min_arrivals=3)
    last = feed(det, 1.0, 10)
    resumed = last + 50  # we were away for 50 s: longer than the 10 s limit
    det.grace(resumed)
    assert det.check(resumed + 9) == []
    [s] = det.check(resumed + 11)
    assert s.active
    det.grace(last)  # an earlier time does not move the clock back
    assert det.check(resumed + 9) == []


def test_grace_before_any_arrival_does_not_arm() -> None:
    det = OutageDetector("m", min_arrivals=0)
    det.grace(100.0)
    assert det.check(1e6) == []


def test_outage_limit_is_the_floor_before_any_gap_is_learned() -> None:
    det = OutageDetector("m", k=5, floor_s=30)
    assert det.limit_s == 30
    arrive(det, 0.0)  # one arrival: still no gap to learn from
    assert det.limit_s == 30
    assert det.to_dict()["gap"] is None
