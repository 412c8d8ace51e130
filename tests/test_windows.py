"""TumblingWindows: exact counts, percentile accuracy, lateness, batch invariance, checkpoints."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import orjson
import polars as pl
import pytest

from detectors.windows import BATCH_SCHEMA, TumblingWindows, WindowStats

ALPHA = 0.01


def frame(ts: Sequence[float], latency: Sequence[float] | None = None,
          error: Sequence[bool] | None = None, version: Sequence[str] | str = "v1",
          cohort: Sequence[str] | str = "stable") -> pl.DataFrame:
    n = len(ts)
    return pl.DataFrame({
        "ts": list(ts),
        "version": [version] * n if isinstance(version, str) else list(version),
        "cohort": [cohort] * n if isinstance(cohort, str) else list(cohort),
        "latency_ms": list(latency) if latency is not None else [10.0] * n,
        "error": list(error) if error is not None else [False] * n,
    }, schema=BATCH_SCHEMA)


def exact_q(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="inverted_cdf"))


def within(estimate: float, truth: float, alpha: float = ALPHA) -> bool:
    return abs(estimate - truth) <= alpha * truth * (1 + 1e-9)


def random_stream(seed: int, n: int = 300, span_s: float = 60.0, jitter_s: float = 4.0,
                  series: Sequence[tuple[str, str]] = (("v1", "stable"),)) -> pl.DataFrame:
    """Events in roughly increasing time with out-of-order noise (some of it late)."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.uniform(0, span_s, size=n))
    ts = base + rng.normal(0, jitter_s, size=n)
    # A handful of stragglers far behind the others: certainly late.
    stragglers = rng.choice(n, size=n // 40, replace=False)
    ts[stragglers] -= rng.uniform(20, 40, size=stragglers.size)
    ts = np.maximum(ts, 0.0)
    pick = rng.integers(0, len(series), size=n)
    return pl.DataFrame({
        "ts": ts,
        "version": [series[i][0] for i in pick],
        "cohort": [series[i][1] for i in pick],
        "latency_ms": rng.lognormal(4.5, 0.8, size=n),
        "error": rng.random(n) < 0.08,
    }, schema=BATCH_SCHEMA)


def run(stream: pl.DataFrame, batch: int, close_each: bool = True,
        **kwargs: float) -> tuple[list[WindowStats], np.ndarray]:
    """Feed ``stream`` in micro-batches of ``batch`` rows; flush at the end."""
    w = TumblingWindows("m", **kwargs)
    stats: list[WindowStats] = []
    masks = []
    for off in range(0, stream.height, batch):
        masks.append(w.add(stream.slice(off, batch)))
        if close_each:
            stats.extend(w.close_ready())
    stats.extend(w.close_ready())
    stats.extend(w.flush())
    return stats, np.concatenate(masks)


def late_by_spec(ts: np.ndarray, size: float, lateness: float) -> np.ndarray:
    """The docstring's rule, event by event: late iff its window had closed on arrival."""
    late = np.zeros(ts.size, dtype=bool)
    watermark = -math.inf
    for i, t in enumerate(ts):
        end = math.floor(t / size) * size + size
        late[i] = end + lateness <= watermark
        watermark = max(watermark, t)
    return late


# -- exact statistics ----------------------------------------------------------


def test_counts_exact_and_percentiles_within_alpha() -> None:
    rng = np.random.default_rng(11)
    n = 3000
    ts = np.sort(rng.uniform(0, 180, size=n))  # three 60 s windows, in order: none late
    lat = rng.lognormal(4.5, 0.9, size=n)
    lat[::97] = 200.0  # exactly at the slow bound: not slow (strictly above counts)
    err = rng.random(n) < 0.07
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=5, slow_ms=200.0)
    late = w.add(frame(ts, lat, err))
    assert not late.any()
    stats = w.flush()
    assert [(s.start, s.end) for s in stats] == [(0.0, 60.0), (60.0, 120.0), (120.0, 180.0)]
    for s in stats:
        sel = (ts >= s.start) & (ts < s.end)
        window_lat = lat[sel]
        assert (s.model, s.version, s.cohort) == ("m", "v1", "stable")
        assert s.count == int(sel.sum())
        assert s.errors == int(err[sel].sum())
        assert s.slow == int((window_lat > 200.0).sum())
        assert s.max_latency == window_lat.max()
        assert s.error_rate == s.errors / s.count
        for q, got in ((0.5, s.p50), (0.95, s.p95), (0.99, s.p99)):
            assert within(got, exact_q(window_lat, q)), (s.start, q)
    assert sum(s.count for s in stats) == n


