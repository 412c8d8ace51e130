"""Drift over time: two-sample test against a trailing baseline, plus ADWIN.

(The state's JSON round trip, mid-chunk, is the conformance suite's:
tests/test_detector_contract.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.drift import DriftDetector
from detectors.profile import FeatureBins
from detectors.skew import calibrate


def normal_bins(seed: int = 0, name: str = "x") -> FeatureBins:
    ref = np.random.default_rng(seed).normal(size=100_000)
    edges = np.quantile(ref, np.linspace(0, 1, 21))
    bins = FeatureBins.from_profile(name, {"type": "numeric", "bins": edges.tolist(),
                                          "counts": np.histogram(ref, edges)[0].tolist()})
    assert bins is not None
    return bins


def detector(run_length: float = 6.048e7, feature: str = "x",
             test: str = "sequential") -> DriftDetector:
    bins = normal_bins(name=feature)
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=run_length, baseline=8000)
    return DriftDetector("m", "v1", feature, bins=bins, calibration=cal, baseline_factor=4,
                         test=test)


def feed(det: DriftDetector, x: np.ndarray) -> list[tuple[float, bool, str | None]]:
    sigs = det.update({"ts": np.arange(x.size, dtype=float), "bin": det.bins.bin_numeric(x),
                       "value": x})
    return [(s.timestamp, s.active, s.details["detected_by"]) for s in sigs]


def starts(out: list[tuple[float, bool, str | None]]) -> int:
    """Alerts started (inactive -> active transitions)."""
    count, on = 0, False
    for _, active, _ in out:
        count += active and not on
        on = active
    return count


@pytest.mark.parametrize("test", ["sequential", "window"])
def test_stationary_stream_stays_within_the_false_alarm_budget(test: str) -> None:
    run_length = 200_000.0
    x = np.random.default_rng(1).normal(size=2_000_000)
    out = feed(detector(run_length, test=test), x)
    alarms = starts(out) if test == "sequential" else sum(a for _, a, _ in out)
    assert alarms <= 2 * x.size / run_length  # 10 expected at most (a union bound)


@pytest.mark.parametrize("test, shift, within, by", [
    ("window", 0.5, 1500, "jensen_shannon"), ("window", 1.0, 500, "jensen_shannon"),
    ("sequential", 0.5, 400, "cusum"), ("sequential", 1.0, 120, "cusum")])
def test_abrupt_change_detected(test: str, shift: float, within: int, by: str) -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=20_000), rng.normal(loc=shift, size=20_000)])
    out = feed(detector(test=test), x)
    assert not any(active for t, active, _ in out if t < 20_000)
    first = next((t, by) for t, active, by in out if active)
    assert 20_000 <= first[0] <= 20_000 + within and first[1] == by
    # Once the baseline is all post-change data, the alert clears.
    assert out[-1][1] is False


def test_gradual_drift_is_caught_by_adwin() -> None:
    rng = np.random.default_rng(3)
    n = 300_000
    ramp = np.concatenate([np.zeros(50_000), np.linspace(0, 1, n - 50_000)])
    out = feed(detector(), rng.normal(size=n) + ramp)
    first = next((t, by) for t, active, by in out if active)
    assert first[0] > 50_000 and first[1] == "adwin"


def test_prediction_drift_has_its_own_key() -> None:
    assert detector(feature="prediction").key == "prediction_drift:m:v1"
    assert detector().key == "feature_drift:m:v1:x"


def test_an_alarm_outlives_a_baseline_without_its_alternative() -> None:
    """A category falling from 6 % to nearly nothing: the alarm is "less 'c'". While it
    holds, the baseline is renewed from values with almost no 'c' left, and a bank
    built on it has no "less 'c'" alternative (under 5 %). The alarm in force, its
    statuses and its end still name the alternative that fired, with its threshold."""
    bins = FeatureBins.from_profile("f", {"type": "categorical",
                                          "frequencies": {"a": 0.6, "b": 0.34, "c": 0.06}})
    assert bins is not None
    cal = calibrate(bins.reference, window=400, hop=100, run_length=1e5, baseline=1600)
    det = DriftDetector("m", "v1", "f", bins=bins, calibration=cal)
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.choice(3, 6000, p=[0.6, 0.34, 0.06]),
                        rng.choice(3, 6000, p=[0.64, 0.355, 0.005])])
    signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": x})
    active = [s for s in signals if s.active]
    assert active and active[0].details["alternative"].startswith("less 'c'")
    banks = det._seq.alternatives.names if det._seq else ()
    assert not any(n.startswith("less 'c'") for n in banks)  # the bank lost it meanwhile
    assert {s.details["alternative"] for s in active} == {active[0].details["alternative"]}
    assert {s.details["threshold"] for s in active} == {active[0].details["threshold"]}
    cleared = [s for s in signals if "has absorbed the change" in s.summary]
    assert cleared and cleared[0].details["alternative"] == active[0].details["alternative"]


@pytest.mark.parametrize("test", ["sequential", "window"])
def test_the_checkpoint_holds_the_window_s_chunks_as_they_are(test: str) -> None:
    """The chunks' lists are kept as the chunks are pushed (not rebuilt per checkpoint):
    after the window is full and has moved on, and after a restore, they are the
    chunks' counts, oldest first."""
    rng = np.random.default_rng(4)
    det = detector(test=test)
    for size in (700, 12_000, 333, 5_000):  # past the window's 20 chunks of 500
        feed(det, rng.normal(size=size))
        state = det.to_dict()
        assert state["chunks"] == [c.tolist() for c in det._chunks]
        assert len(state["chunks"]) == min(len(det._chunks), 20)
    back = detector(test=test)
    back.load_dict(det.to_dict())
    feed(back, rng.normal(size=1_500))
    assert back.to_dict()["chunks"] == [c.tolist() for c in back._chunks]
    assert len(back._chunks) == 20
