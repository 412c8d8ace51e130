"""Model quality from delayed labels, and an estimate of it while labels are missing.

- :class:`LabelJoin` keeps recent predictions by ``event_id`` until their label
  arrives (bounded in size, and in event time by a TTL), and counts labels that
  match nothing and predictions that expired unlabelled.
- :class:`PerformanceCheck` scores each labelled prediction with River's online
  metrics over tumbling windows of ``window`` labels and raises
  ``performance_degradation`` when a window is significantly worse than the
  version's reference (the profile's, or the version's first window's).
  Classification: accuracy (plus F1 for binary labels, and log loss when the
  prediction is a probability); regression: mean absolute error.
- :class:`ConfidenceEstimate` estimates accuracy without labels for a binary
  classifier that outputs probabilities (confidence-based performance
  estimation: a calibrated score ``p`` is right with probability ``max(p, 1-p)``)
  and raises an *estimated* ``performance_degradation`` when that estimate drops.

Significance uses the same false-alarm budget as the distribution checks:
``alpha = window / run_length`` per test, plus a minimum effect (``min_drop``)
so a huge window does not page for a tiny change.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
from river import metrics
from scipy import stats

from detectors.base import Signal, dedup_key

__all__ = ["LabelJoin", "PerformanceCheck", "ConfidenceEstimate", "task_of"]


def _as_binary(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    return None


def task_of(prediction: Any, label: Any) -> str:
    """``binary_proba``, ``classification`` or ``regression``, from one labelled pair.

    >>> task_of(0.83, 1), task_of("fraud", "ok"), task_of(12.5, 11.0)
    ('binary_proba', 'classification', 'regression')
    """
    is_num = isinstance(prediction, (int, float)) and not isinstance(prediction, bool)
    if is_num and 0 <= prediction <= 1 and _as_binary(label) is not None:
        return "binary_proba"
    if isinstance(label, (str, bool)) or isinstance(prediction, (str, bool)):
        return "classification"
    return "regression"


class LabelJoin:
    """Predictions waiting for their label, by ``event_id``.

    >>> j = LabelJoin(max_size=2, ttl_s=100)
    >>> j.add("a", 0.0, "v1", "stable", 0.9); j.add("b", 1.0, "v1", "stable", 0.2)
    >>> j.add("c", 2.0, "v1", "stable", 0.4)     # the oldest ("a") is dropped
    >>> j.match("a") is None, j.match("b")[3], j.stats()["dropped"]
    (True, 0.2, 1)
    """

    def __init__(self, max_size: int = 20_000, ttl_s: float = 3600.0) -> None:
        if max_size < 1 or ttl_s <= 0:
            raise ValueError("max_size must be >= 1 and ttl_s > 0")
        self.max_size, self.ttl_s = max_size, ttl_s
        self._waiting: OrderedDict[str, tuple[float, str, str, Any]] = OrderedDict()
        self._counts = {"matched": 0, "unmatched": 0, "expired": 0, "dropped": 0}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, event_id: str, ts: float, version: str, cohort: str, prediction: Any) -> None:
        self._waiting[event_id] = (ts, version, cohort, prediction)
        if len(self._waiting) > self.max_size:
            self._waiting.popitem(last=False)
            self._counts["dropped"] += 1

    def match(self, event_id: str) -> tuple[float, str, str, Any] | None:
        entry = self._waiting.pop(event_id, None)
        self._counts["matched" if entry is not None else "unmatched"] += 1
        return entry

    def expire(self, watermark: float) -> int:
        """Forget predictions older than the TTL (event time); return how many."""
        n = 0
        while self._waiting:
            key, (ts, *_) = next(iter(self._waiting.items()))
            if ts >= watermark - self.ttl_s:
                break
            del self._waiting[key]
            n += 1
        self._counts["expired"] += n
        return n

    def stats(self) -> dict[str, int]:
        return {**self._counts, "waiting": len(self._waiting)}

    def to_dict(self) -> dict[str, Any]:
        return {"waiting": [[k, *v] for k, v in self._waiting.items()],
                "counts": dict(self._counts)}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._waiting = OrderedDict((k, (ts, v, c, p)) for k, ts, v, c, p in data["waiting"])
        self._counts = {**self._counts, **data["counts"]}


class PerformanceCheck:
    """Windowed quality of one (model, version) from labelled predictions.

    Parameters
    ----------
    model, version, cohort
        The series.
    window
        Labelled predictions per test.
    run_length
        Labelled events between false alarms.
    min_drop
        Smallest worsening worth an alert: accuracy points for classification,
        relative MAE increase for regression.
    reference
        The version's reference metric (accuracy, or MAE); None: learn it from
        the first window.
    """

    def __init__(self, model: str, version: str, window: int = 500,
                 run_length: float = 60_480_000, min_drop: float = 0.02,
                 reference: float | None = None, cohort: str = "stable",
                 severity: str = "error") -> None:
        if window < 10 or run_length <= window:
            raise ValueError("need window >= 10 and run_length > window")
        self.model, self.version, self.cohort = model, version, cohort
        self.window, self.run_length, self.min_drop = window, run_length, min_drop
        self.severity = severity
        self.alpha = window / run_length
        self.reference = reference
        self.reference_source = "profile" if reference is not None else "first_window"
        self.task: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._accuracy = metrics.Accuracy()
        self._f1 = metrics.F1()
        self._logloss = metrics.LogLoss()
        self._mae = metrics.MAE()
        self._abs_err: list[float] = []

    def update(self, prediction: Any, label: Any, ts: float) -> Signal | None:
        if self.task is None:
            self.task = task_of(prediction, label)
        if self.task == "binary_proba":
            y = _as_binary(label)
            if y is None or not isinstance(prediction, (int, float)):
                return None
            p = min(max(float(prediction), 1e-15), 1 - 1e-15)
            self._accuracy.update(y, int(p >= 0.5))
            self._f1.update(bool(y), p >= 0.5)
            self._logloss.update(bool(y), p)
        elif self.task == "classification":
            self._accuracy.update(str(label), str(prediction))
        else:
            if not all(isinstance(v, (int, float)) for v in (prediction, label)):
                return None
            err = abs(float(prediction) - float(label))
            self._mae.update(float(label), float(prediction))
            self._abs_err.append(err)
        self._n += 1
        if self._n < self.window:
            return None
        signal = self._evaluate(ts)
        self._reset()
        return signal

    def _evaluate(self, ts: float) -> Signal | None:
        n = self._n
        if self.task == "regression":
            value = self._mae.get()
            if self.reference is None:
                self.reference = value
                return None
            errs = np.asarray(self._abs_err)
            se = float(errs.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
            z = (value - self.reference) / se if se > 0 else 0.0
            p = float(stats.norm.sf(z))
            worse = value > self.reference * (1 + self.min_drop)
            statistic, relation = "mae", ">"
        else:
            value = self._accuracy.get()
            if self.reference is None:
                self.reference = value
                return None
            correct = round(value * n)
            p = float(stats.binom.cdf(correct, n, min(max(self.reference, 1e-9), 1.0)))
            worse = value < self.reference - self.min_drop
            statistic, relation = "accuracy", "<"
        active = worse and p < self.alpha
        details: dict[str, Any] = {
            "statistic": statistic, "value": round(value, 5), "reference": round(self.reference, 5),
            "reference_source": self.reference_source, "p_value": p,
            "alpha_per_test": self.alpha, "min_drop": self.min_drop, "task": self.task,
            "cohort": self.cohort, "window": {"labels": n, "end_ts": ts}, "estimate": False,
        }
        if self.task == "binary_proba":
            details["f1"] = round(self._f1.get(), 5)
            details["log_loss"] = round(self._logloss.get(), 5)
        verdict = relation if active else "vs"
        return Signal(
            check="performance_degradation",
            key=dedup_key("performance_degradation", self.model, self.version, self.cohort,
                          statistic),
            active=active, severity=self.severity,
            summary=(f"{self.model} {self.version}: {statistic} {value:.3f} {verdict} "
                     f"reference {self.reference:.3f} over {n} labelled predictions"),
            timestamp=ts, model=self.model, version=self.version, details=details)

    def to_dict(self) -> dict[str, Any]:
        # Window progress is not kept: a restart loses at most one window of labels.
        return {"reference": self.reference, "source": self.reference_source,
                "task": self.task}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.reference, self.reference_source = data["reference"], data["source"]
        self.task = data["task"]


class ConfidenceEstimate:
    """Accuracy estimated from probabilities alone (no labels needed).

    For a calibrated binary classifier, a prediction ``p`` is right with
    probability ``max(p, 1 - p)``; the mean over a window estimates accuracy, and
    its standard error follows from those Bernoulli variances. The reference is
    the version's first window (the estimate is compared with itself, so a
    miscalibrated but stable model does not alert).
    """

    def __init__(self, model: str, version: str, window: int = 2000,
                 run_length: float = 60_480_000, min_drop: float = 0.02,
                 cohort: str = "stable", severity: str = "warning") -> None:
        if window < 10 or run_length <= window:
            raise ValueError("need window >= 10 and run_length > window")
        self.model, self.version, self.cohort = model, version, cohort
        self.window, self.min_drop, self.severity = window, min_drop, severity
        self.alpha = window / run_length
        self.reference: float | None = None
        self._sum = 0.0
        self._var = 0.0
        self._n = 0

    def update(self, probs: np.ndarray, ts: np.ndarray) -> list[Signal]:
        """Fold probabilities in (values outside [0, 1] must be filtered first)."""
        out: list[Signal] = []
        conf = np.maximum(probs, 1 - probs)
        pos = 0
        while pos < conf.size:
            take = min(self.window - self._n, conf.size - pos)
            part = conf[pos:pos + take]
            self._sum += float(part.sum())
            self._var += float((part * (1 - part)).sum())
            self._n += take
            pos += take
            if self._n == self.window:
                sig = self._evaluate(float(ts[pos - 1]))
                if sig is not None:
                    out.append(sig)
                self._sum = self._var = 0.0
                self._n = 0
        return out

    def _evaluate(self, ts: float) -> Signal | None:
        value = self._sum / self._n
        if self.reference is None:
            self.reference = value
            return None
        se = math.sqrt(self._var) / self._n
        p = float(stats.norm.cdf((value - self.reference) / se)) if se > 0 else 1.0
        active = value < self.reference - self.min_drop and p < self.alpha
        return Signal(
            check="performance_degradation",
            key=dedup_key("performance_degradation", self.model, self.version, self.cohort,
                          "estimated_accuracy"),
            active=active, severity=self.severity,
            summary=(f"{self.model} {self.version}: estimated accuracy {value:.3f} "
                     f"{'<' if active else 'vs'} {self.reference:.3f} (an estimate from "
                     f"prediction confidence; no labels)"),
            timestamp=ts, model=self.model, version=self.version,
            details={"statistic": "estimated_accuracy", "value": round(value, 5),
                     "reference": round(self.reference, 5), "p_value": p,
                     "estimate": True, "method": "confidence-based performance estimation",
                     "cohort": self.cohort, "window": {"events": self._n, "end_ts": ts}})

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "sum": self._sum, "var": self._var, "n": self._n}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.reference = data["reference"]
        self._sum, self._var, self._n = data["sum"], data["var"], data["n"]