def test_window_boundaries_are_half_open() -> None:
    w = TumblingWindows("m", size_s=10, allowed_lateness_s=0)
    w.add(frame([0.0, 9.999, 10.0, 19.999, 20.0]))
    assert [(s.start, s.count) for s in w.flush()] == [(0.0, 2), (10.0, 2), (20.0, 1)]


def test_error_rate_of_empty_window_is_zero() -> None:
    s = WindowStats("m", "v1", "stable", 0, 60, 0, 0, 0, math.nan, math.nan, math.nan, math.nan)
    assert s.error_rate == 0.0


# -- watermark and lateness ------------------------------------------------------


def test_window_closes_once_watermark_reaches_end_plus_lateness() -> None:
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=10)
    w.add(frame([1.0, 61.0, 69.9]))
    assert w.close_ready() == []  # watermark 69.9 < 60 + 10
    assert w.watermark == 69.9
    w.add(frame([70.0]))
    closed = w.close_ready()
    assert [(s.start, s.count) for s in closed] == [(0.0, 1)]
    assert w.open_windows == 1  # [60, 120) is still open


def test_out_of_order_within_lateness_is_folded_in() -> None:
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=10)
    ts = [5.0, 65.0, 50.0, 69.9, 2.0, 70.0, 3.0]
    lat = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 9999.0]
    err = [False, False, True, False, True, False, True]
    late = w.add(frame(ts, lat, err))
    # 50 and 2 arrive after 65 / 69.9 but before the watermark reaches 70: on time.
    # 3 arrives after 70 = end (60) + lateness (10): late.
    assert late.tolist() == [False, False, False, False, False, False, True]
    first = w.close_ready()
    assert len(first) == 1
    s = first[0]
    assert (s.start, s.count, s.errors) == (0.0, 3, 2)
    assert s.max_latency == 50.0  # the late 9999 ms event was not folded in


def test_events_of_a_closed_window_are_late_and_not_counted() -> None:
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=5)
    w.add(frame([10.0, 70.0]))
    assert [s.start for s in w.close_ready()] == [0.0]
    open_before = w.open_windows
    late = w.add(frame([30.0, 75.0, 59.9], error=[True, False, True]))
    assert late.tolist() == [True, False, True]
    assert w.open_windows == open_before  # no window reopened for [0, 60)
    rest = w.flush()
    assert [(s.start, s.count, s.errors) for s in rest] == [(60.0, 2, 0)]


def test_lateness_is_judged_against_the_watermark_before_each_event() -> None:
    """Within one batch, an event is late only relative to the events before it."""
    w = TumblingWindows("m", size_s=10, allowed_lateness_s=2)
    late = w.add(frame([1.0, 5.0, 13.0, 2.0, 11.9, 3.0]))
    # 13 moves the watermark to 13 >= 10 + 2: [0, 10) is closed for 2.0 and 3.0.
    assert late.tolist() == [False, False, False, True, False, True]


def test_random_stream_late_mask_matches_the_documented_rule() -> None:
    stream = random_stream(seed=3)
    stats, late = run(stream, batch=stream.height, size_s=10.0, allowed_lateness_s=3.0)
    ts = stream["ts"].to_numpy()
    expected = late_by_spec(ts, 10.0, 3.0)
    assert 0 < expected.sum() < ts.size  # some events are late, most are not
    assert late.tolist() == expected.tolist()
    # Every on-time event is in exactly one window, and only on-time events are.
    counts: dict[float, int] = defaultdict(int)
    for t in ts[~expected]:
        counts[math.floor(t / 10.0) * 10.0] += 1
    assert {s.start: s.count for s in stats} == dict(counts)


