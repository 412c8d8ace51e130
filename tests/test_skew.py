"""Reference profiles, calibrated skew thresholds and the skew check, without Kafka."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest

from detectors.profile import OTHER, FeatureBins, build_profile
from detectors.sequential import information_bound
from detectors.skew import SkewDetector, calibrate
from streams.cli.profile import scan
from streams.config import Settings
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import InvalidProfile, Reference, ReferenceStore


def training_frame(n: int = 20_000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(4, 0.6, n)
    amount[rng.random(n) < 0.02] = np.nan
    return pl.DataFrame({
        "amount": amount,
        "country": rng.choice(["FR", "DE", "US", "GB", "IT"], n, p=[.4, .3, .15, .1, .05]),
        "is_new": rng.random(n) < 0.2,
        "prediction": rng.random(n),
        "label": rng.integers(0, 2, n),
    })


def test_profile_from_parquet_and_csv_agree_and_describe_the_data(tmp_path: Path) -> None:
    df = training_frame()
    df.write_parquet(tmp_path / "t.parquet")
    df.write_csv(tmp_path / "t.csv")
    a = build_profile(scan(str(tmp_path / "t.parquet")), "m", "v1", created_at=0)
    b = build_profile(scan(str(tmp_path / "t.csv")), "m", "v1", created_at=0)
    assert a["features"]["country"] == b["features"]["country"]
    assert a["features"]["amount"]["counts"] == b["features"]["amount"]["counts"]
    amount = a["features"]["amount"]
    finite = df["amount"].drop_nans().drop_nulls()
    assert sum(amount["counts"]) == finite.len()
    assert amount["missing_rate"] == pytest.approx(1 - finite.len() / df.height, abs=1e-6)
    assert (amount["min"], amount["max"]) == (finite.min(), finite.max())
    assert len(amount["bins"]) == len(amount["counts"]) + 1
    assert max(amount["counts"]) < 1.5 * min(amount["counts"])  # quantile bins: even counts
    assert set(a["features"]["is_new"]["frequencies"]) == {"true", "false"}
    assert a["prediction"]["type"] == "numeric" and "label" in a
    assert "prediction" not in a["features"]


def test_feature_bins_reproduce_the_profile_counts() -> None:
    df = training_frame()
    prof = build_profile(df.lazy(), "m", "v1", created_at=0)["features"]["amount"]
    bins = FeatureBins.from_profile("amount", prof)
    assert bins is not None
    x = df["amount"].drop_nans().drop_nulls().to_numpy()
    assert np.bincount(bins.bin_numeric(x), minlength=bins.size).tolist() == prof["counts"]


def test_categories_beyond_the_cap_fold_into_other() -> None:
    lf = pl.LazyFrame({"c": ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5})
    freqs = build_profile(lf, "m", "v1", max_categories=2, created_at=0)["features"]["c"]
    assert freqs["frequencies"] == {"a": 0.5, "b": 0.3, OTHER: 0.2}


def test_a_value_too_long_to_list_counts_as_other_in_the_profile_and_when_served() -> None:
    """The profile of a version's first events holds what its values hold: a megabyte
    category would be a megabyte of state (and of every checkpoint after it)."""
    huge = "x" * 1_000_000
    lf = pl.LazyFrame({"c": [huge] * 60 + ["a"] * 30 + ["b"] * 10})
    profile = build_profile(lf, "m", "v1", created_at=0)["features"]["c"]
    assert profile["frequencies"] == {"a": 0.3, "b": 0.1, OTHER: 0.6}
    assert len(orjson.dumps(profile)) < 200
    bins = FeatureBins.from_profile("c", profile)
    assert bins is not None
    assert [bins.labels[i] for i in bins.bin_categories([huge, "a", "zzz"])] == [OTHER, "a", OTHER]


def test_calibrated_threshold_keeps_the_false_alarm_budget_on_stationary_data() -> None:
    rng = np.random.default_rng(3)
    ref = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    bins = FeatureBins.from_profile("c", {"type": "categorical", "frequencies": dict(
        zip("abcde", ref.tolist(), strict=True))})
    assert bins is not None
    run_length = 50_000.0
    cal = calibrate(bins.reference, window=1000, hop=250, run_length=run_length)
    det = SkewDetector("m", "v1", "c", bins=bins, calibration=cal, test="window")
    n = 2_000_000
    idx = rng.choice(5, size=n, p=ref)
    alarms = sum(s.active for s in det.update({"ts": np.arange(n, dtype=float), "bin": idx}))
    expected = n / run_length  # 40
    assert expected / 3 < alarms < expected * 2, alarms


@pytest.mark.parametrize("shift, within", [(0.5, 1000), (1.0, 500)])
def test_a_mean_shift_is_detected_soon_after_the_change_and_not_before(
        shift: float, within: int) -> None:
    rng = np.random.default_rng(11)
    ref = rng.normal(size=100_000)
    edges = np.quantile(ref, np.linspace(0, 1, 21))
    bins = FeatureBins.from_profile("x", {"type": "numeric", "bins": edges.tolist(),
                                          "counts": np.histogram(ref, edges)[0].tolist()})
    assert bins is not None
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=6.048e7)
    det = SkewDetector("m", "v1", "x", bins=bins, calibration=cal, test="window")
    change = 20_000
    x = np.concatenate([rng.normal(size=change), rng.normal(loc=shift, size=10_000)])
    signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": bins.bin_numeric(x)})
    first = next(s.timestamp for s in signals if s.active)
    assert change <= first <= change + within


def alarms(signals: list[Any]) -> list[Any]:
    """Signals that start an alert (inactive -> active), as the alert manager sees them."""
    out, on = [], False
    for s in signals:
        if s.active and not on:
            out.append(s)
        on = s.active
    return out


def normal_bins(rows: int, seed: int = 11) -> FeatureBins:
    ref = np.random.default_rng(seed).normal(size=rows)
    edges = np.quantile(ref, np.linspace(0, 1, 21))
    bins = FeatureBins.from_profile("x", {"type": "numeric", "bins": edges.tolist(),
                                          "counts": np.histogram(ref, edges)[0].tolist()})
    assert bins is not None
    return bins


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_sequential_false_alarms_stay_near_the_configured_rate(kind: str) -> None:
    # Short run length so alarms are frequent enough to count; the reference is a
    # finite sample (20,000 rows) and the stream is drawn from the true law.
    run_length, n = 20_000.0, 2_000_000
    rng = np.random.default_rng(5 if kind == "numeric" else 6)
    if kind == "numeric":
        bins = normal_bins(20_000)
        x = bins.bin_numeric(rng.normal(size=n))
    else:
        shares = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
        sample = rng.choice(5, size=20_000, p=shares)
        freqs = np.bincount(sample, minlength=5) / 20_000
        bins = FeatureBins.from_profile("x", {"type": "categorical", "frequencies": dict(
            zip("abcde", freqs.tolist(), strict=True))})
        assert bins is not None
        x = rng.choice(5, size=n, p=shares)
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=run_length)
    det = SkewDetector("m", "v1", "x", bins=bins, calibration=cal, reference_size=20_000)
    signals = []
    for i in range(0, n, 5_000):
        signals += det.update({"ts": np.arange(i, i + 5_000, dtype=float), "bin": x[i:i + 5_000]})
    count = len(alarms(signals))
    expected = n / run_length  # 100
    # Calibrated conservatively (a union bound over the bank of CUSUMs), never above.
    assert expected / 8 <= count <= expected * 1.3, count  # 31 and 20 here


@pytest.mark.parametrize("shift", [0.5, 1.0])
def test_sequential_test_detects_a_shift_near_the_information_bound(shift: float) -> None:
    bins = normal_bins(50_000)
    run_length = 6.048e7
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=run_length)
    rng = np.random.default_rng(12)
    big = 2_000_000
    shifted = np.bincount(bins.bin_numeric(rng.normal(shift, 1, big)), minlength=bins.size)
    base = np.bincount(bins.bin_numeric(rng.normal(0, 1, big)), minlength=bins.size)
    bound = information_bound(shifted.astype(float), base.astype(float), run_length)
    delays = []
    for r in range(15):
        det = SkewDetector("m", "v1", "x", bins=bins, calibration=cal, reference_size=50_000)
        change = 5_000 + 37 * r
        x = np.concatenate([rng.normal(size=change), rng.normal(loc=shift, size=3_000)])
        signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": bins.bin_numeric(x)})
        first = next(s for s in signals if s.active)
        assert first.timestamp >= change  # no false alarm before
        delays.append(first.timestamp - change + 1)
    assert np.median(delays) <= 2 * bound, (np.median(delays), bound)
    assert first.details["events_since_change_start"] <= 3 * delays[-1]


def test_sequential_categorical_shift_names_the_moved_category() -> None:
    shares = {"FR": 0.62, "DE": 0.28, "US": 0.10}
    bins = FeatureBins.from_profile("country", {"type": "categorical", "frequencies": shares})
    assert bins is not None
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=6.048e7)
    det = SkewDetector("m", "v1", "country", bins=bins, calibration=cal, reference_size=50_000)
    rng = np.random.default_rng(3)
    before = rng.choice(3, 10_000, p=[0.62, 0.28, 0.10])
    after = rng.choice(3, 5_000, p=[0.72, 0.28 * 0.28 / 0.38, 0.10 * 0.28 / 0.38])
    x = np.concatenate([before, after])
    signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": x})
    first = next(s for s in signals if s.active)
    assert 10_000 <= first.timestamp <= 10_000 + 2_000
    d = first.details
    assert d["statistic"] == "cusum" and d["value"] >= d["threshold"]
    assert d["largest_moves"][0]["bin"] == "FR"
    assert d["largest_moves"][0]["serving"] > d["largest_moves"][0]["reference"]
    assert "'FR'" in d["alternative"]


def test_sequential_state_round_trip_mid_alarm_changes_nothing() -> None:
    bins = normal_bins(50_000)
    cal = calibrate(bins.reference, window=2000, hop=500, run_length=1e6)
    rng = np.random.default_rng(4)
    x = bins.bin_numeric(np.concatenate([rng.normal(size=10_000),
                                         rng.normal(0.5, 1, 3_000), rng.normal(size=20_000)]))
    ts = np.arange(x.size, dtype=float)

    def run(cut: int | None) -> list[tuple[float, bool]]:
        det = SkewDetector("m", "v1", "x", bins=bins, calibration=cal, reference_size=50_000)
        out = []
        for i in range(0, x.size, 777):
            if cut is not None and i == cut:
                state = orjson.loads(orjson.dumps(det.to_dict()))
                det = SkewDetector("m", "v1", "x", bins=bins, calibration=cal,
                                   reference_size=50_000)
                det.load_dict(state)
            out += [(s.timestamp, s.active) for s in det.update({"ts": ts[i:i + 777],
                                                                 "bin": x[i:i + 777]})]
        return out

    plain = run(None)
    assert any(a for _, a in plain) and not plain[-1][1]  # raised, then over
    assert run(777 * 14) == plain
    size = len(orjson.dumps(SkewDetector("m", "v1", "x", bins=bins, calibration=cal,
                                         reference_size=50_000).to_dict()))
    assert size < 4_000, size


def test_invalid_profiles_are_refused_with_a_reason() -> None:
    skew = Settings().skew
    with pytest.raises(InvalidProfile, match="missing_field: 'model'"):
        Reference.from_profile({"version": "v1", "features": {}}, skew)
    with pytest.raises(InvalidProfile, match="bad_type"):
        Reference.from_profile({"model": "m", "version": "v1", "features": {"a": 3}}, skew)


T0 = 1_795_000_000.0  # event times start here; the tests' wall clock near 0
SKEW_SETTINGS = Settings(
    alerts={"keep_firing_for_s": 0},  # type: ignore[arg-type]  # resolve on the next window
    limits={"max_future_s": 4e9},  # type: ignore[arg-type]
    windows={"size_s": 10, "allowed_lateness_s": 0, "max_lead_s": 4e9},  # type: ignore[arg-type]
    skew={"window_events": 400, "hop_events": 100, "run_length_events": 1e6},  # type: ignore[arg-type]
)


def serving(n: int, start: float, seed: int, shift: float = 1.0,
            country: str | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({"event_id": f"e{start}-{i}", "ts": start + i * 0.01, "model": "m",
                    "version": "v1", "latency_ms": 20.0, "prediction": rng.random(),
                    "features": {"amount": shift * rng.lognormvariate(4, 0.6),
                                 "country": country or rng.choices(
                                     ["FR", "DE", "US", "GB", "IT"], [.4, .3, .15, .1, .05])[0],
                                 "is_new": rng.random() < 0.2}})
    return out


def skew_alerts(box: Outbox) -> list[tuple[str, str]]:
    return [(a["event_action"], k) for k, a in box.alerts if "skew" in k]


def alert_of(box: Outbox, key: str) -> dict[str, Any]:
    return next(a for k, a in box.alerts if k == key)


def test_pipeline_raises_and_resolves_skew_against_the_published_profile() -> None:
    store = ReferenceStore(SKEW_SETTINGS.skew)
    store.add(orjson.loads(orjson.dumps(build_profile(training_frame().lazy(), "m", "v1",
                                                      created_at=1.0))))
    p = PredictionProcessor(SKEW_SETTINGS, "ml.predictions", store)
    offset = 0

    def send(evs: list[dict[str, Any]]) -> Outbox:
        nonlocal offset
        msgs = [InMessage(orjson.dumps(evs[i:i + 100]), 0, offset + j)
                for j, i in enumerate(range(0, len(evs), 100))]
        offset += len(msgs)
        return p.process(msgs, now=0.0)

    assert skew_alerts(send(serving(2000, T0 + 0.0, seed=1))) == []
    drifted = send(serving(1000, T0 + 20.0, seed=2, shift=3.0))  # amounts triple
    assert skew_alerts(drifted) == [("trigger", "training_serving_skew:m:v1:amount")]
    evidence = alert_of(drifted, "training_serving_skew:m:v1:amount")["payload"]["custom_details"]
    assert evidence["statistic"] == "cusum" and evidence["value"] >= evidence["threshold"]
    assert evidence["calibration"]["run_length_events"] == 1e6
    assert 0 < evidence["events_since_change_start"] <= 400
    assert evidence["largest_moves"][0]["serving"] != evidence["largest_moves"][0]["reference"]
    back = send(serving(1000, T0 + 40.0, seed=3))
    assert skew_alerts(back) == [("resolve", "training_serving_skew:m:v1:amount")]
    unseen = send(serving(1000, T0 + 60.0, seed=4, country="ZZ"))
    [(action, key)] = skew_alerts(unseen)
    assert (action, key) == ("trigger", "training_serving_skew:m:v1:country")
    details = alert_of(unseen, "training_serving_skew:m:v1:country")["payload"]["custom_details"]
    # Caught within the first hop of ZZ traffic: a quarter of the window moved.
    assert details["unseen_categories"] == ["ZZ"] and details["linf"] >= 0.2
    assert not math.isnan(details["value"])


def test_pipeline_reports_feature_drift_against_the_trailing_baseline() -> None:
    store = ReferenceStore(SKEW_SETTINGS.skew, SKEW_SETTINGS.drift.baseline_factor)
    store.add(build_profile(training_frame().lazy(), "m", "v1", created_at=1.0))
    p = PredictionProcessor(SKEW_SETTINGS, "ml.predictions", store)
    evs = serving(2500, T0 + 0.0, seed=1) + serving(1000, T0 + 30.0, seed=2, shift=3.0)
    msgs = [InMessage(orjson.dumps(evs[i:i + 100]), 0, j)
            for j, i in enumerate(range(0, len(evs), 100))]
    box = p.process(msgs[:25], now=0.0)
    assert [k for k, _ in box.alerts] == []
    box = p.process(msgs[25:], now=1.0)
    drift = alert_of(box, "feature_drift:m:v1:amount")
    assert drift["payload"]["class"] == "feature_drift"
    details = drift["payload"]["custom_details"]
    assert details["window"]["baseline_events"] == 1600  # 4 windows of 400
    assert details["detected_by"] == "cusum" and details["events_since_change_start"] > 0
    assert "prediction_drift:m:v1" not in [k for k, _ in box.alerts]


def test_without_a_published_profile_the_first_events_become_the_reference() -> None:
    settings = Settings(
        limits={"max_future_s": 4e9},  # type: ignore[arg-type]
        windows={"size_s": 10, "allowed_lateness_s": 0, "max_lead_s": 4e9},  # type: ignore[arg-type]
        skew={"window_events": 400, "hop_events": 100,  # type: ignore[arg-type]
              "run_length_events": 1e6, "first_events": 1000},
        drift={"enabled": False},  # type: ignore[arg-type]
    )
    p = PredictionProcessor(settings, "ml.predictions", ReferenceStore(settings.skew))
    evs = serving(2000, T0 + 0.0, seed=1) + serving(1000, T0 + 30.0, seed=2, shift=3.0)
    msgs = [InMessage(orjson.dumps(evs[i:i + 100]), 0, j)
            for j, i in enumerate(range(0, len(evs), 100))]
    quiet = p.process(msgs[:20], now=0.0)
    assert skew_alerts(quiet) == []
    [state] = [v for _, key, v in quiet.checkpoints if key == "m"]
    [series] = state["series"]
    assert series["first_profile"]["rows"] == 1000  # learned, and checkpointed
    box = p.process(msgs[20:], now=1.0)
    assert skew_alerts(box) == [("trigger", "training_serving_skew:m:v1:amount")]
    alert = alert_of(box, "training_serving_skew:m:v1:amount")["payload"]
    assert "first 1000 events" in alert["summary"]
    assert "no training profile" in alert["custom_details"]["reference"]


def test_a_profile_builds_its_skew_bank_once_and_its_series_share_it() -> None:
    """The sequential test's alternatives depend only on the profile (bins, run length,
    reference size): built with the reference, shared by every series and cohort; a
    bank for another run length is not taken for this one."""
    rng = np.random.default_rng(3)
    frame = pl.DataFrame({"amount": rng.lognormal(3, 0.8, 5_000).tolist(),
                          "country": rng.choice(["FR", "DE", "US"], 5_000).tolist()})
    profile = build_profile(frame.lazy(), "m", "v1", created_at=1.0)
    s = Settings()
    ref = Reference.from_profile(profile, s.skew)
    fr = ref.features["amount"]
    assert fr.bank is not None and fr.bank.reference_size == ref.rows
    stable, canary = (SkewDetector("m", "v1", "amount", cohort=c, bins=fr.bins,
                                   calibration=fr.skew, reference_size=ref.rows, bank=fr.bank)
                      for c in ("stable", "canary"))
    assert stable._seq is not None and canary._seq is not None
    assert stable._seq.alternatives is fr.bank and canary._seq.alternatives is fr.bank
    other = calibrate(fr.bins.reference, fr.skew.window, fr.skew.hop, 1e5)
    own = SkewDetector("m", "v1", "amount", bins=fr.bins, calibration=other,
                       reference_size=ref.rows, bank=fr.bank)
    assert own._seq is not None and own._seq.alternatives is not fr.bank
    assert own._seq.alternatives.run_length == 1e5


def test_calibration_does_not_depend_on_the_kept_draw() -> None:
    """A feature's skew and drift calibrations share their bootstrap windows (the last
    draw is kept): each must come out as if drawn alone, in any order."""
    from detectors import skew

    shares = np.random.default_rng(3).dirichlet(np.ones(12))
    other = np.random.default_rng(4).dirichlet(np.ones(12))
    calls = [(shares, 20_000), (shares, 8_000), (other, 8_000), (shares, None), (shares, 8_000)]
    alone = []
    for ref, baseline in calls:
        skew._last_windows = None
        alone.append(calibrate(ref, 2000, 500, 6.048e7, baseline=baseline))
    skew._last_windows = None
    in_turn = [calibrate(ref, 2000, 500, 6.048e7, baseline=b) for ref, b in calls]
    assert in_turn == alone
    assert alone[0] != alone[1] != alone[2]  # the calls differ: the test could fail
    kept = skew._last_windows
    assert kept is not None and not kept[1].flags.writeable  # nobody can change it
    wide = np.full(300, 1 / 300)  # 2,000 windows of 300 bins: 4.8 MB, not kept
    assert calibrate(wide, 2000, 500, 6.048e7) == calibrate(wide, 2000, 500, 6.048e7)
    assert skew._last_windows is None
