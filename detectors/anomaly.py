"""Metric anomalies: one online detector per ``ml.metrics`` series, no tuning per series.

Every (source, metric) series gets a :class:`MetricAnomalyDetector`, fed its
points in time order. Per point, in this order:

1. **Scale.** After the first ``DECIDE_POINTS`` (288, a day at 5 min) the
   detector reads Tukey's spread-versus-level slope of its residuals (log
   |residual| on log level) and picks a variance-stabilising transform:
   ``log`` when the noise grows like the level (latency, bytes), ``sqrt`` when it
   grows like its square root (counts), none otherwise (the slope must exceed
   0.25 by two standard errors); the buffered day is then replayed in that
   scale. Everything below runs on the transformed values ``y``.
2. **Season.** The sampling interval is the median of the first 32 gaps; the
   season (``season_s``, a day) is cut into at most 288 time-of-day bins centred
   on the sampling times. Per bin, each day's mean minus that day's mean (a
   centred level, which a trailing average is not) is kept for the last 5 days;
   the profile is their median (one odd day does not move it), smoothed by a
   3-bin median (sharp edges such as a nightly job stay sharp). It is
   subtracted with a James-Stein weight ``w = 1 - noise / variance`` of the
   profile, the noise being how much a bin's days scatter: a wandering level
   gets ``w`` near 0, a daily cycle or a nightly job near 1. ``d = y - w S[bin]``.
3. **Three raw scores**, from River rolling quantiles
   (:class:`river.stats.RollingQuantile`, kept as small windows so that a
   checkpoint rebuilds them exactly):

   - ``point``: ``|d - median(last 5 d)| / noise``: spikes, dips and the first
     points of a shift. The median ignores a spike and adopts a new level
     after 3 points, so a shift is re-learned at once. The noise scale is an
     exponentially weighted mean absolute residual (a day's time constant,
     updates clipped at 4 scales), additive or, in the untransformed scale,
     proportional to a power of the level when that is likelier; never below
     0.25 of the unclipped mean absolute residual (``NOISE_FLOOR``). On any
     noisy series the floor is far below the clipped scale and changes
     nothing; on a series that is exactly flat between spikes (most residuals
     0) the clipped scale decays towards 0 and every repeat of the same spike
     would score higher than the last, forever new to its calibrator;
   - ``shift``: ``|median(last 6 d) - median(the 72 before)|`` over the larger of
     the reference's interquartile spread and the noise: level shifts and
     changes too slow for ``point``. When it alerts, the reference is reset to
     the recent points: the detector re-adapts instead of alerting for hours;
   - ``volatility``: the mean of ``min(|z|, 4)`` over the last 12 points: noise
     growing (erratic behaviour before a failure).
4. **Calibration** (:class:`~detectors.tail.TailCalibrator`, the "anomaly likelihood"): raw
   scores are not comparable across series, so each score's tail probability
   is learned from its own last week (2016 scores): a generalised Pareto tail
   over its 95th percentile, fitted to declustered exceedances, refitted every
   32 points, and never below the share of the week's clusters that reached
   the score, less two: a score the series has reached three times in a week
   recurs, only the first two may be anomalies, and only those two are
   winsorised in the fit (capping more hid how heavy a bursty series' tail
   is, and made each of its ordinary bursts a 1e-5 event). The combined
   probability is ``1 - min(1, 3 min p)`` (Bonferroni over the three scores),
   and a point is anomalous when it reaches ``threshold`` (and is not gated,
   step 5). When the seasonal profile first comes into use the calibrators start
   over, as soon as they have a season of new scores.
5. **Records** (:class:`_Record`): calibrated scores rank a bursty series' bursts
   poorly (on counts of mentions every burst is "rare" for a week of history, the
   large ones no more than the small ones), so a second, plainer question is
   asked of every point: how far is it from the last week's median, in the
   week's interquartile ranges (``r``, on ``y``; the median and quartiles are
   read every 36 points from every other value of the week), and is that the
   furthest in two weeks? The record is the largest ``r`` of the last 14
   blocks of 288 points plus the running block; a point is a **record
   anomaly** when its ``r`` beats it by ``1 + 0.5 / days`` (``days`` of record
   so far): day ``k``'s maximum of pure noise is a record with probability
   ``1/k``, so a young record must be beaten by more (1.25 times after two days,
   1.04 after two weeks). The same distance also **gates** point and shift
   alerts on series the seasonal profile does not explain (weight ``w`` below
   0.8): a point whose ``r`` is under 0.35 of the median daily maximum of ``r``
   (the distance the series reaches on an ordinary day) is not anomalous, it
   is well inside what the series does every day. Seasonal series are not
   gated: there a value can be ordinary for the week and anomalous for its
   time of day (a missing daily peak).

   The same question is asked at a second time scale, of the **level**: the
   mean of the last 12 ``y`` (an hour at 5 min), against the last week of such
   means (every 6th kept): a **level record** is an hour further from the
   week's usual level than any hour in two weeks, by the same margin. A
   sustained surge or collapse (a traffic surge, latency degraded for an hour)
   is a record at this scale when none of its points is one (a single spike of
   the week is taller than any of them) and when the shift score, normalised
   by a noise that the surge itself inflates, stays within what the week's
   bursts reached. Scores at several time scales are the common ground of the
   detectors that do well on real series (windowed Gaussian, contextual and
   ART detectors all look at windows, not only points).
6. **Signals**: none during ``warmup_points``; then one per point, active
   when the point is anomalous. Turning them into alerts is the alert
   manager's, as for every detector: its ``metric_anomaly`` class rule
   (``alerts.per_class.metric_anomaly``, :class:`alerting.manager.ClassRule`)
   opens an alert on an anomalous point, keeps it open while anomalous points
   come back within ``keep_firing_for_s`` (each re-affirms it), resolves it at
   the first normal point ``keep_firing_for_s`` after the last anomalous one,
   and opens at most one alert per ``cooldown_s``.

Why the defaults: ``threshold`` 0.9999 is one false alert per 10,000 points if
the calibration held exactly, about one a month at 5 min (the calibration is
only as good as a week of history, so expect several times more: ``bench/
anomaly_quality.py`` measures about 0.05 a day). ``warmup_points`` 576 is two
days at 5 min: the seasonal profile is weighed from its second day on, and
the tail fits need a few hundred scores. The manager's rule: ``cooldown_s``
one hour: one incident, one page; ``keep_firing_for_s`` 30 min: a series back
to normal for half an hour (six points at 5 min) is over it; shorter makes an
alert flap on an excursion that dips back into range for a point or two.

Why the record's constants: a week is the reference so that a weekly rhythm
is in it; two weeks of record, so that a burst is compared with the bursts of
at least one of each weekday; ``RECORD_MARGIN`` 0.5 and ``ORDINARY`` 0.35 were
chosen once on the development set (the NAB files of ``/work/shared/
anomaly-dev`` and ``bench/anomaly_quality.py``'s synthetic set, no per-series
tuning): a smaller margin gains a few NAB points for synthetic precision, a
larger gate loses synthetic recall on cpu and latency series. The level record
takes the point record's constants unchanged (an hour is the alert manager's
resolution: its cooldown); only its window was chosen, from 6, 12, 24 and 36
points (6 and 12 alike, longer ones later and weaker).

Cost: about 40 µs per point in CPython (most in the River windows and the
per-point bookkeeping; tail refits and the week's quartiles are amortised;
each record adds about 2 µs, and the seasonal bins' medians of five values,
taken in plain Python rather than with ``np.median``, save about 13), O(1)
per point, memory and checkpoint bounded: about 6,000 scores of calibration
history, 288 x 5 seasonal values, 1,008 values of the week (6 significant
digits) and 14 block maxima, 336 values of the week's hourly levels and their
14 block maxima, up to 3 x 100 cluster maxima of the tail fits, about 95 KB of
JSON per series (the records add about 11 KB). Deterministic: nothing is random,
the detector is a function of its input. No pickle: the River windows are
rebuilt from their values, which the checkpoint holds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from river import stats

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key
from detectors.tail import TailCalibrator

__all__ = ["MetricAnomalyDetector"]

MAX_BINS = 288          # time-of-day bins per season at most (5 min bins for a day)
DT_SAMPLES = 32         # sampling intervals looked at before the interval is fixed
FAST_POINTS = 5         # rolling median: the local level a point is compared with
SHORT_POINTS = 6        # rolling median: the recent level a shift is judged on
REF_POINTS = 72         # rolling quantiles: the reference the recent level is compared with
VOL_POINTS = 12         # mean |z| over these: volatility
SCALE_POINTS = 288      # EW time constant of the residual scale
DAY_COVERAGE = 0.8      # a day counts in the seasonal profile if 80 % of its points came
SEASON_DAYS = 5         # the seasonal profile: median of the last 5 days, per bin
NOISE_POWERS = (0.0, 0.5, 1.0)  # noise ~ level ** power: additive, Poisson-like, multiplicative
LL_CAP = 20.0           # a point's contribution to the noise models' likelihoods is capped
CLIP = 4.0              # updates of means and scales are clipped at CLIP scales (robust)
Z_CAP = 4.0             # |z| clipped at this in the volatility score
REFIT_EVERY = 32        # points between two weighings of the seasonal profile
START_POINTS = 24       # scores are not learned before the scale has settled
FRESH = 288             # scores a calibrator waits for after the profile comes into use
SCORES = ("point", "shift", "volatility")
MIN_BINS = 4            # fewer points per season than this: no seasonal profile
IQR_SD = 1.349          # interquartile range of a normal, in standard deviations
DECIDE_POINTS = 288     # points seen before the transform is chosen (a day at 5 min)
DECIDE_MARGIN = 0.25    # spread-vs-level slope must be above this by 2 standard errors
SQRT_PI_2 = math.sqrt(math.pi / 2)
WEEK_POINTS = 2016      # the record's reference: the last week (at 5 min) ...
WEEK_STRIDE = 2         # ... of which every other value is kept (1,008: a small checkpoint)
WEEK_EVERY = 36         # points between two readings of the week's median and quartiles
WEEK_MIN = 100          # values before the week's median is read
RECORD_BLOCK = 288      # points per block maximum of the record distance (a day at 5 min)
RECORD_BLOCKS = 14      # the record: the largest distance of the last 14 blocks (two weeks)
RECORD_MARGIN = 0.5     # a record must beat the old one by (1 + 0.5 / days of record)
ORDINARY = 0.35         # point and shift alerts need a distance >= 0.35 x the median block max
ORDINARY_W = 0.8        # ... unless the seasonal profile explains the series (weight >= 0.8)
LEVEL_POINTS = 12       # the level record: the mean of the last 12 y (an hour at 5 min) ...
LEVEL_STRIDE = 6        # ... of which every 6th is kept for the week's quartiles (336 values)
NOISE_FLOOR = 0.25      # the noise scale is at least 0.25 x the mean absolute residual


class _Rolling:
    """River rolling quantiles over one window, rebuilt exactly from the window's values."""

    def __init__(self, size: int, qs: tuple[float, ...]) -> None:
        self.size, self.qs = size, qs
        self.values: deque[float] = deque(maxlen=size)
        self._stats = [stats.RollingQuantile(q, size) for q in qs]

    def update(self, x: float) -> None:
        self.values.append(x)
        for s in self._stats:
            s.update(x)

    def get(self, i: int = 0) -> float:
        v = self._stats[i].get()
        return math.nan if v is None else float(v)

    def __len__(self) -> int:
        return len(self.values)

    def reset(self, values: list[float]) -> None:
        """Forget, then learn ``values`` (oldest first)."""
        self.values = deque(maxlen=self.size)
        self._stats = [stats.RollingQuantile(q, self.size) for q in self.qs]
        for x in values:
            self.update(float(x))


