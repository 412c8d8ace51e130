"""Labels of one model: the feedback join, quality per version, label drift, estimates.

:class:`LabelTracker` is owned by a :class:`~streams.core.monitor.ModelMonitor`. It
remembers recent predictions (``event_id`` -> version, cohort, prediction) in a
bounded :class:`~detectors.performance.LabelJoin`; a label from ``ml.feedback``
finds its prediction there, is scored by the version's
:class:`~detectors.performance.PerformanceCheck`, and feeds the ``label_drift``
check against the profile's label distribution. While a series has no labels,
or its labels lag its predictions by more than ``labels.estimate_label_lag_s``
of event time (labels an hour late leave the last hour unmeasured),
:class:`~detectors.performance.ConfidenceEstimate` estimates its accuracy from
the prediction scores (when they look like probabilities: numbers in [0, 1]),
calibrated on the version's profile when it carries a
:class:`~detectors.performance.ScoreCalibration` (``uncalibrated`` otherwise, as
its alerts say).

The join buffer is the largest state Sentinelle keeps: at most
``labels.join_max`` entries per model (a hash sample past that, see
:class:`~detectors.performance.LabelJoin`), in segments of at most 1,000
entries, each checkpointed under its own key (``<model>\x1flabels\x1f<n>``)
when it changed, every ``labels.join_checkpoint_s`` rather than with every
micro-batch. A takeover can therefore lose the predictions of the last few
seconds: their labels are then counted as unmatched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from detectors.base import Signal
from detectors.performance import (
    ConfidenceEstimate,
    LabelJoin,
    PerformanceCheck,
    ScoreCalibration,
    compact_value,
)
from detectors.profile import category_key
from detectors.skew import SkewDetector
from streams.config import Settings
from streams.core.references import Reference

__all__ = ["LabelTracker"]

ReferenceLookup = Callable[[str], "Reference | None"]


def _probabilities(preds: Sequence[Any]) -> np.ndarray | None:
    """The predictions as floats if every one is a probability (an int or a float, not a
    bool, in [0, 1]), else None.

    >>> _probabilities([0.2, 1, 0]).tolist(), _probabilities([0.2, True]), _probabilities([2])
    ([0.2, 1.0, 0.0], None, None)
    """
    if not set(map(type, preds)) <= _NUMBER:
        return None
    x = np.asarray(preds, dtype=float)
    return x if ((x >= 0) & (x <= 1)).all() else None


_NUMBER = frozenset({int, float})


class LabelTracker:
    """Feedback join and label-based checks of one model."""

    def __init__(self, model: str, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        lab = settings.labels
        self.join = LabelJoin(lab.join_max, lab.join_ttl_s)
        self.checks: dict[tuple[str, str], PerformanceCheck] = {}
        self.estimates: dict[tuple[str, str], ConfidenceEstimate] = {}
        self.label_drift: dict[tuple[str, str], SkewDetector] = {}
        self._saved_drift: dict[tuple[str, str], dict[str, Any]] = {}
        self._saved_estimates: dict[tuple[str, str], dict[str, Any]] = {}
        self.labelled_to: dict[tuple[str, str], float] = {}  # latest labelled prediction's ts
        self.join_saved_at = -np.inf  # the first checkpoint is written at once

    def on_predictions(self, event_ids: Sequence[str], ts: np.ndarray, versions: Sequence[str],
                       cohorts: Sequence[str], predictions: Sequence[Any],
                       watermark: float, references: ReferenceLookup | None = None,
                       groups: Sequence[tuple[tuple[str, str], np.ndarray]] | None = None
                       ) -> list[Signal]:
        """Remember predictions for the join; estimate accuracy where labels are missing
        or late (calibrated by the version's profile from ``references``, when it can).
        ``groups``: the rows of each (version, cohort), when the caller has them."""
        lab = self.settings.labels
        if None in predictions:  # a prediction without its output has nothing to join
            kept = [i for i, p in enumerate(predictions) if p is not None]
            self.join.add_many([event_ids[i] for i in kept], ts[kept],
                               [versions[i] for i in kept], [cohorts[i] for i in kept],
                               [predictions[i] for i in kept])
        else:
            self.join.add_many(event_ids, ts, versions, cohorts, predictions)
        self.join.expire(watermark)
        if not lab.estimate:
            return []
        out: list[Signal] = []
        if groups is None:
            found: dict[tuple[str, str], list[int]] = {}
            for i, (v, c) in enumerate(zip(versions, cohorts, strict=True)):
                found.setdefault((v, c), []).append(i)
            groups = [(series, np.array(rows)) for series, rows in found.items()]
        for series, rows in groups:
            if not rows.size:
                continue
            check = self.checks.get(series)
            if check is not None and check.task is not None:
                lag = float(ts[rows].max()) - self.labelled_to.get(series, -np.inf)
                if lag <= lab.estimate_label_lag_s:
                    continue  # labels arrive in time: measure, don't estimate
            probs = _probabilities(itemgetter(*rows.tolist())(predictions) if rows.size > 1
                                   else [predictions[int(rows[0])]])
            if probs is None:
                continue
            out.extend(self._estimator(*series, references).update(
                {"ts": ts[rows], "prediction": probs}))
        return out

    def _estimator(self, version: str, cohort: str,
                   references: ReferenceLookup | None) -> ConfidenceEstimate:
        """The series' estimate, (re)built when its profile's calibration is new."""
        ref = references(version) if references is not None else None
        cal = ref.score_calibration if ref is not None else None
        est = self.estimates.get((version, cohort))
        if est is not None and (cal is None or est.calibration == cal):
            return est  # a profile gone keeps what was learned
        est = self.estimates[(version, cohort)] = self._estimate(version, cohort, cal)
        saved = self._saved_estimates.pop((version, cohort), None)
        if saved is not None and bool(saved.get("calibrated")) == (cal is not None):
            est.load_dict(saved)
        return est

    def on_labels(self, event_ids: Sequence[str], ts: Sequence[float], labels: Sequence[Any],
                  references: ReferenceLookup | None) -> list[Signal]:
        """Join labels to their predictions; score them; watch the label distribution."""
        out: list[Signal] = []
        # each series' matched labels, in order: scored at once, then its label drift
        found: dict[tuple[str, str], tuple[list[Any], list[Any], list[float]]] = {}
        for entry, t, label in zip(self.join.match_many(event_ids), ts, labels, strict=True):
            if entry is None:
                continue  # counted by the join as unmatched
            predicted_at, version, cohort, prediction = entry
            series = (version, cohort)
            if predicted_at > self.labelled_to.get(series, -np.inf):
                self.labelled_to[series] = predicted_at
            preds, values, times = found.setdefault(series, ([], [], []))
            preds.append(prediction)
            values.append(compact_value(label))  # as the prediction was kept
            times.append(t)
        for (version, cohort), (preds, values, times) in found.items():
            check = self.checks.get((version, cohort))
            if check is None:
                check = self.checks[(version, cohort)] = self._check(version, cohort, references)
            at = np.asarray(times)
            out.extend(check.update({"ts": at, "prediction": preds, "label": values}))
            det = self._label_drift(version, cohort, references)
            if det is not None:
                out.extend(_update_bins(det, values, at))
        return out

    def _check(self, version: str, cohort: str,
               references: ReferenceLookup | None) -> PerformanceCheck:
        lab = self.settings.labels
        ref = references(version) if references is not None else None
        perf = ref.performance if ref is not None else None
        reference = None if not perf else perf.get("accuracy", perf.get("mae"))
        return PerformanceCheck(self.model, version, cohort=cohort, window=lab.window,
                                run_length=self.settings.skew.run_length_events,
                                min_drop=lab.min_drop, reference=reference,
                                severity=lab.severity)

    def _estimate(self, version: str, cohort: str,
                  calibration: ScoreCalibration | None = None) -> ConfidenceEstimate:
        lab = self.settings.labels
        return ConfidenceEstimate(self.model, version, cohort=cohort, calibration=calibration,
                                  window=lab.estimate_window,
                                  run_length=self.settings.skew.run_length_events,
                                  min_drop=lab.min_drop)

    def _label_drift(self, version: str, cohort: str,
                     references: ReferenceLookup | None) -> SkewDetector | None:
        det = self.label_drift.get((version, cohort))
        if det is None and references is not None:
            ref = references(version)
            if ref is not None and ref.label is not None:
                det = self.label_drift[(version, cohort)] = SkewDetector(
                    self.model, version, ref.label.bins.name, cohort=cohort,
                    bins=ref.label.bins, calibration=ref.label.skew, check="label_drift",
                    severity=self.settings.skew.severity)
                saved = self._saved_drift.pop((version, cohort), None)
                if saved is not None:
                    det.load_dict(saved)
        return det

    def forget(self, version: str, cohort: str) -> None:
        """Drop the label checks of a series whose state expired."""
        for table in (self.checks, self.estimates, self.label_drift, self._saved_drift,
                      self._saved_estimates, self.labelled_to):
            table.pop((version, cohort), None)

    def stats(self) -> dict[str, float]:
        return self.join.stats()

    def to_dict(self) -> dict[str, Any]:
        """Small state, checkpointed with the model (the join's segments are not)."""
        return {
            "join": self.join.meta(),
            "checks": [[v, c, chk.to_dict()] for (v, c), chk in self.checks.items()],
            "estimates": [[v, c, e.to_dict()] for (v, c), e in self.estimates.items()]
            + [[v, c, d] for (v, c), d in self._saved_estimates.items()
               if (v, c) not in self.estimates],
            "labelled_to": [[v, c, t] for (v, c), t in self.labelled_to.items()],
            "label_drift": [[v, c, d.to_dict()] for (v, c), d in self.label_drift.items()]
            + [[v, c, d] for (v, c), d in self._saved_drift.items()],
        }

    def load_dict(self, data: dict[str, Any]) -> None:
        for v, c, d in data.get("checks", []):
            chk = self.checks[(v, c)] = self._check(v, c, None)
            chk.load_dict(d)
        # Estimates come back at their next prediction, once the profile is at hand:
        # a calibrated one needs its calibration.
        self._saved_estimates = {(v, c): d for v, c, d in data.get("estimates", [])}
        self.labelled_to = {(v, c): float(t) for v, c, t in data.get("labelled_to", [])}
        self._saved_drift = {(v, c): d for v, c, d in data.get("label_drift", [])}


def _update_bins(det: SkewDetector, values: list[Any], ts: np.ndarray) -> list[Signal]:
    bins = det.bins
    if bins.kind == "numeric":
        x = np.fromiter((float(v) if type(v) in (int, float, bool) else np.nan for v in values),
                        dtype=float, count=len(values))
        ok = np.isfinite(x)
        return det.update({"ts": ts[ok], "bin": bins.bin_numeric(x[ok])})
    return det.update({"ts": ts, "bin": bins.bin_categories([category_key(v) for v in values])})
