"""Data quality: each issue against its reference rate, never for a single event."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from detectors.quality import FeatureSpec, QualityDetector

SPECS = [FeatureSpec("amount", "numeric", missing_rate=0.02, lo=0.0, hi=1000.0, rows=50_000),
         FeatureSpec("country", "categorical", missing_rate=0.0)]


def rows(n: int, seed: int, missing: float = 0.02, text: float = 0.0, huge: float = 0.0,
         extra: bool = False, bad_once: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        u = rng.random()
        amount: Any = rng.uniform(1, 900)
        if u < missing:
            amount = None
        elif u < missing + text:
            amount = "12.5"
        elif u < missing + text + huge:
            amount = 5000.0
        f: dict[str, Any] = {"country": rng.choice(["FR", "DE"])}
        if amount is not None:
            f["amount"] = amount
        if extra:
            f["session_id"] = i
        out.append(f)
    if bad_once:
        out[5] = {"amount": "oops", "country": {"nested": True}}
    return out


def active(det: QualityDetector, feats: list[dict[str, Any]]) -> set[str]:
    sigs = det.update({"ts": np.arange(len(feats), dtype=float), "features": feats})
    return {s.key.split(":", 3)[3] for s in sigs if s.active}


def detector() -> QualityDetector:
    return QualityDetector("m", "v1", specs=SPECS, window=2000, run_length=6.048e7)


def test_clean_traffic_and_one_bad_event_raise_nothing() -> None:
    det = detector()
    assert active(det, rows(20_000, seed=1)) == set()
    assert active(det, rows(2000, seed=2, bad_once=True)) == set()


def test_each_issue_fires_when_its_rate_moves() -> None:
    assert active(detector(), rows(2000, 3, missing=0.08)) == {"amount:missing"}
    assert active(detector(), rows(2000, 4, text=0.05)) == {"amount:type_mismatch"}
    assert active(detector(), rows(2000, 5, huge=0.05)) == {"amount:out_of_range"}
    assert active(detector(), rows(2000, 6, extra=True)) == {"schema:unknown_features"}


def test_objects_and_arrays_in_a_categorical_feature_are_type_mismatches() -> None:
    feats = rows(2000, 10)
    for i, f in enumerate(feats[::20]):  # 5 %: objects and arrays, never a category
        f["country"] = {"nested": True} if i % 2 else ["FR"]
    assert active(detector(), feats) == {"country:type_mismatch"}
    scalars = rows(2000, 11)
    for f in scalars[::20]:  # numbers and bools are categories of their own: no mismatch
        f["country"] = 7
    assert active(detector(), scalars) == set()


def test_a_tiny_excess_on_a_huge_window_is_not_an_incident() -> None:
    det = QualityDetector("m", "v1", specs=SPECS, window=200_000, run_length=6.048e9)
    # 2.5 % missing against 2 %: significant on 200,000 events, but under min_excess.
    assert active(det, rows(200_000, 7, missing=0.025)) == set()


def test_signals_carry_evidence() -> None:
    # (the state's JSON round trip is the conformance suite's: tests/test_detector_contract.py)
    det = detector()
    assert det.update({"ts": np.arange(1000, dtype=float), "features": rows(1000, 8, text=0.05)
                       }) == []
    sigs = det.update({"ts": np.arange(1000, 2000, dtype=float),
                       "features": rows(1000, 9, text=0.05)})
    [hit] = [s for s in sigs if s.active]
    assert hit.key == "data_quality:m:v1:amount:type_mismatch"
    assert hit.details["count"] > 50 and hit.details["reference_rate"] == 0.0
    assert hit.details["p_value"] < det.alpha and hit.timestamp == 1999.0


def test_each_numeric_feature_is_counted_on_its_own_range() -> None:
    """The numeric features are counted in one array: each keeps its own range and
    counts, value by value as a plain loop counts them."""
    rng = random.Random(8)
    specs = [FeatureSpec("a", "numeric", 0.0, lo=0.0, hi=1.0, rows=100),
             FeatureSpec("c", "categorical", 0.0),
             FeatureSpec("b", "numeric", 0.0, lo=-100.0, hi=-50.0, rows=100),
             FeatureSpec("d", "numeric", 0.0, rows=100)]  # no range: never out of it
    pool: list[Any] = [None, "x", float("inf"), float("-inf"), 0.5, -75.0, 2.0, -200.0, 1e308]
    feats = [{"a": rng.choice(pool), "b": rng.choice(pool), "c": rng.choice(["u", [1], None]),
              "d": rng.choice(pool)} for _ in range(150)]
    det = QualityDetector("m", "v1", specs=specs, window=1_000, run_length=1e6)
    det.update({"ts": np.arange(150.0), "features": feats})
    for spec in specs:
        values = [f[spec.name] for f in feats]
        want = {"missing": values.count(None)}
        if spec.kind == "numeric":
            numbers = [v for v in values if isinstance(v, float)]
            want["type_mismatch"] = len(values) - len(numbers) - want["missing"]
            want["non_finite"] = sum(abs(v) == float("inf") for v in numbers)
            want["out_of_range"] = sum(abs(v) != float("inf") and not spec.lo <= v <= spec.hi
                                       for v in numbers)
        else:
            want["type_mismatch"] = sum(type(v) is list for v in values)
        got = det._counts[spec.name]
        assert {k: got[k] for k in want} == want, spec.name
