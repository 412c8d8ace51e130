"""Label-free accuracy estimates calibrated on the reference's labels (CBPE).

An overconfident model (score ``sigmoid(6x)``, truth ``sigmoid(2x)``) is profiled
with its labels; on a population moved towards ``x = 0`` its raw confidence is
far off the truth, the calibrated estimate is not. Also: what the profile
carries and how old profiles load, what the alerts say, when the estimate runs
while labels are late, and its checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
from click.testing import CliRunner

from detectors.performance import ConfidenceEstimate, ScoreCalibration
from detectors.profile import build_profile
from streams.cli import main
from streams.config import Settings
from streams.core.labels import LabelTracker
from streams.core.references import InvalidProfile, Reference

T0 = 1_795_000_000.0
SETTINGS = Settings(
    skew={"window_events": 400, "hop_events": 100,
          "run_length_events": 1e6, "bootstrap_draws": 200},
    labels={"window": 500, "estimate_window": 500},
)


def population(n: int, spread: float, seed: int, sharpness: float = 3.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature, score and label: the score is ``sigmoid(sharpness * 2x)``, the truth
    ``sigmoid(2x)`` (sharpness 3: overconfident; 1/3: underconfident)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, spread, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype(int)
    return x, 1 / (1 + np.exp(-2 * sharpness * x)), y


def profile_of(seed: int = 0, sharpness: float = 3.0, labels: bool = True) -> dict[str, Any]:
    x, p, y = population(20_000, 1.5, seed, sharpness)
    cols: dict[str, Any] = {"x": x, "prediction": p}
    if labels:
        cols["label"] = y
    return build_profile(pl.LazyFrame(cols), "m", "v1", created_at=1.0)


def reference(profile: dict[str, Any]) -> Reference:
    return Reference.from_profile(orjson.loads(orjson.dumps(profile)), SETTINGS.skew)


@pytest.mark.parametrize("sharpness", [3.0, 1 / 3], ids=["overconfident", "underconfident"])
def test_calibration_recovers_accuracy_under_shift_where_raw_confidence_is_far_off(
        sharpness: float) -> None:
    cal = reference(profile_of(sharpness=sharpness)).score_calibration
    assert cal is not None
    _, p, y = population(20_000, 0.4, seed=1, sharpness=sharpness)  # mass near x = 0
    realized = float(((p >= 0.5) == (y == 1)).mean())
    det = ConfidenceEstimate("m", "v1", calibration=cal, window=5000)
    signals = det.update({"ts": T0 + np.arange(p.size, dtype=float), "prediction": p})
    assert len(signals) == 4
    estimated = np.mean([s.details["value"] for s in signals])
    raw = np.mean([s.details["raw_value"] for s in signals])
    assert abs(estimated - realized) < 0.015
    assert abs(raw - realized) > 0.08  # what the uncalibrated estimate would have said
    assert all(s.active for s in signals)  # 0.65 against the reference's 0.84
    assert signals[0].details["reference"] == pytest.approx(cal.accuracy, abs=1e-5)


def test_a_calibration_is_small_monotone_and_checks_what_it_loads() -> None:
    cal = reference(profile_of()).score_calibration
    assert cal is not None
    assert len(cal.scores) <= 50 and list(cal.rates) == sorted(cal.rates)
    assert abs(cal.expected_accuracy - cal.accuracy) < 0.005
    assert len(orjson.dumps(cal.to_dict())) < 4_000
    assert ScoreCalibration.from_dict(orjson.loads(orjson.dumps(cal.to_dict()))) == cal
    good = cal.to_dict()
    for bad in ({"rates": good["rates"][::-1]}, {"scores": good["scores"][::-1]},
                {"threshold": 1.0}, {"accuracy": 1.5}, {"scores": [0.5] * 201},
                {"counts": [0] * len(good["counts"])}, {"rates": None}):
        with pytest.raises(ValueError):
            ScoreCalibration.from_dict({**good, **bad})
    with pytest.raises(ValueError):
        ScoreCalibration.from_dict({k: v for k, v in good.items() if k != "raw_accuracy"})


def test_profile_round_trip_with_and_without_calibration_and_old_profiles_load() -> None:
    with_cal = profile_of()
    ref = reference(with_cal)
    assert ref.score_calibration == ScoreCalibration.from_dict(
        with_cal["performance"]["score_calibration"])
    assert ref.performance == {"accuracy": with_cal["performance"]["accuracy"]}
    # Without labels: no performance, no calibration.
    unlabelled = profile_of(labels=False)
    assert "performance" not in unlabelled
    assert reference(unlabelled).score_calibration is None
    # A profile from before calibrations (accuracy only) loads as it did.
    old = {k: v for k, v in with_cal.items() if k != "performance"}
    old["performance"] = {"accuracy": 0.84}
    old_ref = reference(old)
    assert old_ref.score_calibration is None and old_ref.performance == {"accuracy": 0.84}
    # Scores that are not probabilities, or a class as prediction: nothing to calibrate.
    logits = build_profile(pl.LazyFrame({"prediction": [-2.0, 0.5, 3.0, 1.0],
                                         "label": [0, 1, 1, 0]}), "m", "v1", created_at=1.0)
    assert "score_calibration" not in logits["performance"]
    # A broken calibration is a bad profile (dead-lettered with its reason).
    broken = orjson.loads(orjson.dumps(with_cal))
    broken["performance"]["score_calibration"]["rates"].reverse()
    with pytest.raises(InvalidProfile, match="bad_value"):
        reference(broken)


def test_the_decision_threshold_is_the_profiles() -> None:
    x, p, y = population(20_000, 1.5, seed=2)
    prof = build_profile(pl.LazyFrame({"prediction": p, "label": y}), "m", "v1",
                         created_at=1.0, decision_threshold=0.7)
    cal = ScoreCalibration.from_dict(prof["performance"]["score_calibration"])
    assert cal.threshold == 0.7 and 0.7 in ScoreCalibration.edges([0.2, 0.9], 0.7)
    assert cal.accuracy == pytest.approx(float(((p >= 0.7) == (y == 1)).mean()))
    det = ConfidenceEstimate("m", "v1", calibration=cal, window=20_000)
    (s,) = det.update({"ts": np.arange(p.size, dtype=float), "prediction": p})
    assert s.details["threshold"] == 0.7 and abs(s.details["value"] - cal.accuracy) < 0.01


def predictions(tracker: LabelTracker, p: np.ndarray, t0: float, refs: Any,
                tag: str = "e") -> list[Any]:
    ts = t0 + np.arange(p.size, dtype=float)
    return tracker.on_predictions([f"{tag}{i}" for i in range(p.size)], ts, ["v1"] * p.size,
                                  ["stable"] * p.size, p.tolist(), float(ts[-1]), refs)


def test_the_alert_says_calibrated_or_uncalibrated() -> None:
    ref = reference(profile_of())
    _, p, _ = population(1000, 0.4, seed=3)
    calibrated = predictions(LabelTracker("m", SETTINGS), p, T0, lambda v: ref)
    assert [s.details["calibration"] for s in calibrated] == ["calibrated"] * 2
    d = calibrated[0].details
    assert d["reference_source"] == "profile" and d["estimate"] is True
    assert d["raw_value"] > d["value"] + 0.1 and d["reference_raw"] > d["reference"] + 0.05
    assert "calibrated on the reference's 20,000 labels" in calibrated[0].summary

    unlabelled = reference(profile_of(labels=False))
    for refs in (None, lambda v: unlabelled):
        out = predictions(LabelTracker("m", SETTINGS), p, T0, refs)
        assert [s.details["calibration"] for s in out] == ["uncalibrated"]  # after the first
        assert out[0].details["reference_source"] == "first_window"
        assert "uncalibrated" in out[0].summary


def test_estimates_go_on_while_labels_are_late_and_stop_when_they_are_prompt() -> None:
    """One prediction a second for 5,000 s, each labelled ``lag`` later; one-minute
    micro-batches of predictions, then of the labels that arrived."""
    ref = reference(profile_of())
    refs = lambda v: ref  # noqa: E731
    _, p, y = population(5000, 1.5, seed=4)
    ts = T0 + np.arange(p.size, dtype=float)
    ids = [f"e{i}" for i in range(p.size)]
    for lag, windows in ((1800.0, 10), (5.0, 0)):
        tracker = LabelTracker("m", SETTINGS)
        estimates = []
        for lo in np.arange(T0, T0 + p.size + lag + 60, 60.0):
            a, b = (int(k) for k in np.searchsorted(ts, [lo, lo + 60]))
            if b > a:
                estimates += tracker.on_predictions(ids[a:b], ts[a:b], ["v1"] * (b - a),
                                                    ["stable"] * (b - a), p[a:b].tolist(),
                                                    lo + 60, refs)
            a, b = (int(k) for k in np.searchsorted(ts + lag, [lo, lo + 60]))
            if b > a:
                tracker.on_labels(ids[a:b], (ts[a:b] + lag).tolist(), y[a:b].tolist(), refs)
        assert len(estimates) == windows, lag
        assert tracker.stats()["matched"] == p.size


def test_a_calibrated_estimate_is_restored_from_its_checkpoint_mid_window() -> None:
    ref = reference(profile_of())
    refs = lambda v: ref  # noqa: E731
    _, p, _ = population(1300, 0.6, seed=5)
    whole = LabelTracker("m", SETTINGS)
    expected = predictions(whole, p[:700], T0, refs)
    ts = T0 + np.arange(700, 1300, dtype=float)
    expected += whole.on_predictions([f"e{i}" for i in range(700, 1300)], ts, ["v1"] * 600,
                                     ["stable"] * 600, p[700:].tolist(), float(ts[-1]), refs)
    first = LabelTracker("m", SETTINGS)
    out = predictions(first, p[:700], T0, refs)
    state = orjson.loads(orjson.dumps(first.to_dict()))
    second = LabelTracker("m", SETTINGS)
    second.load_dict(state)
    assert orjson.loads(orjson.dumps(second.to_dict()))["estimates"] == state["estimates"]
    out += second.on_predictions([f"e{i}" for i in range(700, 1300)], ts, ["v1"] * 600,
                                 ["stable"] * 600, p[700:].tolist(), float(ts[-1]), refs)
    assert out == expected and len(out) == 2
    assert second.estimates[("v1", "stable")].calibration == ref.score_calibration


def test_profile_build_takes_the_prediction_and_label_columns(tmp_path: Path) -> None:
    x, p, y = population(3000, 1.5, seed=6)
    data = tmp_path / "train.parquet"
    pl.DataFrame({"x": x, "score": p, "is_fraud": y}).write_parquet(data)
    out = tmp_path / "profile.json"
    result = CliRunner().invoke(main, ["profile", "build", str(data), "--model", "m",
                                       "--version", "v1", "--prediction-column", "score",
                                       "--label-column", "is_fraud", "--out", str(out)])
    assert result.exit_code == 0, result.output
    prof = orjson.loads(out.read_bytes())
    assert set(prof["features"]) == {"x"} and "score_calibration" in prof["performance"]
    assert "score calibration: " in result.output  # stderr is mixed in by CliRunner
    clash = tmp_path / "clash.parquet"
    pl.DataFrame({"score": p, "prediction": p, "label": y}).write_parquet(clash)
    result = CliRunner().invoke(main, ["profile", "build", str(clash), "--model", "m",
                                       "--version", "v1", "--prediction-column", "score"])
    assert result.exit_code != 0 and "already has a column named 'prediction'" in result.output
