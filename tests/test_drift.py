"""Drift over time: two-sample test against a trailing baseline, plus ADWIN."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from detectors.drift import DriftDetector
from detectors.profile import FeatureBins
from detectors.skew import calibrate


def normal_bins(seed: int = 0) -> FeatureBins:
    ref = np.random.default_rng(seed).normal(size=100_000)
    edges = np.quantile(ref, np.linspace(0, 1, 21))
    bins = FeatureBins.from_profile("x", {"type": "numeric", "bins": edges.tolist(),
                                          "counts": np.histogram(ref, edges)[0].tolist()})
    assert bins is not None
    return bins


def detector(run_length: float = 6.048e7, check: str = "feature_drift") -> DriftDetector:
    bins = normal_bins()
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=run_length, baseline=8000)
    return DriftDetector("m", "v1", bins, cal, baseline_factor=4, check=check)


def feed(det: DriftDetector, x: np.ndarray) -> list[tuple[float, bool, str | None]]:
    sigs = det.update(det.bins.bin_numeric(x), np.arange(x.size, dtype=float), x)
    return [(s.timestamp, s.active, s.details["detected_by"]) for s in sigs]


def test_stationary_stream_stays_within_the_false_alarm_budget() -> None:
    run_length = 200_000.0
    x = np.random.default_rng(1).normal(size=2_000_000)
    alarms = sum(active for _, active, _ in feed(detector(run_length), x))
    assert alarms <= 2 * x.size / run_length  # 10 expected at most (a union bound)


@pytest.mark.parametrize("shift, within", [(0.5, 1500), (1.0, 500)])
def test_abrupt_change_detected_by_the_two_sample_test(shift: float, within: int) -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=20_000), rng.normal(loc=shift, size=20_000)])
    out = feed(detector(), x)
    assert not any(active for t, active, _ in out if t < 20_000)
    first = next((t, by) for t, active, by in out if active)
    assert 20_000 <= first[0] <= 20_000 + within and first[1] == "jensen_shannon"
    # Once the baseline is all post-change data, the alert clears.
    assert out[-1][1] is False


def test_gradual_drift_is_caught_by_adwin() -> None:
    rng = np.random.default_rng(3)
    n = 300_000
    ramp = np.concatenate([np.zeros(50_000), np.linspace(0, 1, n - 50_000)])
    out = feed(detector(), rng.normal(size=n) + ramp)
    first = next((t, by) for t, active, by in out if active)
    assert first[0] > 50_000 and first[1] == "adwin"


def test_restored_state_continues_exactly() -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=30_000), rng.normal(loc=0.7, size=10_000)])
    whole = feed(detector(), x)
    first = detector()
    part = feed(first, x[:25_123])
    second = detector()
    second.load_dict(orjson.loads(orjson.dumps(first.to_dict())))
    rest = second.update(second.bins.bin_numeric(x[25_123:]),
                         np.arange(25_123, x.size, dtype=float), x[25_123:])
    assert part + [(s.timestamp, s.active, s.details["detected_by"]) for s in rest] == whole


def test_prediction_drift_has_its_own_key() -> None:
    assert detector(check="prediction_drift").key == "prediction_drift:m:v1"
    assert detector().key == "feature_drift:m:v1:x"
