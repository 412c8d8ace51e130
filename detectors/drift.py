"""Drift over time: recent serving data against a trailing baseline of serving data.

Skew asks "is serving like training?"; drift asks "is serving like it was a
moment ago?". Per (model, version, feature), the last ``window`` values (the
*recent* window) are compared with the ``baseline_factor * window`` values just
before them (the *baseline*), both binned on the feature's reference bins:

- a two-sample Jensen-Shannon test, its threshold calibrated like skew's for a
  false alarm every ``run_length`` events (:func:`detectors.skew.calibrate`
  with a ``baseline`` sample), catches abrupt changes;
- River's ADWIN on the mean of each chunk of ``hop`` values (numeric features)
  catches slow, gradual drift, which a trailing baseline follows and a
  two-window test therefore misses. ADWIN fits here because it needs no window
  size (it keeps the longest window whose mean is consistent) and its ``delta``
  bounds the false-positive rate per update: we set it to ``hop / run_length``,
  the same budget as the JS test. Chunk means of hundreds of values are close to
  Gaussian, where ADWIN's Hoeffding bound is conservative.

A detection stays active until the baseline has moved past the change (then the
recent and baseline windows agree again): the alert says "this changed", and
resolves once the new regime is the norm. ``prediction`` is checked the same
way and reported as ``prediction_drift``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from river import drift as river_drift

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key
from detectors.distance import js_distance
from detectors.profile import FeatureBins
from detectors.skew import Calibration, ChunkCounter, _test_bins, calibrate

__all__ = ["DriftDetector"]

ADWIN_HISTORY = 256  # chunk means kept to rebuild ADWIN after a restore


class DriftDetector:
    """Recent window vs trailing baseline of one feature, plus ADWIN on chunk means.

    Parameters
    ----------
    model, version, feature
        The series: a model version's feature; ``prediction`` is reported as
        ``prediction_drift``, any other feature as ``feature_drift``.
    cohort
        ``stable`` or ``canary``.
    bins
        Bins to compare on (the feature's reference bins, named ``feature``).
    calibration
        From :func:`detectors.skew.calibrate` with ``baseline=baseline_factor * window``.
    baseline_factor
        Baseline length in recent windows.
    severity
        Of the alert.

    Examples
    --------
    A feature whose mean creeps up by one standard deviation over 250,000
    values, after 50,000 stable ones: too slow for the two-window test (the
    baseline follows it), not for ADWIN.

    >>> import numpy as np
    >>> from detectors.profile import FeatureBins
    >>> from detectors.skew import calibrate
    >>> rng = np.random.default_rng(42)
    >>> train = rng.normal(size=50_000)
    >>> edges = np.quantile(train, np.linspace(0, 1, 21))
    >>> bins = FeatureBins.from_profile("amount", {"type": "numeric", "bins": edges.tolist(),
    ...                                 "counts": np.histogram(train, edges)[0].tolist()})
    >>> cal = calibrate(bins.reference, 2000, 500, 6.048e7, baseline=8000)
    >>> det = DriftDetector("fraud-scorer", "v7", "amount", bins=bins, calibration=cal)
    >>> x = rng.normal(size=300_000) + np.concatenate([np.zeros(50_000),
    ...                                                np.linspace(0, 1, 250_000)])
    >>> signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": bins.bin_numeric(x),
    ...                       "value": x})
    >>> first = next(s for s in signals if s.active)
    >>> print(f"Drift detected at value {first.timestamp:.0f} by {first.details['detected_by']}")
    Drift detected at value 143999 by adwin
    """

    inputs = ("ts", "bin")

    def __init__(self, model: str, version: str, feature: str, *, cohort: str = "stable",
                 bins: FeatureBins, calibration: Calibration, baseline_factor: int = 4,
                 severity: Severity = "warning") -> None:
        if bins.name != feature:
            raise ValueError(f"bins of {bins.name!r} given for feature {feature!r}")
        if not baseline_factor >= 1:
            raise ValueError("baseline_factor must be >= 1")
        check_severity(severity)
        self.model, self.version, self.feature, self.cohort = model, version, feature, cohort
        self.bins = bins
        self.calibration = calibration
        self.baseline_factor = baseline_factor
        self.severity = severity
        self.check = "prediction_drift" if feature == "prediction" else "feature_drift"
        self._recent_chunks = calibration.window // calibration.hop
        self._capacity = self._recent_chunks * (1 + baseline_factor)
        self._chunks: deque[np.ndarray] = deque()
        self._counter = ChunkCounter(bins.size, calibration.hop)
        self._means: deque[float] = deque(maxlen=ADWIN_HISTORY)
        self._adwin = self._new_adwin()
        self._hold = 0  # chunks an ADWIN detection stays active
        self._adwin_at: float | None = None

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        for bins in (_test_bins("numeric"), _test_bins("categorical", "prediction")):
            yield {"model": "m", "version": "v1", "feature": bins.name, "bins": bins,
                   "calibration": calibrate(bins.reference, 400, 100, 1e6, baseline=1600)}
        bins = _test_bins("numeric")
        yield {"model": "m", "version": "v1", "feature": bins.name, "cohort": "canary",
               "bins": bins, "calibration": calibrate(bins.reference, 400, 200, 1e6, baseline=800),
               "baseline_factor": 2, "severity": "error"}

    def _new_adwin(self) -> river_drift.ADWIN:
        return river_drift.ADWIN(delta=self.calibration.hop / self.calibration.run_length,
                                 grace_period=self._recent_chunks)

    @property
    def key(self) -> str:
        parts = () if self.check == "prediction_drift" else (self.feature,)
        return dedup_key(self.check, self.model, self.version, self.cohort, *parts)

    def update(self, batch: Batch) -> list[Signal]:
        """Fold bin indices in (``value``, optional: the raw numbers, for ADWIN); a signal
        per test."""
        idx, ts, values = batch["bin"], batch["ts"], batch.get("value")
        out = []
        for last, counts, mean in self._counter.add(idx, values):
            self._chunks.append(counts)
            if len(self._chunks) > self._capacity:
                self._chunks.popleft()
            if values is not None:
                self._means.append(mean)
                self._adwin.update(mean)
                if self._adwin.drift_detected:
                    self._hold = self._capacity
                    self._adwin_at = float(ts[last])
            if len(self._chunks) == self._capacity:
                out.append(self._evaluate(float(ts[last])))
            if self._hold:
                self._hold -= 1
        return out

    def _evaluate(self, ts: float) -> Signal:
        chunks = list(self._chunks)
        base = np.sum(chunks[:-self._recent_chunks], axis=0)
        recent = np.sum(chunks[-self._recent_chunks:], axis=0)
        p, q = recent / recent.sum(), base / base.sum()
        js = js_distance(p, q)
        by_js = js > self.calibration.threshold
        active = by_js or self._hold > 0
        name = "predictions" if self.check == "prediction_drift" else f"feature '{self.feature}'"
        why = (f"JS distance {js:.3f} > {self.calibration.threshold:.3f}" if by_js
               else "ADWIN detected a change in its mean" if active
               else f"JS distance {js:.3f} <= {self.calibration.threshold:.3f}")
        moved = np.argsort(-np.abs(p - q))[:3]
        details: dict[str, Any] = {
            "feature": self.feature, "statistic": "jensen_shannon", "value": round(js, 5),
            "threshold": round(self.calibration.threshold, 5), "cohort": self.cohort,
            "detected_by": ("jensen_shannon" if by_js else "adwin" if active else None),
            "adwin_change_at_ts": self._adwin_at,
            "largest_moves": [{"bin": self.bins.labels[i], "recent": round(float(p[i]), 4),
                               "baseline": round(float(q[i]), 4)} for i in moved],
            "window": {"events": int(recent.sum()), "baseline_events": int(base.sum()),
                       "end_ts": ts},
            "calibration": self.calibration.to_dict(),
        }
        return Signal(check=self.check, key=self.key, active=active, severity=self.severity,
                      summary=f"{self.model} {self.version}: {name} drifted ({why})",
                      timestamp=ts, model=self.model, version=self.version, details=details)

    def to_dict(self) -> dict[str, Any]:
        return {"chunks": [c.tolist() for c in self._chunks], **self._counter.to_dict(),
                "means": list(self._means), "hold": self._hold, "adwin_at": self._adwin_at}

    def load_dict(self, data: dict[str, Any]) -> None:
        if not self._counter.load_dict(data):
            return  # other bins: start afresh
        self._chunks = deque(np.asarray(c, dtype=np.int64) for c in data["chunks"])
        self._hold, self._adwin_at = int(data["hold"]), data["adwin_at"]
        # ADWIN's buckets are not JSON; replaying the recent chunk means rebuilds
        # it (exactly, unless its window had grown past ADWIN_HISTORY chunks).
        self._adwin = self._new_adwin()
        self._means = deque(maxlen=ADWIN_HISTORY)
        for m in data["means"]:
            self._means.append(m)
            self._adwin.update(m)
