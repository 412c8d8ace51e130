"""Checks every detector must pass, whatever it detects.

Each case says how to build the detector, how to feed it one stream, and one bad
constructor argument. Window detectors eat closed :class:`WindowStats`; the
outage detector eats arrivals and wall-clock checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from detectors.base import Signal
from detectors.contract import GROUP_OF_CLASS as GROUP_OF_CHECK
from detectors.contract import SEVERITIES
from detectors.errors import ErrorRateSpike
from detectors.outage import OutageDetector
from detectors.slo import BurnRate, LatencyThreshold
from detectors.windows import WindowStats

SEED = 42
SIZE = 60.0

Step = Any  # a WindowStats, or ("observe" | "check", now) for the outage detector


def window(i: int, count: int, errors: int, slow: int, p99: float) -> WindowStats:
    return WindowStats("m", "v1", "stable", i * SIZE, (i + 1) * SIZE, count, errors, slow,
                       p99 / 3, p99 / 1.5, p99, p99 * 1.1)


def noisy_windows(seed: int) -> list[WindowStats]:
    """120 windows: healthy with noise, then a sustained incident (slow and failing)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(120):
        count = int(rng.integers(5, 400))  # some windows under every min_events
        bad = i >= 70
        err_p, slow_p = (0.4, 0.5) if bad else (0.01, 0.002)
        p99 = float(rng.lognormal(7.0 if bad else 4.5, 0.2))
        out.append(window(i, count, int(rng.binomial(count, err_p)),
                          int(rng.binomial(count, slow_p)), p99))
    return out


def healthy_windows() -> list[WindowStats]:
    return [window(i, 200, 0, 0, 80.0) for i in range(400)]


def noisy_arrivals(seed: int) -> list[Step]:
    """Poisson-ish arrivals, an hour of silence, then traffic again; checks every 7 s."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(2.0, size=300))
    times[200:] += 3600.0
    steps: list[Step] = []
    next_check = 0.0
    for t in times:
        while next_check < t:
            steps.append(("check", next_check))
            next_check += 7.0
        steps.append(("observe", float(t)))
    return steps


def steady_arrivals() -> list[Step]:
    steps: list[Step] = []
    for i in range(500):
        steps += [("observe", float(i)), ("check", i + 0.5), ("check", i + 0.99)]
    return steps


def feed_windows(det: Any, steps: Iterable[Step]) -> list[Signal | None]:
    out: list[Signal | None] = []
    for w in steps:
        res = det.update(w)
        out.extend(res if isinstance(res, list) else [res])
    return out


def feed_clock(det: OutageDetector, steps: Iterable[Step]) -> list[Signal | None]:
    return [det.observe(now) if kind == "observe" else det.check(now) for kind, now in steps]


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[..., Any]
    bad: dict[str, Any]
    feed: Callable[[Any, Iterable[Step]], list[Signal | None]]
    noisy: Callable[[int], list[Step]]
    healthy: Callable[[], list[Step]]

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("LatencyThreshold", lambda **kw: LatencyThreshold(**{"threshold_ms": 500.0, **kw}),
         {"threshold_ms": 0.0}, feed_windows, noisy_windows, healthy_windows),
    Case("BurnRate-latency", lambda **kw: BurnRate(**{"sli": "latency", **kw}),
         {"objective": 1.5}, feed_windows, noisy_windows, healthy_windows),
    Case("BurnRate-availability", lambda **kw: BurnRate(**{"sli": "availability", **kw}),
         {"objective": 0.0}, feed_windows, noisy_windows, healthy_windows),
    Case("ErrorRateSpike", lambda **kw: ErrorRateSpike(**kw),
         {"threshold": 1.5}, feed_windows, noisy_windows, healthy_windows),
    Case("OutageDetector", lambda **kw: OutageDetector(**{"model": "m", **kw}),
         {"floor_s": -1.0}, feed_clock, noisy_arrivals, steady_arrivals),
]

cases = pytest.mark.parametrize("case", CASES, ids=str)


@cases
def test_deterministic(case: Case) -> None:
    stream = case.noisy(SEED)
    first = case.feed(case.make(), stream)
    second = case.feed(case.make(), stream)
    assert first == second
    # The stream exercises both states, so equality is about something.
    signals = [s for s in first if s is not None]
    assert any(s.active for s in signals)
    assert any(not s.active for s in signals)


@cases
def test_bad_parameter_raises(case: Case) -> None:
    case.make()  # the defaults are valid
    with pytest.raises(ValueError):
        case.make(**case.bad)


@cases
def test_healthy_stream_raises_nothing(case: Case) -> None:
    out = case.feed(case.make(), case.healthy())
    signals = [s for s in out if s is not None]
    assert signals  # it did speak...
    assert not any(s.active for s in signals)  # ...and said "fine" every time


@cases
def test_signals_are_well_formed(case: Case) -> None:
    for s in case.feed(case.make(), case.noisy(SEED)):
        if s is None:
            continue
        assert isinstance(s, Signal)
        assert s.check in GROUP_OF_CHECK
        assert s.severity in SEVERITIES
        assert s.key.startswith(f"{s.check}:{s.model}")
        assert isinstance(s.timestamp, float)
        orjson.dumps(s.details)


@cases
def test_checkpoint_mid_stream_changes_nothing(case: Case) -> None:
    stream = case.noisy(SEED + 1)
    reference = case.feed(case.make(), stream)
    cut = len(stream) // 2
    det = case.make()
    out = case.feed(det, stream[:cut])
    if hasattr(det, "to_dict"):  # LatencyThreshold is stateless
        restored = case.make()
        restored.load_dict(orjson.loads(orjson.dumps(det.to_dict())))
        det = restored
    out += case.feed(det, stream[cut:])
    assert out == reference
