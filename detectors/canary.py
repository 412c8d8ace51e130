"""Canary analysis: one event-time window of the canary version against the stable one.

The verdict of a window is ``pass``, ``fail`` or ``inconclusive``; too little
traffic on either side is inconclusive, never a pass. A window fails when any
of these holds (each one says why, with its evidence):

- **error rate**: a one-sided exact test (Fisher's, :func:`two_proportion_p`) says
  the canary's error rate is higher than the stable one's at ``error_alpha``, *and*
  the difference is at least ``error_min_diff`` (a clear effect-size floor: with
  enough traffic, a 0.01-point difference is "significant" and irrelevant);
- **latency**: the canary's p95 or p99 is more than ``latency_ratio`` times the
  stable one's; a quantile is compared only when the canary has at least
  ``MIN_TAIL`` requests above it (p95: 200 requests, p99: 1,000), since the p99
  of 300 requests is little more than their maximum;
- **predictions**: a chi-square test of homogeneity says the two cohorts'
  prediction histograms (on the stable version's profile bins) differ at
  ``prediction_alpha``, *and* their Jensen-Shannon distance exceeds
  ``prediction_js`` (the effect floor; on small samples the distance alone is
  biased upwards: 50 canary requests on 10 bins give about 0.18 by chance);
- **alerts**: a drift, skew, quality or performance alert is firing on the
  canary version.

:class:`PredictionHistograms` accumulates the two cohorts' prediction
histograms per open window, as the micro-batches come; the window's verdict
reads them when it closes. The rollout policy (:mod:`alerting.rollout`) turns
verdicts into commands; the ``canary_regression`` signal of a rollback is
shaped here (:func:`regression_signal`), like every other detector's signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from detectors.base import Signal
from detectors.contract import Severity, dedup_key
from detectors.distance import js_distance, normalise
from detectors.windows import WindowStats

__all__ = ["CanaryAnalysis", "Verdict", "PredictionHistograms", "regression_signal",
           "cleared_signal", "two_proportion_p", "MIN_TAIL", "HIST_KEPT"]

MIN_TAIL = 10  # canary requests above a latency quantile before it is compared
HIST_KEPT = 16  # open windows whose prediction histograms are kept


@dataclass(frozen=True)
class Verdict:
    outcome: str                        # "pass", "fail" or "inconclusive"
    reasons: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)


def two_proportion_p(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float:
    """One-sided p-value that rate a is higher than rate b: Fisher's exact test (the
    errors of a among all errors, hypergeometric given the totals).

    Exact, so valid with few errors, where the pooled z-test's normal approximation
    is not: one error in 30 canary requests against 0.2 % on 570 stable ones gave
    z-test p = 0.0035 and failed a healthy canary's window (about 4 % of such windows
    failed at ``error_alpha`` 1 %); exactly, p = 0.11 (and 0.1 % of windows fail).
    With thousands of requests the two agree.

    >>> two_proportion_p(40, 1000, 4, 1000) < 1e-8
    True
    >>> round(two_proportion_p(1, 30, 1, 500), 2)
    0.11
    >>> two_proportion_p(0, 1000, 0, 1000)
    1.0
    """
    errors = errors_a + errors_b
    if errors_a <= 0:
        return 1.0
    return hypergeom_sf(errors_a, n_a + n_b, errors, n_a)


def hypergeom_sf(k: int, total: int, marked: int, drawn: int) -> float:
    """P(X >= k) for X hypergeometric: ``drawn`` taken from ``total`` of which
    ``marked`` are marked (``scipy.stats.hypergeom.sf(k - 1, total, marked, drawn)``).

    The tail's terms summed in log space (``gammaln``, ``logsumexp``), so tails far
    below the smallest double's reach stay exact to about 1e-8 relative with
    millions of requests; ``scipy.special`` rather than ``scipy.stats``, which the
    worker does not load (:mod:`detectors._river`).

    >>> round(hypergeom_sf(1, 10, 5, 5), 6)  # 1 - C(5,5)/C(10,5)
    0.996032
    >>> hypergeom_sf(6, 10, 5, 5)
    0.0
    """
    top = min(marked, drawn)
    k = max(k, 0, drawn - (total - marked))
    if k > top:
        return 0.0
    i = np.arange(k, top + 1, dtype=float)
    log_terms = (_log_choose(marked, i) + _log_choose(total - marked, drawn - i)
                 - _log_choose(total, drawn))
    return float(min(1.0, math.exp(special.logsumexp(log_terms))))


def _log_choose(n: float, k: np.ndarray | float) -> np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def homogeneity_p(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of a chi-square test that two histograms come from one distribution.

    >>> homogeneity_p(np.array([50, 50]), np.array([50, 50]))
    1.0
    >>> homogeneity_p(np.array([90, 10]), np.array([10, 90])) < 1e-6
    True
    """
    table = np.vstack([a, b]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or not table.sum(axis=1).all():  # one bin, or an empty side
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return float(special.chdtrc(table.shape[1] - 1, statistic))  # chi2 upper tail


class CanaryAnalysis:
    """Judges one window of canary against stable.

    Parameters
    ----------
    min_requests
        Requests each cohort needs in the window for a verdict.
    error_alpha
        Significance of the error-rate test.
    error_min_diff
        Smallest error-rate difference (absolute) that can fail a canary.
    latency_ratio
        Largest tolerated canary/stable ratio of p95 and p99.
    prediction_js
        Largest tolerated JS distance between the cohorts' prediction histograms.
    prediction_alpha
        Significance of the chi-square test on the prediction histograms.
    """

    def __init__(self, min_requests: int = 200, error_alpha: float = 0.01,
                 error_min_diff: float = 0.01, latency_ratio: float = 1.5,
                 prediction_js: float = 0.1, prediction_alpha: float = 0.001) -> None:
        if min_requests < 1 or not 0 < error_alpha < 1 or latency_ratio <= 1:
            raise ValueError("need min_requests >= 1, 0 < error_alpha < 1, latency_ratio > 1")
        self.min_requests = min_requests
        self.error_alpha = error_alpha
        self.error_min_diff = error_min_diff
        self.latency_ratio = latency_ratio
        self.prediction_js = prediction_js
        self.prediction_alpha = prediction_alpha

    def judge(self, stable: WindowStats, canary: WindowStats,
              canary_alerts: tuple[str, ...] = (),
              predictions: tuple[np.ndarray, np.ndarray] | None = None) -> Verdict:
        """The verdict of one window (``predictions``: stable and canary histograms)."""
        evidence: dict[str, Any] = {
            "window": {"start": canary.start, "end": canary.end},
            "requests": {"stable": stable.count, "canary": canary.count},
        }
        if min(stable.count, canary.count) < self.min_requests:
            return Verdict("inconclusive", (f"too little traffic: canary {canary.count}, "
                                            f"stable {stable.count} requests (need "
                                            f"{self.min_requests} each)",), evidence)
        reasons = []
        p = two_proportion_p(canary.errors, canary.count, stable.errors, stable.count)
        diff = canary.error_rate - stable.error_rate
        evidence["error_rate"] = {"stable": round(stable.error_rate, 5),
                                  "canary": round(canary.error_rate, 5), "p_value": p,
                                  "min_diff": self.error_min_diff}
        if p < self.error_alpha and diff >= self.error_min_diff:
            reasons.append(f"canary {canary.version} error rate {canary.error_rate:.1%} vs "
                           f"stable {stable.error_rate:.1%} over {canary.count:,} requests")
        for q, share in (("p95", 0.05), ("p99", 0.01)):
            if canary.count * share < MIN_TAIL:
                continue
            s_val, c_val = getattr(stable, q), getattr(canary, q)
            ratio = c_val / s_val if s_val > 0 else math.inf
            evidence[f"latency_{q}"] = {"stable": round(s_val, 3), "canary": round(c_val, 3),
                                        "ratio": round(ratio, 3)}
            if ratio > self.latency_ratio:
                reasons.append(f"canary {q} latency {c_val:.0f} ms is {ratio:.1f}x stable's")
        if predictions is not None and predictions[0].sum() > 0 and predictions[1].sum() > 0:
            js = js_distance(normalise(predictions[1]), normalise(predictions[0]))
            p_pred = homogeneity_p(predictions[0], predictions[1])
            evidence["predictions"] = {"jensen_shannon": round(js, 4), "p_value": p_pred,
                                       "threshold": self.prediction_js}
            if js > self.prediction_js and p_pred < self.prediction_alpha:
                reasons.append(f"canary predictions diverge from stable's (JS {js:.2f})")
        if canary_alerts:
            evidence["firing_alerts"] = list(canary_alerts)
            reasons.append(f"{len(canary_alerts)} alert(s) firing on the canary: "
                           f"{', '.join(canary_alerts[:3])}")
        return Verdict("fail" if reasons else "pass", tuple(reasons), evidence)


class PredictionHistograms:
    """The stable and canary cohorts' prediction histograms, per open event-time window.

    Bounded: the histograms of at most ``HIST_KEPT`` windows (the latest);
    windows that never close are dropped first.

    >>> h = PredictionHistograms()
    >>> h.add("stable", np.array([0.0, 0.0, 60.0]), np.array([0, 1, 1]), 3)
    >>> h.add("canary", np.array([0.0]), np.array([2]), 3)
    >>> [c.tolist() for c in h.pop(0.0)], h.pop(60.0)
    ([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], None)
    """

    def __init__(self) -> None:
        self._hist: dict[float, dict[str, np.ndarray]] = {}  # window start -> cohort -> counts

    def add(self, cohort: str, starts: np.ndarray, bins: np.ndarray, size: int) -> None:
        """Count one cohort's binned predictions into their windows' histograms."""
        for start in np.unique(starts):
            counts = np.bincount(bins[starts == start], minlength=size).astype(float)
            per = self._hist.setdefault(float(start), {})
            prev = per.get(cohort)
            per[cohort] = counts if prev is None or prev.size != size else prev + counts
        while len(self._hist) > HIST_KEPT:
            del self._hist[min(self._hist)]

    def pop(self, start: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The (stable, canary) histograms of the window starting at ``start``, taken out;
        None unless both cohorts have some."""
        per = self._hist.pop(start, {})
        return (per["stable"], per["canary"]) if len(per) == 2 else None

    def drop_before(self, start: float) -> None:
        """Forget windows older than ``start`` (closed without a verdict)."""
        for s in [s for s in self._hist if s < start]:
            del self._hist[s]

    def to_dict(self) -> dict[str, Any]:
        return {str(s): {c: h.tolist() for c, h in per.items()} for s, per in self._hist.items()}

    def load_dict(self, data: dict[str, Any]) -> None:
        kept = sorted(((float(s), per) for s, per in data.items()), key=lambda sp: sp[0])
        self._hist = {s: {c: np.asarray(h, dtype=float) for c, h in per.items()}
                      for s, per in kept[-HIST_KEPT:]}


def regression_signal(model: str, canary: str, stable: str, command: dict[str, Any],
                      traffic_percent: int, severity: Severity, timestamp: float) -> Signal:
    """``canary_regression``, active: the rollout policy rolled ``canary`` back (or paused it)
    with ``command``; its evidence is the failing window's."""
    return Signal(
        "canary_regression", dedup_key("canary_regression", model, canary), True, severity,
        f"{model}: canary {canary} regressed against stable {stable}: {command['reason']}; "
        f"{command['action']} sent", timestamp, model, canary,
        {"statistic": "canary_analysis", "command_id": command["command_id"],
         "action": command["action"], "traffic_percent": traffic_percent,
         **command.get("evidence", {})})


def cleared_signal(model: str, canary: str, reason: str, severity: Severity,
                   timestamp: float) -> Signal:
    """``canary_regression``, inactive: the controller says the canary is gone."""
    return Signal("canary_regression", dedup_key("canary_regression", model, canary), False,
                  severity, f"{model}: {reason}", timestamp, model, canary, {"reason": reason})