class _Record:
    """The record question of one signal: is a value's distance from the last week's
    median, in the week's interquartile ranges, the largest in two weeks?

    The week is a ring of every ``stride``-th value; its median and quartiles are read
    every ``WEEK_EVERY`` values (nearest ranks: a partition, not a sort). The record is
    the largest distance of the last ``RECORD_BLOCKS`` blocks of ``RECORD_BLOCK``
    values plus the running block; it must be beaten by ``1 + RECORD_MARGIN / days``
    (``days`` of record so far): day ``k``'s maximum of pure noise is a record with
    probability ``1/k``, so a young record must be beaten by more. The checkpoint keys
    are the ones the point record always had (``week``, ``week_n``, ``rec_blocks``, ...).
    """

    def __init__(self, stride: int) -> None:
        self.stride = stride
        self.week = np.zeros(WEEK_POINTS // stride)  # ring: the last week (sampled)
        self.week_n = 0                      # values kept so far
        self.week_t = 0                      # values seen so far
        self.week_q: list[float] = []        # the week's quartiles (none read yet: [])
        self.blocks: deque[float] = deque(maxlen=RECORD_BLOCKS)  # block maxima
        self.cur = 0.0                       # the running block's maximum
        self.old = 0.0                       # the largest of blocks
        self.med = 0.0                       # their median: the distance a day usually reaches
        self.pts = 0                         # values since the first distance

    def step(self, y: float) -> tuple[float, float, bool, tuple[float, float, float]]:
        """(distance, record, beaten, the week's quartiles) of ``y``; then learn it."""
        size = self.week.size
        if self.week_t % WEEK_EVERY == 0 and self.week_t >= WEEK_MIN:
            k = min(self.week_n, size)
            ranks = (k // 4, k // 2, (3 * k) // 4)   # nearest ranks: a partition, not a sort
            q25, q50, q75 = np.partition(self.week[:k], ranks)[list(ranks)].tolist()
            self.week_q = [q25, q50, q75]
        if self.week_t % self.stride == 0:
            self.week[self.week_n % size] = float(f"{y:.6g}")   # 6 digits: a small checkpoint
            self.week_n += 1
        self.week_t += 1
        if not self.week_q:
            return 0.0, 0.0, False, (0.0, 0.0, 0.0)
        q25, med, q75 = self.week_q
        r = abs(y - med) / max(q75 - q25, 1e-9 * max(1.0, abs(med)))
        if self.pts == 0 and r <= 0:
            return r, 0.0, False, (q25, med, q75)
        best = max(self.cur, self.old)
        days = self.pts / RECORD_BLOCK
        beaten = best > 0 and r > best * (1.0 + RECORD_MARGIN / max(days, 0.1))
        self.pts += 1
        self.cur = max(self.cur, r)
        if self.pts % RECORD_BLOCK == 0:
            self.blocks.append(self.cur)
            self.cur, self.old = 0.0, max(self.blocks)
            self.med = float(np.median(self.blocks))
        return r, best, beaten, (q25, med, q75)

    def to_dict(self) -> dict[str, Any]:
        kw = min(self.week_n, self.week.size)
        return {"week_n": self.week_n, "week_t": self.week_t, "week_q": self.week_q,
                "rec_cur": self.cur, "rec_pts": self.pts, "rec_blocks": list(self.blocks),
                "week": self.week[np.arange(self.week_n - kw, self.week_n) % self.week.size]
                .tolist()}

    def load_dict(self, data: dict[str, Any]) -> None:
        """Resume; what ``data`` lacks (a checkpoint from before this record) starts afresh."""
        self.week_n, self.week_t = int(data.get("week_n", 0)), int(data.get("week_t", 0))
        self.week_q = list(data.get("week_q", []))
        self.cur, self.pts = float(data.get("rec_cur", 0.0)), int(data.get("rec_pts", 0))
        self.blocks = deque(data.get("rec_blocks", ()), maxlen=RECORD_BLOCKS)
        self.old = max(self.blocks, default=0.0)
        self.med = float(np.median(self.blocks)) if self.blocks else 0.0
        week = np.asarray(data.get("week", ()), dtype=float)
        self.week = np.zeros(WEEK_POINTS // self.stride)
        self.week[np.arange(self.week_n - week.size, self.week_n) % self.week.size] = week


class _Model:
    """The analysis state of one series, in one (transformed) space: the seasonal profile,
    the rolling levels, the noise model, the raw scores and their calibrators."""

    def __init__(self, season_s: float, p_alert: float,
                 powers: tuple[float, ...] = NOISE_POWERS) -> None:
        self.season_s = season_s
        self.p_alert = p_alert               # per score
        self.powers = powers
        self.cal = {k: TailCalibrator() for k in SCORES}
        self.n = 0
        self.last_ts: float | None = None
        self.gaps: list[float] = []
        self.bins = 0                        # 0: not known yet, or no seasonality
        self.phase = 0.0                     # bins start this far past the season's start
        self.season: list[float] = []        # per bin: median of the last SEASON_DAYS days
        self.ring: list[list[float]] = []    # per bin: the last SEASON_DAYS daily means
        self.filled: list[int] = []          # per bin: daily means pushed so far
        self.day_of: list[int] = []          # per bin: the day being accumulated
        self.acc: list[float] = []           # per bin: sum of y that day
        self.acc_n: list[int] = []
        self.w = 0.0                         # weight of the seasonal profile, 0..1
        self.seasonal_once = False           # the profile has been in use
        self.day = -1                        # the day being summed, its sum and count
        self.day_sum, self.day_n = 0.0, 0
        self.day_means: dict[str, float] = {}  # the last days' means (str keys: JSON)
        self.per_day = 0.0                   # points expected per day
        # noise models |e| ~ c * |f| ** power: EW of c, EW log-likelihood; the likeliest
        self.c = [0.0] * len(powers)
        self.ll = [0.0] * len(powers)
        self.noise_model = 0
        self.mae = 0.0                       # EW mean absolute residual (unclipped): a floor
        self.svl = [0.0] * 6                 # spread vs level: n, sums of u, v, uu, uv, vv
        self.spread_open = True              # svl is summed until the transform is chosen
        self.fast = _Rolling(FAST_POINTS, (0.5,))
        self.short = _Rolling(SHORT_POINTS, (0.5,))
        self.ref = _Rolling(REF_POINTS, (0.25, 0.5, 0.75))
        self.delay: deque[float] = deque(maxlen=SHORT_POINTS)  # d on its way to ref
        self.absz: deque[float] = deque(maxlen=VOL_POINTS)
        # the records: distance from the last week's median, in interquartile ranges, of
        # each point and of the last hour's mean level
        self.rec = _Record(WEEK_STRIDE)
        self.level = _Record(LEVEL_STRIDE)
        self.lwin: deque[float] = deque(maxlen=LEVEL_POINTS)   # the last y, for the level

    # -- scoring ------------------------------------------------------------------------------

    def fold(self, ts: float, y: float) -> tuple[float, dict[str, Any] | None]:
        """Score ``y`` against the model, then learn it: (probability, details or None)."""
        self._learn_interval(ts)
        self.n += 1
        b = self._bin(ts) if self.bins else -1
        s_b = self._profile(b) if b >= 0 else 0.0
        d = y - self.w * s_b
        if self.n == 1:
            self.fast.update(d)
            self.short.update(d)
            self.delay.append(d)
            return 0.0, None
        level = self.fast.get()
        e = d - level
        f = level + self.w * s_b
        scale = self.noise(f)
        z = e / scale
        self.absz.append(min(abs(z), Z_CAP))
        self.short.update(d)
        shift = 0.0
        recent, before = self.short.get(), self.ref.get(1)   # the shift's evidence
        if len(self.ref) >= SHORT_POINTS:
            spread = max((self.ref.get(2) - self.ref.get(0)) / IQR_SD, scale)
            shift = abs(self.short.get() - self.ref.get(1)) / spread
        raw = {"point": abs(z), "shift": shift, "volatility": sum(self.absz) / len(self.absz)}
        probs = {k: self.cal[k].tail(v) for k, v in raw.items()}
        worst = min(probs, key=probs.__getitem__)
        p = min(1.0, len(SCORES) * probs[worst])
        anomalous = probs[worst] <= self.p_alert
        record = self.rec.step(y)
        gated = (anomalous and worst != "volatility" and self.w < ORDINARY_W
                 and record[0] < ORDINARY * self.rec.med)
        if gated:
            anomalous = False   # well inside the distances the series reaches every day
        if record[2] and not anomalous:
            anomalous, worst = True, "record"
        self.lwin.append(y)
        hour = sum(self.lwin) / len(self.lwin)
        lrec = (self.level.step(hour) if len(self.lwin) == LEVEL_POINTS
                else (0.0, 0.0, False, (0.0, 0.0, 0.0)))
        if lrec[2] and not anomalous:
            anomalous, worst = True, "level"
        # learn
        if self.n > START_POINTS:
            for k, v in raw.items():
                self.cal[k].learn(v)
        self.fast.update(d)
        a = max(1.0 / self.n, 1.0 / SCALE_POINTS)
        self._learn_noise(e, f, a)
        if self.spread_open and self.n > START_POINTS and e != 0 and f > 0:
            u, v = math.log(f), math.log(abs(e))
            for i, t in enumerate((1.0, u, v, u * u, u * v, v * v)):
                self.svl[i] += t
        if len(self.delay) == self.delay.maxlen:
            self.ref.update(self.delay[0])
        self.delay.append(d)
        if anomalous and worst == "shift":
            self.ref.reset(list(self.short.values))   # a new level: learn it afresh
        self._learn_season(y, ts, b)
        half = self.cal["point"].inverse(self.p_alert) * scale
        return 1.0 - p, {"raw": raw, "probs": probs, "worst": worst, "expected": f,
                         "half": half, "anomalous": anomalous, "seasonal": self.w * s_b,
                         "recent": recent, "before": before, "record": record,
                         "level": (*lrec, hour),
                         "gated": gated}

    def spread_power(self) -> tuple[float, float]:
        """Slope of log |residual| on log level, and its standard error (Tukey's
        spread-versus-level plot): 0 for additive noise, 1/2 Poisson-like, 1 multiplicative."""
        n, su, sv, suu, suv, svv = self.svl
        if n < 30:
            return 0.0, math.inf
        cuu, cuv, cvv = suu - su * su / n, suv - su * sv / n, svv - sv * sv / n
        if cuu <= 1e-12 * n:
            return 0.0, math.inf
        slope = cuv / cuu
        resid = max(cvv - slope * cuv, 0.0) / (n - 2)
        return slope, math.sqrt(resid / cuu)

    def _profile(self, b: int) -> float:
        """The seasonal profile at bin ``b``, median-smoothed over its neighbours (less
        noise, and a nightly job's sharp edges stay sharp)."""
        s, n = self.season, self.bins
        lo, mid, hi = s[b - 1], s[b], s[(b + 1) % n]
        return max(min(lo, mid), min(max(lo, mid), hi))

    def noise(self, f: float, k: int | None = None) -> float:
        """The noise scale at forecast ``f`` under noise model ``k`` (default: the likeliest)."""
        k = self.noise_model if k is None else k
        c0 = self.c[0]
        floor = max(1e-9 * max(1.0, abs(f)), NOISE_FLOOR * self.mae)
        if k == 0:
            return max(c0, floor)
        return max(self.c[k] * abs(f) ** self.powers[k], 0.1 * c0, floor)

    # -- learning -----------------------------------------------------------------------------

    def _bin(self, ts: float) -> int:
        return int(((ts - self.phase) % self.season_s) / (self.season_s / self.bins)) % self.bins

    def _learn_interval(self, ts: float) -> None:
        if self.last_ts is not None and ts > self.last_ts and len(self.gaps) < DT_SAMPLES:
            self.gaps.append(ts - self.last_ts)
            if len(self.gaps) == DT_SAMPLES:
                self.per_day = self.season_s / float(np.median(self.gaps))
                bins = min(MAX_BINS, int(round(self.per_day)))
                if bins >= MIN_BINS:
                    width = self.season_s / bins
                    self.bins, self.phase = bins, ts % width - width / 2  # centred on samples
                    self.season, self.filled = [0.0] * bins, [0] * bins
                    self.ring = [[0.0] * SEASON_DAYS for _ in range(bins)]
                    self.day_of, self.acc, self.acc_n = [-1] * bins, [0.0] * bins, [0] * bins
        self.last_ts = ts if self.last_ts is None else max(ts, self.last_ts)

    def _learn_noise(self, e: float, f: float, a: float) -> None:
        self.mae += a * (abs(e) - self.mae)
        if self.c[0] > 0 and len(self.powers) > 1:
            for k in range(len(self.powers)):
                sk = self.noise(f, k)
                self.ll[k] += a * (-math.log(sk) - min(abs(e) / sk, LL_CAP) - self.ll[k])
            self.noise_model = max(range(len(self.powers)), key=self.ll.__getitem__)
        for k, power in enumerate(self.powers):
            r = abs(e) / max(abs(f), 1e-12) ** power
            lim = CLIP * self.c[k] if self.c[k] > 0 else math.inf
            self.c[k] += a * (SQRT_PI_2 * min(r, lim) - self.c[k])

    def _learn_season(self, y: float, ts: float, b: int) -> None:
        """Per bin, the day's mean value minus the day's mean (a centred level, unlike a
        trailing average), pushed once the day is over; the profile is the median of the
        last SEASON_DAYS such days (one odd day does not move it)."""
        if b < 0:
            return
        day = int((ts - self.phase) // self.season_s)
        if day != self.day:
            if self.day_n >= DAY_COVERAGE * self.per_day:  # a day seen well enough
                self.day_means[str(self.day)] = self.day_sum / self.day_n
                if len(self.day_means) > SEASON_DAYS + 2:
                    del self.day_means[min(self.day_means, key=int)]
            self.day, self.day_sum, self.day_n = day, 0.0, 0
        self.day_sum += y
        self.day_n += 1
        if self.day_of[b] != day:
            mean = self.day_means.get(str(self.day_of[b]))
            if self.acc_n[b] and mean is not None:  # the bin's day is over: push it
                ring = self.ring[b]
                ring[self.filled[b] % SEASON_DAYS] = self.acc[b] / self.acc_n[b] - mean
                self.filled[b] += 1
                self.season[b] = _median(ring[:min(self.filled[b], SEASON_DAYS)])
            self.acc[b], self.acc_n[b], self.day_of[b] = 0.0, 0, day
        self.acc[b] += y
        self.acc_n[b] += 1
        if self.n % REFIT_EVERY == 0:
            self._weigh_season()

    def _weigh_season(self) -> None:
        """Weight of the seasonal profile: 1 - its noise over its variance (James-Stein).

        The profile's noise is what a bin's daily values scatter around their
        median, over the days seen: a series whose "pattern" is a different one
        every day (a wandering level) gets a weight near 0, a daily cycle or a
        nightly job near 1.
        """
        filled = np.minimum(np.asarray(self.filled), SEASON_DAYS)
        two = filled >= 2
        if np.count_nonzero(two) < self.bins // 2:
            self.w = 0.0
            return
        ring = np.asarray(self.ring)[two]
        k = filled[two]
        prof = np.asarray(self.season)[two]
        mask = np.arange(SEASON_DAYS)[None, :] < k[:, None]
        dev2 = np.where(mask, (ring - prof[:, None]) ** 2, 0.0).sum(axis=1) / (k - 1)
        # per bin, the variance of a median of k days; the median over bins (one odd day, a
        # noisy burst, do not decide), unbiased by the median of a chi-square over its mean
        nu = k - 1.0
        noise = float(np.median(dev2 * (math.pi / 2) / k / (1.0 - 2.0 / (9.0 * nu)) ** 3))
        var = float(np.var(prof))
        self.w = 0.0 if var <= 0 else max(0.0, 1.0 - noise / var)
        if self.w >= 0.5 and not self.seasonal_once:
            # scores change once the profile is subtracted: calibrate on the new ones
            # only, as soon as there is a season of them
            self.seasonal_once = True
            for cal in self.cal.values():
                cal.forget(FRESH)

    # -- checkpoint ---------------------------------------------------------------------------

    _PLAIN = ("n", "last_ts", "gaps", "bins", "phase", "season", "ring", "filled", "day_of",
              "acc", "acc_n", "w", "seasonal_once", "day", "day_sum", "day_n", "day_means",
              "per_day", "c", "ll",
              "noise_model", "svl")

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._PLAIN}
        out.update(self.rec.to_dict())   # the point record's keys, as they always were
        out.update({"fast": list(self.fast.values), "short": list(self.short.values),
                    "ref": list(self.ref.values), "delay": list(self.delay),
                    "absz": list(self.absz), "mae": self.mae,
                    "level": {**self.level.to_dict(), "window": list(self.lwin)},
                    "cal": {k: c.to_dict() for k, c in self.cal.items()}})
        return out

    def load_dict(self, data: dict[str, Any]) -> None:
        for k in self._PLAIN:
            setattr(self, k, data[k])
        self.fast.reset(data["fast"])
        self.short.reset(data["short"])
        self.ref.reset(data["ref"])
        self.delay = deque(data["delay"], maxlen=SHORT_POINTS)
        self.absz = deque(data["absz"], maxlen=VOL_POINTS)
        # a checkpoint from before the records has none of them: they start afresh
        self.rec.load_dict(data)
        level = data.get("level", {})
        self.level.load_dict(level)
        self.lwin = deque(level.get("window", ()), maxlen=LEVEL_POINTS)
        self.mae = float(data.get("mae", 0.0))
        for k, c in self.cal.items():
            c.load_dict(data["cal"][k])


def _median(values: list[float]) -> float:
    """``np.median`` of a few values, exactly, without numpy's overhead (a per-point cost)."""
    v = sorted(values)
    m = len(v) // 2
    return float(v[m]) if len(v) % 2 else (v[m - 1] + v[m]) / 2.0


def _forward(transform: str, x: float, floor: float) -> float:
    if transform == "sqrt":
        return math.sqrt(max(x, 0.0))
    if transform == "log":
        return math.log(max(x, floor))
    return x


def _inverse(transform: str, y: float) -> float:
    if transform == "sqrt":
        return max(y, 0.0) ** 2
    if transform == "log":
        return math.exp(min(y, 700.0))
    return y


class MetricAnomalyDetector:
    """Online anomaly detector of one ``ml.metrics`` series (see the module's docstring).

    After the warm-up every point gets a signal, active when the point is
    anomalous: the alert manager turns them into one trigger per incident and
    a resolve once the series has been back to normal long enough (its
    ``metric_anomaly`` class rule: ``keep_firing_for_s`` 30 min, ``cooldown_s``
    1 h; :class:`alerting.manager.ClassRule`).

    Parameters
    ----------
    source, metric
        The series.
    warmup_points
        No signal before this many points.
    threshold
        A point is anomalous when its calibrated anomaly probability is at least this.
    season_s
        The seasonal period.
    severity
        Of the alerts.

    Examples
    --------
    Four days of CPU utilisation with a daily cycle, every 5 minutes, and a
    spike on day 4.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ts = 1_700_006_400.0 + 300.0 * np.arange(4 * 288)      # four days, every 5 min
    >>> cpu = 40 + 15 * np.sin(2 * np.pi * ts / 86400) + rng.normal(0, 2, ts.size)
    >>> cpu[3 * 288 + 100] = 97.0                                 # a spike on day 4
    >>> det = MetricAnomalyDetector("fraud-scorer/api", "cpu_utilization")
    >>> signals = det.update({"ts": ts, "value": cpu})
    >>> len(signals), ts.size - det.warmup_points                 # one per point after warm-up
    (576, 576)
    >>> for s in signals:
    ...     if s.active:
    ...         i = int((s.timestamp - ts[0]) // 300)
    ...         print(f"point {i} (day {i / 288:.2f}):", s.summary.split(" ", 2)[2].split(" (")[0])
    point 773 (day 2.68): variance change: 1.70 noise widths on average over 12 points
    point 774 (day 2.69): variance change: 1.67 noise widths on average over 12 points
    point 775 (day 2.69): variance change: 1.63 noise widths on average over 12 points
    point 778 (day 2.70): variance change: 1.68 noise widths on average over 12 points
    point 779 (day 2.70): variance change: 1.77 noise widths on average over 12 points
    point 964 (day 3.35): = 97 outside expected 38–68.1

    Each summary names the signal that fired, with its own evidence: the noisy
    stretch of day 2.68 is a variance change (its values are inside the point
    band), day 3.35 a point outside its band. Through the alert manager (its
    ``metric_anomaly`` rule), the noisy stretch is one alert, re-affirmed by its
    later points, and the spike another one:

    >>> from alerting.manager import AlertManager
    >>> for e in AlertManager().process(signals):
    ...     print(e["event_action"], e["payload"]["timestamp"])
    trigger 2023-11-17T16:25:00.000Z
    resolve 2023-11-17T17:25:00.000Z
    trigger 2023-11-18T08:20:00.000Z
    resolve 2023-11-18T08:50:00.000Z
    """

    inputs = ("ts", "value")

    def __init__(self, source: str, metric: str, *, warmup_points: int = 576,
                 threshold: float = 0.9999, season_s: float = 86400.0,
                 severity: Severity = "warning") -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if not (season_s > 0 and warmup_points >= 0):
            raise ValueError("season_s must be > 0 and warmup_points >= 0")
        check_severity(severity)
        self.source, self.metric = source, metric
        self.warmup_points = warmup_points
        self.threshold = threshold
        self.season_s = season_s
        self.severity = severity
        self._key = dedup_key("metric_anomaly", source, None, "stable", metric)
        self._name = f"{source} {metric}"
        self._n = 0                          # finite points seen (the warm-up's count)
        self._p_alert = (1.0 - threshold) / len(SCORES)  # per score (Bonferroni)
        self._model = _Model(season_s, self._p_alert)
        self._transform: str | None = None   # None until DECIDE_POINTS points are seen
        self._floor = 0.0                    # log's floor
        self._buffer: list[tuple[float, float]] = []

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"source": "svc", "metric": "cpu", "warmup_points": 300}
        yield {"source": "svc", "metric": "latency_ms", "warmup_points": 400,
               "threshold": 0.99995, "season_s": 86400.0, "severity": "error"}

    @property
    def key(self) -> str:
        return self._key

    @property
    def transform(self) -> str | None:
        """``identity``, ``sqrt`` or ``log`` once chosen (after the first points)."""
        return self._transform

    def _fold(self, ts: float, x: float) -> tuple[float, dict[str, Any] | None]:
        self._n += 1
        if self._transform is None:
            self._buffer.append((ts, x))
            out = self._model.fold(ts, x)
            if len(self._buffer) >= DECIDE_POINTS:
                self._decide()
            return out
        return self._model.fold(ts, _forward(self._transform, x, self._floor))

    def _decide(self) -> None:
        """Choose the variance-stabilising transform the noise says, then replay the buffer.

        Noise that grows like the level (latency, bytes) is additive after a log,
        Poisson-like noise (counts) after a square root; everything downstream
        (seasonal profile, levels, scores) is then simpler and more sensitive.
        """
        xs = [x for _, x in self._buffer]
        slope, se = self._model.spread_power()
        power = 0.0 if slope - 2 * se < DECIDE_MARGIN else 1.0 if slope > 0.75 else 0.5
        if power == 1.0 and min(xs) > 0:
            self._transform = "log"
            self._floor = min(xs) / 2
        elif power > 0 and min(xs) >= 0:
            self._transform = "sqrt"
        else:
            self._transform = "identity"
        buffer, self._buffer = self._buffer, []
        if self._transform != "identity":
            self._model = _Model(self.season_s, self._p_alert, powers=(0.0,))
            for t, x in buffer:
                self._model.fold(t, _forward(self._transform, x, self._floor))
        self._model.spread_open = False   # chosen: the spread-vs-level sums are done

    def score_batch(self, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Fold points in (as :meth:`update` does); each one's calibrated anomaly
        probability."""
        return np.array([self._fold(t, v)[0] for t, v in
                         zip(np.asarray(ts, dtype=float).tolist(),
                             np.asarray(values, dtype=float).tolist(), strict=True)])

    def update(self, batch: Batch) -> list[Signal]:
        """Fold points in (in time order; non-finite ones are skipped); after the warm-up,
        a signal per point, active when it is anomalous."""
        out: list[Signal] = []
        for t, v in zip(np.asarray(batch["ts"], dtype=float).tolist(),
                        np.asarray(batch["value"], dtype=float).tolist(), strict=True):
            if not math.isfinite(v) or not math.isfinite(t):
                continue
            prob, details = self._fold(t, v)
            if self._n > self.warmup_points and details is not None:
                out.append(self._signal(t, v, prob, details))
        return out

    def _signal(self, ts: float, value: float, prob: float, det: dict[str, Any]) -> Signal:
        # once per point after the warm-up: kept lean (positional Signal, no helpers)
        active = det["anomalous"]
        tr = self._transform or "identity"
        seasonal, by = det["seasonal"], det["worst"]
        f, half = det["expected"], det["half"]
        lo, hi = _inverse(tr, f - half), _inverse(tr, f + half)
        name = self._name
        extra: dict[str, Any] = {}
        if not active and det["gated"]:
            summary = (f"{name} = {value:.4g} unusual ({by} score) but within the distance "
                       f"from the week's median the series reaches on an ordinary day "
                       f"(not an anomaly)")
        elif not active:
            summary = f"{name} back to normal: {value:.4g} (expected {lo:.4g}–{hi:.4g})"
        elif by == "point":
            summary = (f"{name} = {value:.4g} outside expected {lo:.4g}–{hi:.4g} "
                       f"(point anomaly, probability {prob:.5f})")
        elif by == "shift":
            recent = _inverse(tr, det["recent"] + seasonal)
            before = _inverse(tr, det["before"] + seasonal)
            extra = {"recent_median": recent, "reference_median": before}
            summary = (f"{name} level shift: median {recent:.4g} over the last {SHORT_POINTS} "
                       f"points against {before:.4g} over the {REF_POINTS} before "
                       f"(probability {prob:.5f})")
        elif by == "level":
            r, best, _, (q25, med, q75), mean = det["level"]
            r = round(r, 4)   # as the details' score: the summary says what they say
            level = _inverse(tr, mean)
            centre, low, high = _inverse(tr, med), _inverse(tr, q25), _inverse(tr, q75)
            extra = {"level": level, "week_median": centre, "week_quartiles": [low, high],
                     "record_distance": best}
            summary = (f"{name} level over the last {LEVEL_POINTS} points {level:.4g} is a "
                       f"two-week record: {r:.1f} interquartile ranges from the last week's "
                       f"median level {centre:.4g} (quartiles {low:.4g}–{high:.4g}), the "
                       f"previous largest {best:.1f} (level record)")
        elif by == "record":
            r, best, _, (q25, med, q75) = det["record"]
            r = round(r, 4)
            centre, low, high = _inverse(tr, med), _inverse(tr, q25), _inverse(tr, q75)
            extra = {"week_median": centre, "week_quartiles": [low, high],
                     "record_distance": best}
            summary = (f"{name} = {value:.4g} is a two-week record: {r:.1f} interquartile "
                       f"ranges from the last week's median {centre:.4g} (quartiles "
                       f"{low:.4g}–{high:.4g}), the previous largest {best:.1f} "
                       f"(record anomaly)")
        else:  # volatility
            summary = (f"{name} variance change: {det['raw']['volatility']:.2f} noise widths "
                       f"on average over {VOL_POINTS} points (probability {prob:.5f})")
        return Signal(
            "metric_anomaly", self._key, active, self.severity, summary, ts, self.source, None,
            {"metric": self.metric, "value": value, "expected": {"low": lo, "high": hi},
             "score": round(det[by][0] if by in ("record", "level") else det["raw"][by], 4),
             "probability": prob,
             "probability_threshold": self.threshold, "statistic": "anomaly_likelihood",
             "detected_by": by, "transform": tr, "ordinary": det["gated"], **extra})

    def to_dict(self) -> dict[str, Any]:
        return {"n": self._n, "transform": self._transform, "floor": self._floor,
                "buffer": [list(p) for p in self._buffer], "model": self._model.to_dict()}

    def load_dict(self, data: dict[str, Any]) -> None:
        # a checkpoint from before the alert policy moved to the alert manager kept the
        # count in the policy's state
        self._n = int(data["n"] if "n" in data else data["policy"]["n"])
        self._transform, self._floor = data["transform"], float(data["floor"])
        self._buffer = [(float(t), float(x)) for t, x in data["buffer"]]
        powers = NOISE_POWERS if self._transform in (None, "identity") else (0.0,)
        self._model = _Model(self.season_s, self._p_alert, powers=powers)
        self._model.load_dict(data["model"])
        self._model.spread_open = self._transform is None
