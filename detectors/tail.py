"""Tail calibration: a raw score's tail probability, learned from its own recent history.

Raw anomaly scores are not comparable across series (a residual of 3 noise
widths is rare on one series and routine on a heavy-tailed one), so a
detector that scores many series with one threshold needs each score's tail
probability ``P(S >= s)`` instead: the "anomaly likelihood". A
:class:`TailCalibrator` learns it online from the score's last ``history``
values, with a generalised Pareto tail that reaches far below what the
history alone can show. :class:`~detectors.anomaly.MetricAnomalyDetector`
keeps one per raw score; anything that turns scores into alarms can.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

__all__ = ["TailCalibrator"]

HISTORY = 2016          # scores kept (a week at 5 min)
REFIT_EVERY = 32        # scores between two fits of the tail
TAIL_SHARE = 0.05       # the tail model covers the top 5 % of the history
MIN_HISTORY = 100       # scores before the calibrator gives probabilities < 1
RUN_POINTS = 3          # exceedances closer than this are one cluster (declustering)
RECUR = 3               # a score reached by this many clusters of the history recurs
WINSOR = 0.005          # the top 0.5 % of a history is winsorised when fitting its tail


class TailCalibrator:
    """``P(S >= s)`` for one raw score ``S``, learned from the score's own recent history.

    The tail above the history's ``1 - tail_share`` quantile ``u`` is peaks over
    threshold with runs declustering (Coles, *An Introduction to Statistical
    Modeling of Extreme Values*, 2001, ch. 5): exceedances less than
    ``run`` points apart form one cluster, and only each cluster's maximum is
    kept. An anomaly (a dozen high scores in a row) then weighs as one
    exceedance, while a heavy-tailed noise (isolated high scores) keeps them
    all; and the probability is per cluster, which is what an alert policy with
    a cooldown turns into alerts. The cluster maxima's excesses over ``u`` are
    fitted a generalised Pareto distribution by probability-weighted moments
    (Hosking & Wallis, 1987), which lets a week of history speak about 1e-5;
    the shape is kept in [0, 0.5]: never a bounded tail (overconfident), never
    so heavy that the moments break down. Below ``u`` the probability is
    interpolated between empirical quantiles (for display only).

    The fitted tail is for extrapolating beyond what the history shows; where the
    history does show something, it is not contradicted: ``P(S >= s)`` is never
    below ``(k - recur + 1) / n`` when ``k`` of the history's ``n`` scores' clusters
    reached ``s``. One or two such clusters in a week may be anomalies themselves
    (and winsorising keeps them from inflating the fit: it caps at most those two),
    but a score reached three times or more is something the series does (and is
    fitted as it is, not capped): a recurring burst, a job's spike,
    a series that is exactly flat between spikes, where the winsorised fit (and a
    noise scale near zero) would call every repeat a 1e-5 event. This is the
    general form of "an alert needs something the series has not been doing",
    it costs a binary search per score, and it changes nothing on a series whose
    large scores do not recur. Winsorising only those two clusters (not every
    score above the history's 99.5th percentile) is what lets the fit see a heavy
    tail: on a week of |Student t| noise with 2 or 3 degrees of freedom the
    calibrated tail at the true 1e-3 and 1e-4 quantiles is within 4x of the truth
    (``tests/test_anomaly.py``), where capping every large score put it 3x to
    50,000x too low, a false alarm a day at a threshold meant for one a month.

    Parameters
    ----------
    history
        Scores kept (the most recent ones).
    refit_every
        Scores learned between two fits.
    tail_share
        Share of the history the tail model covers.
    min_history
        Scores learned before the first fit (until then every probability is 1).
    run
        Exceedances closer than this many scores are one cluster.
    winsor
        Share of the largest scores counted as "at least the ``1 - winsor``
        quantile" when fitting (they are often anomalies themselves), but
        never more than ``recur - 1`` clusters of them.
    recur
        Clusters reaching a score before it counts as recurring (see above).

    Examples
    --------
    >>> import numpy as np
    >>> cal = TailCalibrator()
    >>> for s in np.abs(np.random.default_rng(0).normal(size=2000)):
    ...     cal.learn(float(s))
    >>> 0.001 < cal.tail(3.0) < 0.01        # 2-sided normal: 0.0027
    True
    >>> cal.tail(10.0) < 1e-6
    True
    >>> round(cal.inverse(1e-4), 2)         # the score whose tail is 1e-4
    4.53

    A score that recurs is not rare, whatever the fit says: 12 bursts of 50 in a week
    of scores near 1 put its probability at (12 - 2) clusters in the 1,984 scores of
    the last fit, not the fit's extrapolation.

    >>> cal = TailCalibrator()
    >>> for i, s in enumerate(np.abs(np.random.default_rng(1).normal(size=2000))):
    ...     cal.learn(50.0 if i % 160 == 80 else float(s))
    >>> round(cal.tail(50.0), 5)
    0.00504
    """

    LEVELS = (0.0, 0.5, 0.75, 0.9)

    def __init__(self, history: int = HISTORY, refit_every: int = REFIT_EVERY,
                 tail_share: float = TAIL_SHARE, min_history: int = MIN_HISTORY,
                 run: int = RUN_POINTS, winsor: float = WINSOR, recur: int = RECUR) -> None:
        if not (10 <= min_history <= history):
            raise ValueError("need 10 <= min_history <= history")
        if not (refit_every >= 1 and run >= 1 and recur >= 1):
            raise ValueError("refit_every, run and recur must be >= 1")
        if not (0 < tail_share < 0.5 and 0 <= winsor < tail_share):
            raise ValueError("need 0 < tail_share < 0.5 and 0 <= winsor < tail_share")
        self.history = history
        self.refit_every = refit_every
        self.tail_share = tail_share
        self.min_history = min_history
        self.run = run
        self.winsor = winsor
        self.recur = recur
        self._buf = np.zeros(history)
        self._n = 0          # scores learned (the ring's write position is _n % history)
        self._since: int | None = None   # scores learned since forget()
        self._fresh = 0
        self._fit: list[float] | None = None  # quantiles at LEVELS, u, share, xi, sigma
        self._peaks: list[float] = []    # the last fit's cluster maxima above u, ascending
        self._size = 0                   # and the size of its history

    def tail(self, s: float) -> float:
        """``P(S >= s)``: from the tail model above ``u``, interpolated below it."""
        fit = self._fit
        if fit is None:
            return 1.0
        qs, (u, share, xi, sigma) = fit[:-4], fit[-4:]
        if s > u:
            y = (s - u) / sigma
            surv = math.exp(-y) if xi < 1e-6 else (1.0 + xi * y) ** (-1.0 / xi)
            # never below the share of the history's clusters that reached s (less the
            # first recur - 1 of them, which may be anomalies themselves)
            k = len(self._peaks) - bisect.bisect_left(self._peaks, s) - self.recur + 1
            return max(share * surv, k / self._size) if k > 0 else share * surv
        levels = (*self.LEVELS, 1.0 - share)
        pts = (*qs, u)
        if s <= pts[0]:
            return 1.0
        for i in range(1, len(pts)):
            if s <= pts[i]:
                lo, hi = pts[i - 1], pts[i]
                f = levels[i - 1] + (levels[i] - levels[i - 1]) * ((s - lo) / (hi - lo)
                                                                   if hi > lo else 1.0)
                return 1.0 - f
        return share

    def inverse(self, p: float) -> float:
        """The score whose tail probability is ``p`` (for ``p`` in the tail)."""
        if self._fit is None:
            return math.inf
        u, share, xi, sigma = self._fit[-4:]
        r = min(p, share) / share
        y = -math.log(r) if xi < 1e-6 else (r ** (-xi) - 1.0) / xi
        return u + sigma * y

    def forget(self, fresh: int) -> None:
        """Fit on the scores learned from now on, once there are ``fresh`` of them."""
        self._since, self._fresh = 0, fresh

    def learn(self, s: float) -> None:
        """Remember ``s``; refit the tail every ``refit_every`` scores."""
        self._buf[self._n % self.history] = round(min(s, 1e9), 3)
        self._n += 1
        if self._since is not None:
            self._since += 1
        if self._n >= self.min_history and (self._n == self.min_history or
                                             self._n % self.refit_every == 0):
            self._refit()

    def _recent(self) -> np.ndarray:
        """The scores the fit uses, oldest first."""
        k = min(self._n, self.history)
        if self._since is not None and self._since >= self._fresh:
            k = min(self._since, k)
        return self._buf[np.arange(self._n - k, self._n) % self.history]

    def _refit(self) -> None:
        h = self._recent()
        qs = np.quantile(h, (*self.LEVELS, 1.0 - self.tail_share, 1.0 - self.winsor))
        u, top = float(qs[-2]), float(qs[-1])
        qs = qs[:-1]
        idx = np.flatnonzero(h > u)
        if idx.size == 0:
            self._peaks, self._size = [], h.size
            self._fit = [*(float(q) for q in qs[:-1]), u, 1.0 / h.size, 0.0, 1e-3]
            return
        starts = np.flatnonzero(np.diff(idx, prepend=-self.run - 1) > self.run)
        # winsorised: the few largest (often anomalies themselves) count as "at least top",
        # but never more than recur - 1 clusters: a score that recur clusters reached is
        # something the series does, and capping it would hide how heavy its tail is
        peaks = np.sort(np.maximum.reduceat(h[idx], starts))
        top = max(top, float(peaks[-min(self.recur, peaks.size)]))
        self._peaks, self._size = peaks.tolist(), h.size
        y = np.minimum(peaks, top) - u
        n = y.size
        if n >= 10:
            a0 = float(y.mean())
            a1 = float(np.mean(y * (1.0 - (np.arange(1, n + 1) - 0.35) / n)))
            xi = 2.0 - a0 / (a0 - 2.0 * a1) if a0 > 2.0 * a1 else 0.5
            xi = min(max(xi, 0.0), 0.5)
            sigma = a0 * (1.0 - xi)   # the mean excess of a GPD is sigma / (1 - xi)
        else:
            xi, sigma = 0.0, float(y.mean())
        self._fit = [*(float(q) for q in qs[:-1]), u, n / h.size, xi, max(sigma, 1e-3)]

    def to_dict(self) -> dict[str, Any]:
        k = min(self._n, self.history)
        return {"n": self._n, "since": self._since, "fresh": self._fresh, "fit": self._fit,
                "peaks": self._peaks, "size": self._size,
                "history": self._buf[np.arange(self._n - k, self._n) % self.history]
                .tolist()}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._n, self._since, self._fresh = int(data["n"]), data["since"], int(data["fresh"])
        hist = np.asarray(data["history"], dtype=float)
        self._buf = np.zeros(self.history)
        self._buf[np.arange(self._n - hist.size, self._n) % self.history] = hist
        self._fit = None if data["fit"] is None else [float(v) for v in data["fit"]]
        # a checkpoint from before the recurrence floor has no peaks: none until the next fit
        self._peaks = [float(v) for v in data.get("peaks", ())]
        self._size = int(data.get("size", 0))