# -- batch invariance ------------------------------------------------------------


SERIES = (("v1", "stable"), ("v1", "canary"), ("v2", "stable"))


@pytest.mark.parametrize("seed", [5, 6])
def test_same_stream_in_any_batch_size_gives_same_windows(seed: int) -> None:
    stream = random_stream(seed=seed, series=SERIES)
    params = {"size_s": 10.0, "allowed_lateness_s": 3.0, "slow_ms": 120.0}
    ref_stats, ref_late = run(stream, batch=stream.height, **params)
    assert ref_late.any() and not ref_late.all()
    assert len(ref_stats) > 10
    for batch in (1, 7, 50):
        stats, late = run(stream, batch=batch, **params)
        assert late.tolist() == ref_late.tolist(), batch
        assert stats == ref_stats, batch


def test_closing_between_batches_or_only_at_the_end_gives_same_windows() -> None:
    stream = random_stream(seed=8, series=SERIES)
    params = {"size_s": 10.0, "allowed_lateness_s": 3.0}
    eager_stats, eager_late = run(stream, batch=7, close_each=True, **params)
    lazy_stats, lazy_late = run(stream, batch=7, close_each=False, **params)
    assert eager_late.tolist() == lazy_late.tolist()
    assert eager_stats == lazy_stats


def test_closed_windows_come_oldest_first() -> None:
    stream = random_stream(seed=9, series=SERIES)
    stats, _ = run(stream, batch=13, size_s=10.0, allowed_lateness_s=3.0)
    starts = [s.start for s in stats]
    assert starts == sorted(starts)


# -- several series ----------------------------------------------------------------


def test_series_are_kept_apart() -> None:
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=0, slow_ms=100.0)
    late = w.add(frame(
        ts=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        latency=[10.0, 500.0, 20.0, 30.0, 40.0, 800.0],
        error=[False, True, True, False, False, False],
        version=["v1", "v1", "v1", "v2", "v2", "v1"],
        cohort=["stable", "stable", "canary", "stable", "stable", "canary"],
    ))
    assert not late.any()
    got = {(s.version, s.cohort): (s.count, s.errors, s.slow, s.max_latency) for s in w.flush()}
    assert got == {
        ("v1", "stable"): (2, 1, 1, 500.0),
        ("v1", "canary"): (2, 1, 1, 800.0),
        ("v2", "stable"): (2, 0, 0, 40.0),
    }


def test_series_percentiles_use_only_their_own_latencies() -> None:
    rng = np.random.default_rng(12)
    fast = rng.lognormal(3.0, 0.3, size=500)   # ~20 ms
    slow = rng.lognormal(6.0, 0.3, size=500)   # ~400 ms
    ts = rng.uniform(0, 60, size=1000)
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=0)
    w.add(frame(ts, np.concatenate([fast, slow]), version=["v1"] * 500 + ["v2"] * 500))
    by_version = {s.version: s for s in w.flush()}
    for v, values in (("v1", fast), ("v2", slow)):
        s = by_version[v]
        assert s.count == 500
        assert within(s.p50, exact_q(values, 0.5))
        assert within(s.p99, exact_q(values, 0.99))


# -- flush ------------------------------------------------------------------------


def test_flush_closes_everything_and_later_events_of_flushed_windows_are_late() -> None:
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=10)
    w.add(frame([1.0, 30.0, 31.0], version=["v1", "v1", "v2"]))
    assert w.close_ready() == []  # watermark 31: nothing is ready yet
    flushed = w.flush()
    assert [(s.version, s.count) for s in flushed] == [("v1", 2), ("v2", 1)]
    assert w.open_windows == 0
    assert w.flush() == []
    # [0, 60) was flushed: its events are late, even though the watermark is only 31.
    late = w.add(frame([40.0, 59.0, 61.0], version=["v1", "v3", "v1"]))
    assert late.tolist() == [True, True, False]
    assert [(s.start, s.version, s.count) for s in w.flush()] == [(60.0, "v1", 1)]


