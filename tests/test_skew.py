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


def test_calibrated_threshold_keeps_the_false_alarm_budget_on_stationary_data() -> None:
    rng = np.random.default_rng(3)
    ref = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    bins = FeatureBins.from_profile("c", {"type": "categorical", "frequencies": dict(
        zip("abcde", ref.tolist(), strict=True))})
    assert bins is not None
    run_length = 50_000.0
    cal = calibrate(bins.reference, window=1000, hop=250, run_length=run_length)
    det = SkewDetector("m", "v1", "c", bins=bins, calibration=cal)
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
    det = SkewDetector("m", "v1", "x", bins=bins, calibration=cal)
    change = 20_000
    x = np.concatenate([rng.normal(size=change), rng.normal(loc=shift, size=10_000)])
    signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": bins.bin_numeric(x)})
    first = next(s.timestamp for s in signals if s.active)
    assert change <= first <= change + within


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
    windows={"size_s": 10, "allowed_lateness_s": 0},  # type: ignore[arg-type]
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
    assert evidence["statistic"] == "jensen_shannon" and evidence["value"] > evidence["threshold"]
    assert evidence["calibration"]["run_length_events"] == 1e6
    assert evidence["window"]["events"] == 400
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
    assert details["window"]["baseline_events"] == 4 * details["window"]["events"] == 1600
    assert "prediction_drift:m:v1" not in [k for k, _ in box.alerts]


def test_without_a_published_profile_the_first_events_become_the_reference() -> None:
    settings = Settings(
        limits={"max_future_s": 4e9},  # type: ignore[arg-type]
        windows={"size_s": 10, "allowed_lateness_s": 0},  # type: ignore[arg-type]
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
