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

**Sequential test (the default).** ``test="sequential"`` replaces the
two-window JS test by the CUSUMs of :mod:`detectors.sequential` against the
baseline's shares (the ``baseline_factor * window`` values before the recent
window, rebuilt each time the baseline has been renewed, its noise allowed for
as a reference of that many values): an abrupt change alerts within a small
multiple of the information bound instead of after a few windows. ADWIN runs
with both.

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

from detectors._river import drift as river_drift
from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key
from detectors.distance import js_distance
from detectors.profile import FeatureBins
from detectors.sequential import Change, SequentialTest, alternatives
from detectors.skew import TESTS, Calibration, ChunkCounter, _test_bins, calibrate

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
    test
        ``sequential`` (CUSUMs against the baseline) or ``window`` (JS distance of
        the recent window against the baseline); ADWIN runs with both.

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
                 severity: Severity = "warning", test: str = "sequential") -> None:
        if bins.name != feature:
            raise ValueError(f"bins of {bins.name!r} given for feature {feature!r}")
        if not baseline_factor >= 1:
            raise ValueError("baseline_factor must be >= 1")
        if test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}")
        check_severity(severity)
        self.model, self.version, self.feature, self.cohort = model, version, feature, cohort
        self.bins = bins
        self.calibration = calibration
        self.baseline_factor = baseline_factor
        self.severity = severity
        self.test = test
        self.check = "prediction_drift" if feature == "prediction" else "feature_drift"
        self._recent_chunks = calibration.window // calibration.hop
        self._capacity = self._recent_chunks * (1 + baseline_factor)
        self._chunks: deque[np.ndarray] = deque()
        self._chunk_lists: deque[list[int]] = deque()  # the same, as lists (to_dict)
        self._counter = ChunkCounter(bins.size, calibration.hop)
        self._means: deque[float] = deque(maxlen=ADWIN_HISTORY)
        self._adwin = self._new_adwin()
        self._hold = 0  # chunks an ADWIN detection stays active
        self._adwin_at: float | None = None
        # Sequential: the baseline the CUSUMs test against, and chunks until it is renewed.
        self._seq: SequentialTest | None = None
        self._base: np.ndarray | None = None
        self._renew = 0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        for bins in (_test_bins("numeric"), _test_bins("categorical", "prediction")):
            yield {"model": "m", "version": "v1", "feature": bins.name, "bins": bins,
                   "calibration": calibrate(bins.reference, 400, 100, 1e6, baseline=1600)}
        bins = _test_bins("numeric")
        yield {"model": "m", "version": "v1", "feature": bins.name, "cohort": "canary",
               "bins": bins, "calibration": calibrate(bins.reference, 400, 200, 1e6, baseline=800),
               "baseline_factor": 2, "severity": "error"}
        yield {"model": "m", "version": "v1", "feature": bins.name, "bins": bins,
               "calibration": calibrate(bins.reference, 400, 100, 1e6, baseline=1600),
               "test": "window"}

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
        if self.test == "sequential":
            return self._update_sequential(idx, ts, values)
        out: list[Signal] = []
        for last, counts, mean in self._counter.add(idx, values):
            self._push(counts)
            self._adwin_chunk(mean, ts, last, values is not None)
            if len(self._chunks) == self._capacity:
                out.append(self._evaluate(float(ts[last])))
            if self._hold:
                self._hold -= 1
        return out

    def _push(self, counts: np.ndarray) -> None:
        """A full chunk's counts into the window (the oldest out past its capacity),
        with their list, written in every checkpoint as it is (a chunk, and its list,
        never change once pushed)."""
        self._chunks.append(counts)
        self._chunk_lists.append(counts.tolist())
        if len(self._chunks) > self._capacity:
            self._chunks.popleft()
            self._chunk_lists.popleft()

    def _adwin_chunk(self, mean: float, ts: np.ndarray, last: int, numeric: bool) -> None:
        if numeric:
            self._means.append(mean)
            self._adwin.update(mean)
            if self._adwin.drift_detected:
                self._hold = self._capacity
                self._adwin_at = float(ts[last])

    def _update_sequential(self, idx: np.ndarray, ts: np.ndarray,
                           values: np.ndarray | None) -> list[Signal]:
        """The CUSUMs over the batch, a status after each chunk (once the baseline is
        full).

        While no alarm is in force the values up to the next renewal of the baseline
        are fed at once, the statuses after each chunk read off the way (as
        :meth:`SequentialTest.feed`'s ``marks``): the same figures as feeding chunk by
        chunk, for one pass over the CUSUMs instead of one per chunk. A hold (an
        alarm in force) lasts longer than the baseline's renewal period, so it cannot
        end inside such a stretch; once an alarm is in force, chunk by chunk again
        (its end renews the baseline there)."""
        out: list[Signal] = []
        fed = 0  # values of idx the sequential test has seen
        # Statuses not given yet: (position after the chunk, ts, ADWIN active, its change ts)
        marks: list[tuple[int, float, bool, float | None]] = []
        for last, counts, mean in self._counter.add(idx, values):
            self._push(counts)
            full = len(self._chunks) == self._capacity
            if full:
                if self._renew == 0:  # the baseline is renewed: test against the new one
                    out.extend(self._feed_marked(idx, ts, fed, last + 1, marks))
                    fed, marks = last + 1, []
                    self._rebuild(np.sum(list(self._chunks)[:-self._recent_chunks], axis=0))
                    self._renew = self._capacity - self._recent_chunks
                self._renew -= 1
            self._adwin_chunk(mean, ts, last, values is not None)
            if full:
                mark = (last + 1, float(ts[last]), self._hold > 0, self._adwin_at)
                if self._seq is not None and self._seq.alarm is None and not marks:
                    marks.append(mark)   # no alarm in force since ``fed``: read on
                elif marks:
                    marks.append(mark)
                else:
                    out.extend(self._feed(idx, ts, fed, last + 1))
                    fed = last + 1
                    out.append(self._status_signal(mark[1], mark[2], mark[3]))
            if self._hold:
                self._hold -= 1
        out.extend(self._feed_marked(idx, ts, fed, idx.size, marks, pending=True))
        return out

    def _feed_marked(self, idx: np.ndarray, ts: np.ndarray, lo: int, hi: int,
                     marks: list[tuple[int, float, bool, float | None]],
                     pending: bool = False) -> list[Signal]:
        """Values ``lo:hi`` into the sequential test (no alarm in force at ``lo``), with
        the statuses due at ``marks``, in the order chunk-by-chunk feeding gives them
        (``pending``: as for :meth:`_feed`)."""
        if not marks:
            return self._feed(idx, ts, lo, hi, pending)
        assert self._seq is not None and self._seq.alarm is None
        changes = self._seq.feed(idx[lo:hi], [m[0] - lo for m in marks])
        noted = self._seq.noted
        if len(noted) != len(marks) or (changes and not changes[-1].alarm):
            raise AssertionError("a hold ended within a stretch shorter than a hold")
        out: list[Signal] = []
        i = 0
        for (position, t, adwin, adwin_at), (_, j, value, threshold, alarm, name) in zip(
                marks, noted, strict=True):
            while i < len(changes) and changes[i].index < position - lo:
                out.append(self._change(changes[i], lo, idx, ts))
                i += 1
            out.append(self._status_signal(t, adwin, adwin_at, (j, value, threshold),
                                           alarm, name))
        out.extend(self._change(c, lo, idx, ts) for c in changes[i:])
        return out

    def _rebuild(self, base: np.ndarray) -> None:
        self._base = base
        alt = alternatives(self.bins, self.calibration.run_length, shares=base,
                           reference_size=int(base.sum()))
        if self._seq is None:
            self._seq = SequentialTest(alt, hold=(self._capacity + 1) * self.calibration.hop)
        else:
            self._seq.set_alternatives(alt)

    def _feed(self, idx: np.ndarray, ts: np.ndarray, lo: int, hi: int,
              pending: bool = False) -> list[Signal]:
        """Values ``lo:hi`` of the batch into the sequential test; its alarms and clears.

        ``pending``: the values are of a chunk not complete yet (the batch's tail). A
        hold that ends in a chunk renews the baseline as of that chunk's end, however
        the stream is batched: the chunks then in the window but the recent ones (the
        pending chunk counts as the newest; the oldest, which it will push out, does
        not), and the renewal period counted from it."""
        out: list[Signal] = []
        while self._seq is not None and hi > lo:
            changes = self._seq.feed(idx[lo:hi])
            out.extend(self._change(c, lo, idx, ts) for c in changes)
            if not changes or changes[-1].alarm:
                break
            # The hold is over: the baseline is all post-change now; test against it.
            lo += changes[-1].index + 1
            chunks = list(self._chunks)
            # pending, the chunk holding the hold's end is not in the window yet: it will
            # push the oldest out, and it is among the recent ones, left out anyway
            first = 1 if pending and len(chunks) == self._capacity else 0
            self._rebuild(np.sum(chunks[first:len(chunks) - self._recent_chunks + first],
                                 axis=0))
            self._renew = self._capacity - self._recent_chunks + (1 if pending else 0)
        return out

    def _change(self, c: Change, lo: int, idx: np.ndarray, ts: np.ndarray) -> Signal:
        assert self._seq is not None and self._base is not None
        alt = self._seq.alternatives
        at = lo + c.index
        name = "predictions" if self.check == "prediction_drift" else f"feature '{self.feature}'"
        details: dict[str, Any] = {
            "feature": self.feature, "statistic": "cusum", "cohort": self.cohort,
            "value": round(c.statistic, 3) if c.alarm else 0.0,
            "threshold": round(c.threshold, 3), "alternative": c.name,
            "detected_by": "cusum" if c.alarm else None,
        }
        if c.alarm:
            recent = np.bincount(idx[max(0, at + 1 - c.since):at + 1], minlength=self.bins.size)
            p, q = recent / max(int(recent.sum()), 1), self._base / self._base.sum()
            moved = np.argsort(-np.abs(p - q))[:3]
            details.update({
                "events_since_change_start": c.since,
                "largest_moves": [{"bin": self.bins.labels[i], "recent": round(float(p[i]), 4),
                                   "baseline": round(float(q[i]), 4)} for i in moved],
                "window": {"events": int(recent.sum()), "baseline_events": int(self._base.sum()),
                           "end_ts": float(ts[at])},
                "calibration": alt.describe(c.alternative),
            })
            why = (f"{c.name}: CUSUM {c.statistic:.1f} >= {c.threshold:.1f} "
                   f"nats, {c.since:,} values since the change began")
        else:
            why = "the baseline has absorbed the change"
        return Signal(check=self.check, key=self.key, active=c.alarm, severity=self.severity,
                      summary=f"{self.model} {self.version}: {name} drifted ({why})"
                      if c.alarm else f"{self.model} {self.version}: {name}: {why}",
                      timestamp=float(ts[at]), model=self.model, version=self.version,
                      details=details)

    def _status_signal(self, ts: float, adwin: bool, adwin_at: float | None,
                       status: tuple[int, float, float] | None = None,
                       alarm: bool | None = None, name: str | None = None) -> Signal:
        """The status signal: the sequential test's now, or ``status`` (its alternative,
        CUSUM and threshold), ``alarm`` and ``name`` as noted at a mark; ``adwin``: an
        ADWIN detection still active then, found at ``adwin_at``."""
        assert self._seq is not None
        if status is None:
            status, alarm = self._seq.status(), self._seq.alarm is not None
            name = self._seq.status_name(status[0]) or None
        j, value, threshold = status
        by_seq = bool(alarm)
        active = by_seq or adwin
        label = ("predictions" if self.check == "prediction_drift"
                 else f"feature '{self.feature}'")
        why = ("a change the baseline has not absorbed yet" if by_seq
               else "ADWIN detected a change in its mean" if active
               else f"CUSUM {value:.1f} < {threshold:.1f} nats")
        details: dict[str, Any] = {
            "feature": self.feature, "statistic": "cusum", "cohort": self.cohort,
            "value": round(value, 3), "threshold": round(threshold, 3),
            "alternative": name or None,
            "detected_by": "cusum" if by_seq else "adwin" if active else None,
            "adwin_change_at_ts": adwin_at,
        }
        return Signal(check=self.check, key=self.key, active=active, severity=self.severity,
                      summary=f"{self.model} {self.version}: {label} "
                      f"{'drifted' if active else 'steady'} ({why})",
                      timestamp=ts, model=self.model, version=self.version, details=details)

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
        out = {"chunks": list(self._chunk_lists), **self._counter.to_dict(),
               "means": list(self._means), "hold": self._hold, "adwin_at": self._adwin_at}
        if self._seq is not None and self._base is not None:
            out["sequential"] = {"base": self._base.tolist(), "renew": self._renew,
                                 **self._seq.to_dict()}
        return out

    def load_dict(self, data: dict[str, Any]) -> None:
        if not self._counter.load_dict(data):
            return  # other bins: start afresh
        self._chunks = deque(np.asarray(c, dtype=np.int64) for c in data["chunks"])
        self._chunk_lists = deque(c.tolist() for c in self._chunks)
        self._hold, self._adwin_at = int(data["hold"]), data["adwin_at"]
        seq = data.get("sequential")
        if self.test == "sequential" and seq is not None and len(seq["base"]) == self.bins.size:
            self._rebuild(np.asarray(seq["base"], dtype=np.int64))
            assert self._seq is not None
            self._seq.load_dict(seq)
            self._renew = int(seq["renew"])
        # ADWIN's buckets are not JSON; replaying the recent chunk means rebuilds
        # it (exactly, unless its window had grown past ADWIN_HISTORY chunks).
        self._adwin = self._new_adwin()
        self._means = deque(maxlen=ADWIN_HISTORY)
        for m in data["means"]:
            self._means.append(m)
            self._adwin.update(m)
