"""Training/serving skew: serving data against the version's training profile.

Per (model, version, feature), a sliding window of the last ``window`` serving
values (advancing ``hop`` values at a time) is binned on the reference profile's
bins and compared with the reference shares:

- numeric features: Jensen-Shannon distance on the reference's quantile bins;
- categorical features: Jensen-Shannon distance, plus the L-infinity distance
  (the largest change of one category's share) and the unseen categories, both
  reported as evidence.

**Calibrated thresholds.** A fixed distance threshold is wrong twice: on large
windows every tiny change is "significant", on small ones noise crosses it. The
threshold here is derived from the false-alarm budget instead: the configured
*run length* L is the expected number of events between two false alarms on a
stationary stream (default: one per feature per week at 100 events/s). The
window is tested every ``hop`` events, so a test may be wrong with probability
at most ``alpha = hop / L`` (a union bound: overlapping windows make the real
rate lower, never higher). :func:`calibrate` finds the distance exceeded with
probability ``alpha`` by windows drawn from the reference itself: a parametric
bootstrap (multinomial windows of ``window`` values from the reference shares)
fixes the small-sample scale, and the chi-square limit of Jensen-Shannon
(``8 n JSD ~ chi2(k - 1)``) carries it to a tail far smaller than any bootstrap
could reach.

**Sequential test (the default).** A windowed test cannot alert sooner than a
few hundred values after a change; ``test="sequential"`` runs a bank of CUSUMs
on the bins instead (:mod:`detectors.sequential`), calibrated for the same run
length and for the reference's own sampling noise (``reference_size``, the
profile's rows), which alerts within a small multiple of the information bound
``ln(L) / KL``: a few dozen values for a 1 SD shift. The alert is active from
the value where a CUSUM crosses its threshold until a CUSUM of the reference
against the alternative that fired says the stream is back. The window above
is kept as evidence (its JS distance, the bins that moved).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key
from detectors.distance import js_distance, linf_distance
from detectors.profile import FeatureBins
from detectors.sequential import Alternatives, Change, SequentialTest, alternatives

__all__ = ["Calibration", "calibrate", "ChunkCounter", "SkewDetector", "TESTS"]

TESTS = ("sequential", "window")


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float      # Jensen-Shannon distance that raises the alarm
    alpha: float          # false-alarm probability of one test
    run_length: float     # events between false alarms the threshold is set for
    window: int
    hop: int
    dof: int
    scale: float          # bootstrap mean of 8 n JSD over its chi-square mean
    draws: int
    check_ratio: float = 1.0  # bootstrap exceedance of the model's 1 % point, over 1 %

    @property
    def achieved_run_length(self) -> float:
        """Run length the bootstrap check supports (the target, corrected by the check)."""
        return self.run_length / max(self.check_ratio, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": "jensen_shannon", "threshold": round(self.threshold, 6),
                "alpha_per_test": self.alpha, "run_length_events": self.run_length,
                "window_events": self.window, "hop_events": self.hop,
                "bootstrap_draws": self.draws, "bootstrap_scale": round(self.scale, 4),
                "bootstrap_check_ratio": round(self.check_ratio, 3),
                "achieved_run_length_events": round(self.achieved_run_length)}


def calibrate(reference: np.ndarray, window: int, hop: int, run_length: float,
              draws: int = 2000, seed: int = 0, baseline: int | None = None) -> Calibration:
    """Threshold on the JS distance for a false alarm every ``run_length`` events.

    With ``baseline=None`` the window is compared with the reference shares
    themselves (skew); with ``baseline=n`` it is compared with another sample of
    ``n`` values from the same distribution (drift against a trailing window),
    and ``n`` enters the effective sample size ``window * n / (window + n)``.

    >>> import numpy as np
    >>> cal = calibrate(np.full(10, 0.1), window=2000, hop=500, run_length=6.048e7)
    >>> 0.05 < cal.threshold < 0.15, f"{cal.alpha:.3e}"
    (True, '8.267e-06')
    >>> calibrate(np.full(10, 0.1), 2000, 500, 6.048e7, baseline=8000).threshold > cal.threshold
    True
    """
    if window < 1 or not 1 <= hop <= window:
        raise ValueError("need window >= 1 and 1 <= hop <= window")
    if run_length <= hop:
        raise ValueError("run_length must exceed hop")
    q = reference / reference.sum()
    alpha = hop / run_length
    support = q[q > 0]
    dof = support.size - 1
    n_eff = window if baseline is None else window * baseline / (window + baseline)
    if dof == 0:  # a constant feature: any value elsewhere is a change
        jsd_one_off = float(_jsd_pairs(np.array([[1 - 1 / window, 1 / window]]),
                                      np.array([1.0, 0.0]))[0])
        return Calibration(math.sqrt(jsd_one_off / math.log(2)), alpha, run_length, window,
                           hop, 0, 1.0, 0)
    sample, rng = _windows(support, window, draws, seed)
    if baseline is None:
        jsd = _jsd_pairs(sample, support)
    else:
        other = rng.multinomial(baseline, support, size=draws) / baseline
        jsd = _jsd_pairs(sample, other)
    stat = 8 * n_eff * jsd
    scale = float(stat.mean() / dof)
    limit = scale * float(special.chdtri(dof, alpha)) / (8 * n_eff)  # chi2.isf(alpha, dof)
    threshold = math.sqrt(min(limit, math.log(2)) / math.log(2))
    # Check the fitted tail where the bootstrap can see it: the share of reference
    # windows beyond the model's 1 % point should be 1 %.
    check = float((stat > scale * special.chdtri(dof, 0.01)).mean()) / 0.01
    return Calibration(threshold, alpha, run_length, window, hop, dof, scale, draws, check)


_last_windows: tuple[Any, np.ndarray, Any] | None = None  # (key, windows, generator state)


def _windows(support: np.ndarray, window: int, draws: int,
             seed: int) -> tuple[np.ndarray, np.random.Generator]:
    """The bootstrap's ``draws`` windows of shares (read-only), and the generator as
    it stands after drawing them.

    A feature's two calibrations (skew, then drift: :class:`~streams.core.references.
    Reference`) draw the same windows from the same seed; the multinomial is most of
    a calibration's cost (about 5 of 8 ms for 20 bins), so the last draw is kept and
    its generator's state restored: the same numbers as drawing again.
    """
    global _last_windows
    key = (window, draws, seed, support.tobytes())
    last = _last_windows  # one read: another thread may replace it meanwhile
    if last is not None and last[0] == key:
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = last[2]
        return last[1], rng
    rng = np.random.default_rng(seed)
    sample = rng.multinomial(window, support, size=draws) / window
    sample.flags.writeable = False
    # kept while the worker runs: up to 4 MB (2,000 draws of 250 bins), none larger
    _last_windows = (key, sample, rng.bit_generator.state) if sample.nbytes <= 4 << 20 else None
    return sample, rng


def _jsd_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (nats) of each row of ``a`` against the same row of ``b``
    (or against ``b`` itself, when it is one distribution)."""
    m = 0.5 * (a + b)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(a > 0, a * np.log(a / m), 0.0).sum(axis=1)
        y = np.where(b > 0, b * np.log(b / m), 0.0).sum(axis=1)
    return np.maximum(0.0, 0.5 * (x + y))


class ChunkCounter:
    """Cuts a stream of bin indices into chunks of exactly ``hop`` values.

    Whatever the micro-batch boundaries, chunks hold the same values, so the
    checks built on them do not depend on how the stream was batched.
    """

    def __init__(self, size: int, hop: int) -> None:
        self.size, self.hop = size, hop
        self.current = np.zeros(size, dtype=np.int64)
        self.fill = 0
        self.total = 0.0  # sum of the raw values of the current chunk (numeric only)

    def add(self, idx: np.ndarray, values: np.ndarray | None = None
            ) -> list[tuple[int, np.ndarray, float]]:
        """Completed chunks: (position in ``idx`` of their last value, counts, mean)."""
        done, pos, n = [], 0, idx.size
        while pos < n:
            take = min(self.hop - self.fill, n - pos)
            self.current += np.bincount(idx[pos:pos + take], minlength=self.size)
            if values is not None:
                self.total += float(values[pos:pos + take].sum())
            self.fill += take
            pos += take
            if self.fill == self.hop:
                done.append((pos - 1, self.current, self.total / self.hop))
                self.current = np.zeros(self.size, dtype=np.int64)
                self.fill = 0
                self.total = 0.0
        return done

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current.tolist(), "fill": self.fill, "total": self.total}

    def load_dict(self, data: dict[str, Any]) -> bool:
        """False (and nothing loaded) when the saved chunk has another number of bins."""
        if len(data["current"]) != self.size:
            return False
        self.current = np.asarray(data["current"], dtype=np.int64)
        self.fill, self.total = int(data["fill"]), float(data.get("total", 0.0))
        return True


class SkewDetector:
    """Sliding window of one feature's serving values against its reference.

    Parameters
    ----------
    model, version, feature
        The series: a model version's feature (``prediction`` and ``label`` too).
    cohort
        ``stable`` or ``canary``.
    bins
        The feature's reference distribution (:class:`~detectors.profile.FeatureBins`,
        named ``feature``).
    calibration
        Threshold and window sizes (:func:`calibrate`).
    check
        ``training_serving_skew``, or ``label_drift`` for the labels.
    severity
        Of the alert.
    test
        ``sequential`` (CUSUMs, :mod:`detectors.sequential`: an alarm as soon as
        the evidence suffices) or ``window`` (the JS distance of the window,
        every ``hop`` values).
    reference_size
        Values the reference shares were estimated from (the profile's rows;
        ``None``: unknown); the sequential test allows for their noise.
    bank
        The sequential test's alternatives for these bins, run length and
        reference size, when already built (once per profile, shared by its
        series: ``streams.core.references.FeatureRef.bank``); built here otherwise.

    Examples
    --------
    A numeric feature trained on 50,000 values of N(0, 1); serving follows it
    for 20,000 values, then its mean moves by half a standard deviation. The
    sequential test alerts 148 values after the change (the information bound
    for this shift on these bins, ``ln(6.048e7) / KL``, is about 147 values);
    the window of 2,000 values tested every 500 needs 1,000.

    >>> import numpy as np
    >>> from detectors.profile import FeatureBins
    >>> rng = np.random.default_rng(42)
    >>> train = rng.normal(size=50_000)
    >>> edges = np.quantile(train, np.linspace(0, 1, 21))
    >>> bins = FeatureBins.from_profile("amount", {"type": "numeric", "bins": edges.tolist(),
    ...                                 "counts": np.histogram(train, edges)[0].tolist()})
    >>> cal = calibrate(bins.reference, window=2000, hop=500, run_length=6.048e7)
    >>> det = SkewDetector("fraud-scorer", "v7", "amount", bins=bins, calibration=cal)
    >>> x = np.concatenate([rng.normal(size=20_000), rng.normal(0.5, 1, size=10_000)])
    >>> signals = det.update({"ts": np.arange(x.size, dtype=float), "bin": bins.bin_numeric(x)})
    >>> first = next(s for s in signals if s.active)
    >>> print(f"Skew detected at value {first.timestamp:.0f}: CUSUM "
    ...       f"{first.details['value']:.1f} > {first.details['threshold']:.1f} nats, "
    ...       f"{first.details['alternative']}")
    Skew detected at value 20147: CUSUM 20.9 > 19.6 nats, mean shift +0.5 sd
    >>> sum(s.active for s in signals if s.timestamp < 20_000)
    0
    >>> window = SkewDetector("fraud-scorer", "v7", "amount", bins=bins, calibration=cal,
    ...                       test="window")
    >>> signals = window.update({"ts": np.arange(x.size, dtype=float),
    ...                          "bin": bins.bin_numeric(x)})
    >>> next(s.timestamp for s in signals if s.active)
    20999.0
    """

    inputs = ("ts", "bin")
    CHECKS = ("training_serving_skew", "label_drift")

    def __init__(self, model: str, version: str, feature: str, *, cohort: str = "stable",
                 bins: FeatureBins, calibration: Calibration,
                 check: str = "training_serving_skew", severity: Severity = "warning",
                 test: str = "sequential", reference_size: int | None = None,
                 bank: Alternatives | None = None) -> None:
        if bins.name != feature:
            raise ValueError(f"bins of {bins.name!r} given for feature {feature!r}")
        if check not in self.CHECKS:
            raise ValueError(f"check must be one of {self.CHECKS}")
        if test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}")
        if reference_size is not None and not reference_size >= 1:
            raise ValueError("reference_size must be >= 1")
        check_severity(severity)
        self.model, self.version, self.feature, self.cohort = model, version, feature, cohort
        self.bins = bins
        self.calibration = calibration
        self.check = check
        self.severity = severity
        self.test = test
        self.reference_size = reference_size
        self._chunks: deque[np.ndarray] = deque()
        self._counter = ChunkCounter(bins.size, calibration.hop)
        self._unseen: dict[str, int] = {}
        self.bank = bank
        if test == "sequential" and not (
                bank is not None and bank.run_length == calibration.run_length
                and bank.reference_size == reference_size
                and bank.reference.size == bins.size):
            bank = alternatives(bins, calibration.run_length, reference_size=reference_size)
        self._seq = (SequentialTest(bank, confirm=calibration.window)
                     if test == "sequential" and bank is not None else None)
        self._quiet = 0  # values since the last signal (sequential)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        for bins in (_test_bins("numeric"), _test_bins("categorical")):
            yield {"model": "m", "version": "v1", "feature": bins.name, "bins": bins,
                   "calibration": calibrate(bins.reference, 400, 100, 1e6)}
        label = _test_bins("categorical", "label")
        yield {"model": "m", "version": "v1", "feature": "label", "cohort": "canary",
               "bins": label, "calibration": calibrate(label.reference, 400, 200, 1e6),
               "check": "label_drift", "severity": "error", "reference_size": 10_000}
        num = _test_bins("numeric")
        yield {"model": "m", "version": "v1", "feature": num.name, "bins": num,
               "calibration": calibrate(num.reference, 400, 100, 1e6), "test": "window"}

    @property
    def key(self) -> str:
        return dedup_key(self.check, self.model, self.version, self.cohort, self.feature)

    def update(self, batch: Batch) -> list[Signal]:
        """Fold bin indices (with their times) in; one signal per full window tested.

        ``category`` (optional, categorical features): the values as category
        keys, aligned with ``bin``; those the reference never listed are kept
        as evidence (a few of them).
        """
        idx = batch["bin"]
        cats = batch.get("category")
        if cats is not None and idx.size and (idx >= self.bins.size - 2).any():
            self._note_unseen([c for c in cats if c not in self.bins.index])
        ts = batch["ts"]
        if self._seq is not None:
            return self._sequential(idx, ts)
        out = []
        chunks_per_window = self.calibration.window // self.calibration.hop
        for last, counts, _ in self._counter.add(idx):
            self._chunks.append(counts)
            if len(self._chunks) > chunks_per_window:
                self._chunks.popleft()
            if len(self._chunks) == chunks_per_window:
                out.append(self._evaluate(float(ts[last])))
        return out

    def _sequential(self, idx: np.ndarray, ts: np.ndarray) -> list[Signal]:
        """The sequential test's alarms and clears, and a status every ``hop`` values."""
        assert self._seq is not None
        changes = self._seq.feed(idx)
        # the chunks before this batch (the evidence of a change), before adding it
        before = (list(self._chunks), self._counter.current.copy()) if changes else ([], None)
        chunks_per_window = self.calibration.window // self.calibration.hop
        for _, counts, _ in self._counter.add(idx):
            self._chunks.append(counts)
            if len(self._chunks) > chunks_per_window:
                self._chunks.popleft()
        out = [self._change_signal(c, idx, ts, before) for c in changes]
        tail = idx.size - 1 - changes[-1].index if changes else idx.size
        self._quiet = tail if changes else self._quiet + idx.size
        if self._quiet >= self.calibration.hop and idx.size:
            self._quiet = 0
            j, value, threshold = self._seq.status()
            out.append(self._status_signal(j, value, threshold, float(ts[-1])))
        return out

    def _recent(self, idx: np.ndarray, at: int, since: int,
                before: tuple[list[np.ndarray], np.ndarray | None]) -> np.ndarray:
        """Counts of the values since the change started (whole chunks before this batch,
        at most a window of them)."""
        lo = max(0, at + 1 - since)
        counts = np.bincount(idx[lo:at + 1], minlength=self.bins.size)
        if since > at + 1:
            chunks, current = before
            assert current is not None
            need = since - (at + 1)
            counts = counts + current
            need -= int(current.sum())
            for c in reversed(chunks):
                if need <= 0:
                    break
                counts = counts + c
                need -= int(c.sum())
        return counts

    def _change_signal(self, c: Change, idx: np.ndarray, ts: np.ndarray,
                       before: tuple[list[np.ndarray], np.ndarray | None]) -> Signal:
        assert self._seq is not None
        alt = self._seq.alternatives
        what = "training/serving skew" if self.check == "training_serving_skew" else "drift"
        details: dict[str, Any] = {
            "feature": self.feature, "statistic": "cusum", "cohort": self.cohort,
            "value": round(c.statistic, 3) if c.alarm else 0.0,
            "threshold": round(c.threshold, 3), "alternative": c.name,
        }
        if c.alarm:
            counts = self._recent(idx, c.index, c.since, before)
            serving = counts / max(int(counts.sum()), 1)
            ref = self.bins.reference
            moved = np.argsort(-np.abs(serving - ref))[:3]
            details.update({
                "feature_type": self.bins.kind,
                "events_since_change_start": c.since,
                "largest_moves": [{"bin": self.bins.labels[i],
                                   "serving": round(float(serving[i]), 4),
                                   "reference": round(float(ref[i]), 4)} for i in moved],
                "window": {"events": int(counts.sum()), "end_ts": float(ts[c.index])},
                "window_js_distance": round(js_distance(serving, ref), 5),
                "calibration": {**alt.describe(c.alternative),
                                "window": self.calibration.to_dict()},
            })
            if self.bins.kind == "categorical":
                details["linf"] = linf_distance(serving, ref)
                details["unseen_categories"] = sorted(self._unseen)
            summary = (f"{self.model} {self.version}: {what} on feature '{self.feature}' "
                       f"({c.name}: CUSUM {c.statistic:.1f} >= "
                       f"{c.threshold:.1f} nats, {c.since:,} values since the change began)")
        else:
            details["events_since_alarm"] = c.since
            summary = (f"{self.model} {self.version}: {what} on feature '{self.feature}' "
                       f"is over (no change found again for {c.since:,} values)")
        return Signal(check=self.check, key=self.key, active=c.alarm, severity=self.severity,
                      summary=summary, timestamp=float(ts[c.index]), model=self.model,
                      version=self.version, details=details)

    def _status_signal(self, j: int, value: float, threshold: float, ts: float) -> Signal:
        assert self._seq is not None
        active = self._seq.alarm is not None
        what = "training/serving skew" if self.check == "training_serving_skew" else "drift"
        name = self._seq.status_name(j) or "none"
        details: dict[str, Any] = {"feature": self.feature, "statistic": "cusum",
                                   "value": round(value, 3), "threshold": round(threshold, 3),
                                   "cohort": self.cohort, "alternative": name}
        if active and self._seq.alarm is not None:
            details["events_since_change_start"] = (self._seq.seen - self._seq.alarm["at"]
                                                    + self._seq.alarm["since"])
            details["last_confirmed_events_ago"] = self._seq.seen - self._seq.alarm.get(
                "confirmed", self._seq.alarm["at"])
        summary = (f"{self.model} {self.version}: {what} on feature '{self.feature}' "
                   f"({'still ' if active else 'no '}change; CUSUM {value:.1f} "
                   f"{'>=' if active else '<'} {threshold:.1f} nats)")
        return Signal(check=self.check, key=self.key, active=active, severity=self.severity,
                      summary=summary, timestamp=ts, model=self.model, version=self.version,
                      details=details)

    def _note_unseen(self, values: list[str]) -> None:
        """Remember a few categories the reference never listed (evidence only)."""
        for v in values:
            if v in self._unseen or len(self._unseen) < 10:
                self._unseen[v] = self._unseen.get(v, 0) + 1

    def _evaluate(self, ts: float) -> Signal:
        counts = np.sum(self._chunks, axis=0)
        serving = counts / counts.sum()
        ref = self.bins.reference
        js = js_distance(serving, ref)
        active = js > self.calibration.threshold
        details: dict[str, Any] = {
            "feature": self.feature, "statistic": "jensen_shannon", "value": round(js, 5),
            "threshold": round(self.calibration.threshold, 5), "cohort": self.cohort,
            "window": {"events": int(counts.sum()), "end_ts": ts},
        }
        if active:  # the evidence; a quiet test (most of them) only needs the figures
            moved = np.argsort(-np.abs(serving - ref))[:3]
            details.update({
                "feature_type": self.bins.kind,
                "largest_moves": [{"bin": self.bins.labels[i],
                                   "serving": round(float(serving[i]), 4),
                                   "reference": round(float(ref[i]), 4)} for i in moved],
                "calibration": self.calibration.to_dict(),
            })
            if self.bins.kind == "categorical":
                details["linf"] = linf_distance(serving, ref)
                details["unseen_categories"] = sorted(self._unseen)
        what = "training/serving skew" if self.check == "training_serving_skew" else "drift"
        summary = (f"{self.model} {self.version}: {what} on feature '{self.feature}' "
                   f"(JS distance {js:.3f} {'>' if active else '<='} "
                   f"{self.calibration.threshold:.3f})")
        return Signal(check=self.check, key=self.key, active=active, severity=self.severity,
                      summary=summary, timestamp=ts, model=self.model, version=self.version,
                      details=details)

    def to_dict(self) -> dict[str, Any]:
        out = {"chunks": [c.tolist() for c in self._chunks], **self._counter.to_dict(),
               "unseen": dict(self._unseen)}
        if self._seq is not None:
            out["sequential"] = self._seq.to_dict()
            out["quiet"] = self._quiet
        return out

    def load_dict(self, data: dict[str, Any]) -> None:
        if not self._counter.load_dict(data):
            return  # the reference changed shape: start afresh
        self._chunks = deque(np.asarray(c, dtype=np.int64) for c in data["chunks"])
        self._unseen = dict(data["unseen"])
        if self._seq is not None and "sequential" in data:
            self._seq.load_dict(data["sequential"])
            self._quiet = int(data.get("quiet", 0))


def _test_bins(kind: str, name: str | None = None) -> FeatureBins:
    """Small fixed reference bins, for ``_unit_test_params`` (skew's and drift's)."""
    if kind == "numeric":
        edges = np.linspace(-2.5, 2.5, 11)
        counts = np.diff(np.array([math.erf(e / math.sqrt(2)) for e in edges])) * 1e4
        prof: dict[str, Any] = {"type": "numeric", "bins": edges.tolist(),
                                "counts": np.round(counts).astype(int).tolist()}
    else:
        prof = {"type": "categorical",
                "frequencies": {"FR": 0.4, "DE": 0.3, "US": 0.2, "__other__": 0.1}}
    bins = FeatureBins.from_profile(name or f"x_{kind}", prof)
    assert bins is not None
    return bins