# -- checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 10, 25, 40])
def test_checkpoint_mid_stream_gives_same_result(cut: int) -> None:
    stream = random_stream(seed=21, series=SERIES)
    params = {"size_s": 10.0, "allowed_lateness_s": 3.0, "slow_ms": 120.0}
    ref_stats, ref_late = run(stream, batch=7, **params)

    w = TumblingWindows("m", **params)
    stats: list[WindowStats] = []
    masks = []
    batches = [stream.slice(off, 7) for off in range(0, stream.height, 7)]
    for i, b in enumerate(batches):
        if i == cut:
            saved = orjson.loads(orjson.dumps(w.to_dict()))
            w = TumblingWindows("m", **params)
            w.load_dict(saved)
            assert w.to_dict() == saved
        masks.append(w.add(b))
        stats.extend(w.close_ready())
    stats.extend(w.close_ready())
    stats.extend(w.flush())
    assert np.concatenate(masks).tolist() == ref_late.tolist()
    assert stats == ref_stats


def test_checkpoint_after_flush_keeps_flushed_windows_closed() -> None:
    w = TumblingWindows("m", size_s=60, allowed_lateness_s=10)
    w.add(frame([5.0]))
    w.flush()
    restored = TumblingWindows("m", size_s=60, allowed_lateness_s=10)
    restored.load_dict(orjson.loads(orjson.dumps(w.to_dict())))
    assert restored.add(frame([6.0])).tolist() == [True]


def test_fresh_state_round_trips() -> None:
    w = TumblingWindows("m")
    data = orjson.loads(orjson.dumps(w.to_dict()))
    restored = TumblingWindows("m")
    restored.load_dict(data)
    assert restored.watermark == -math.inf
    assert restored.open_windows == 0
    assert restored.add(frame([0.0])).tolist() == [False]


def test_empty_batch_changes_nothing() -> None:
    w = TumblingWindows("m")
    w.add(frame([5.0]))
    before = w.to_dict()
    assert w.add(frame([])).tolist() == []
    assert w.to_dict() == before


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"size_s": 0.0}, {"size_s": -60.0}, {"allowed_lateness_s": -1.0},
])
def test_bad_parameters_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TumblingWindows("m", **kwargs)


def test_zero_lateness_is_allowed() -> None:
    w = TumblingWindows("m", size_s=10, allowed_lateness_s=0)
    assert w.add(frame([1.0, 10.0, 9.0])).tolist() == [False, False, True]


@pytest.mark.parametrize("seed", range(40))
def test_a_few_rows_fold_as_the_polars_query_folds_them(seed: int) -> None:
    """Micro-batches up to ``SMALL_FRAME`` rows are folded in numpy, larger ones by a
    Polars group-by: both give every open window the same counts and sketch, late rows
    skipped, for several series and windows, latencies at and around the slow bound,
    at zero and below the sketch's smallest value."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    frame = pl.DataFrame({
        "version": rng.choice(["v1", "v2"], n).tolist(),
        "cohort": rng.choice(["stable", "canary"], n).tolist(),
        "ts": 1.7e9 + rng.uniform(0, 190, n),
        "latency_ms": rng.choice([0.0, 5e-4, 1.0, 499.9, 500.0, 500.1, 1e6], n)
        * rng.choice([1.0, rng.random()], n),
        "error": rng.random(n) < 0.1})
    start = np.floor(frame["ts"].to_numpy() / 60) * 60
    late = rng.random(n) < 0.2
    by_polars, by_numpy = TumblingWindows("m"), TumblingWindows("m")
    by_polars._fold(frame, start, late)
    by_numpy._fold_small(frame, start, late)

    def windows(w: TumblingWindows) -> list[dict[str, object]]:
        return sorted(w.to_dict()["open"], key=lambda o: (o["version"], o["cohort"], o["start"]))

    assert windows(by_numpy) == windows(by_polars)
    assert sum(o["count"] for o in windows(by_numpy)) == int((~late).sum())
