"""LatencySketch: relative accuracy, merge, serialization, edge cases."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from detectors.sketch import LatencySketch

QS = (0.5, 0.9, 0.95, 0.99)
# 1237 makes q * n non-integer for every q in QS, so the nearest rank ceil(q * n)
# is not sensitive to how q * n rounds in floating point.
N = 1237
SEED = 20241127


def lognormal(n: int = N, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=4.0, sigma=0.9, size=n)


def exact(data: np.ndarray, q: float) -> float:
    return float(np.quantile(data, q, method="inverted_cdf"))


def sketch_of(data: np.ndarray, alpha: float = 0.01) -> LatencySketch:
    sk = LatencySketch(alpha=alpha)
    sk.add_many(data)
    return sk


def within(estimate: float, truth: float, alpha: float) -> bool:
    # A hair of slack for the floating-point log at bucket boundaries.
    return abs(estimate - truth) <= alpha * truth * (1 + 1e-9)


def test_reference_is_nearest_rank() -> None:
    """numpy's inverted_cdf is the nearest-rank definition the sketch implements."""
    data = lognormal()
    ordered = np.sort(data)
    for q in QS:
        assert exact(data, q) == ordered[math.ceil(q * N) - 1]


@pytest.mark.parametrize("alpha", [0.005, 0.01, 0.05])
@pytest.mark.parametrize("q", QS)
def test_quantile_within_relative_error(alpha: float, q: float) -> None:
    data = lognormal()
    assert data.min() > 1e-3  # every value is above min_value: the guarantee applies
    sk = sketch_of(data, alpha)
    assert within(sk.quantile(q), exact(data, q), alpha)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_over_wide_dynamic_range(seed: int) -> None:
    """Values spread over seven decades still come back within alpha at every q."""
    rng = np.random.default_rng(seed)
    data = 10 ** rng.uniform(-2, 5, size=2001)
    sk = sketch_of(data, 0.01)
    for q in np.linspace(0.0, 1.0, 41):
        assert within(sk.quantile(float(q)), exact(data, float(q)), 0.01), q


def test_extremes_count_and_max() -> None:
    data = lognormal()
    sk = sketch_of(data, 0.01)
    assert sk.count == N
    assert sk.max == data.max()
    assert within(sk.quantile(0.0), data.min(), 0.01)
    top = sk.quantile(1.0)
    assert within(top, data.max(), 0.01)
    assert top <= data.max()  # never reports above the true maximum


def test_size_bounded_by_dynamic_range() -> None:
    data = np.random.default_rng(SEED).lognormal(4.0, 1.5, size=100_000)
    sk = sketch_of(data, 0.01)
    log_gamma = math.log(1.01 / 0.99)
    # Buckets are ceil(log_gamma(v)): at most one per index between min and max.
    bound = math.ceil(math.log(data.max()) / log_gamma) - math.ceil(
        math.log(data.min()) / log_gamma) + 1
    assert len(sk.to_dict()["buckets"]) <= bound
    assert bound < data.size / 50  # and that bound is far smaller than the data


def test_merge_equals_sketch_of_concatenation() -> None:
    data = lognormal()
    a, b = data[:400], data[400:]
    merged = sketch_of(a)
    merged.merge(sketch_of(b))
    whole = sketch_of(data)
    assert merged.to_dict() == whole.to_dict()
    assert merged.count == whole.count == N
    for q in np.linspace(0, 1, 21):
        assert merged.quantile(float(q)) == whole.quantile(float(q))


def test_merge_is_order_independent() -> None:
    data = lognormal()
    chunks = np.array_split(data, 9)
    forward = LatencySketch()
    for c in chunks:
        forward.merge(sketch_of(c))
    backward = LatencySketch()
    for c in reversed(chunks):
        backward.merge(sketch_of(c))
    added = LatencySketch()
    for c in chunks[::2] + chunks[1::2]:
        added.add_many(c)
    assert forward.to_dict() == backward.to_dict() == added.to_dict() == sketch_of(data).to_dict()


def test_merge_with_empty_is_identity() -> None:
    data = lognormal()
    sk = sketch_of(data)
    before = sk.to_dict()
    sk.merge(LatencySketch())
    assert sk.to_dict() == before
    empty = LatencySketch()
    empty.merge(sketch_of(data))
    assert empty.to_dict() == before


def test_merge_different_accuracy_raises() -> None:
    with pytest.raises(ValueError):
        LatencySketch(alpha=0.01).merge(LatencySketch(alpha=0.02))


def test_round_trip_through_json_gives_identical_quantiles() -> None:
    data = np.concatenate([lognormal(), np.zeros(17)])  # zero bucket included
    sk = sketch_of(data)
    back = LatencySketch.from_dict(orjson.loads(orjson.dumps(sk.to_dict())))
    assert back.count == sk.count == data.size
    assert back.max == sk.max
    assert back.alpha == sk.alpha and back.min_value == sk.min_value
    for q in np.linspace(0, 1, 101):
        assert back.quantile(float(q)) == sk.quantile(float(q))
    assert back.to_dict() == sk.to_dict()
    # The restored sketch keeps merging like the original.
    more = lognormal(300, seed=7)
    sk.add_many(more)
    back.add_many(more)
    assert back.to_dict() == sk.to_dict()


def test_empty_sketch_round_trip_and_nan() -> None:
    sk = LatencySketch()
    back = LatencySketch.from_dict(orjson.loads(orjson.dumps(sk.to_dict())))
    for s in (sk, back):
        assert s.count == 0
        assert math.isnan(s.max)
        for q in (0.0, 0.5, 0.99, 1.0):
            assert math.isnan(s.quantile(q))


def test_add_many_of_empty_array_is_noop() -> None:
    sk = LatencySketch()
    sk.add_many(np.array([], dtype=float))
    assert sk.count == 0
    assert math.isnan(sk.quantile(0.5))


def test_values_at_or_below_min_value_report_zero() -> None:
    data = np.array([0.0] * 10 + [1e-3] * 5 + [100.0] * 5)  # 15 at/below min_value
    sk = sketch_of(data)
    assert sk.count == 20
    assert sk.quantile(0.75) == 0.0  # rank 15: still in the zero bucket
    assert within(sk.quantile(0.76), 100.0, 0.01)  # rank 16: first of the 100s
    assert sk.max == 100.0


@pytest.mark.parametrize("kwargs", [
    {"alpha": 0.0}, {"alpha": 1.0}, {"alpha": -0.1}, {"alpha": 1.5},
    {"min_value": 0.0}, {"min_value": -1.0},
])
def test_invalid_constructor_args(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LatencySketch(**kwargs)


@pytest.mark.parametrize("q", [-0.01, 1.01, 2.0])
def test_invalid_quantile(q: float) -> None:
    sk = sketch_of(lognormal())
    with pytest.raises(ValueError):
        sk.quantile(q)
