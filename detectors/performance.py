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
  estimation, NannyML's CBPE: a score ``p`` is right with probability
  ``cal(p)`` when it says 1, ``1 - cal(p)`` when it says 0) and raises an
  *estimated* ``performance_degradation`` when that estimate drops.
- :class:`ScoreCalibration` is ``cal``: the map score -> P(label = 1) fitted on
  the reference's labelled predictions (histogram binning made monotone by
  pool-adjacent-violators), with the reference's accuracy. Without it the
  score is taken at its word (``cal(p) = p``), which is wrong for any
  miscalibrated model, and the estimate is only compared with itself.

Significance uses the same false-alarm budget as the distribution checks:
``alpha = window / run_length`` per test, plus a minimum effect (``min_drop``)
so a huge window does not page for a tiny change.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from river import stats
from scipy import special

from detectors._river import metrics
from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key
from detectors.quality import pick

try:  # compiled by `pip install -e .` when a C compiler is there (setup.py)
    from detectors import _idhash
except ImportError:  # pragma: no cover - hashlib gives the same hashes, slower
    _idhash = None  # type: ignore[assignment]

__all__ = ["LabelJoin", "PerformanceCheck", "ConfidenceEstimate", "ScoreCalibration",
           "task_of", "pool_adjacent_violators", "raw_correct"]


def _as_binary(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    return None


_NUMBER_OR_BOOL = frozenset({int, float, bool})


def _listed(values: Sequence[Any] | np.ndarray) -> list[Any]:
    """Values as a list of Python objects (an array's as Python scalars)."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


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


Entry = tuple[float, str, str, Any]  # (ts, version, cohort, prediction)

MAX_VALUE_CHARS = 128


def compact_value(v: Any) -> Any:
    """A prediction or label as the join keeps it: strings past ``MAX_VALUE_CHARS``
    become a digest (equal strings stay equal, which is all a class label needs).

    >>> compact_value("fraud"), compact_value("x" * 200)[:5], compact_value(0.5)
    ('fraud', '#a838', 0.5)
    """
    if type(v) is str and len(v) > MAX_VALUE_CHARS:
        return "#" + hashlib.blake2b(v.encode(), digest_size=16).hexdigest()
    return v


def id_hash(event_id: str) -> int:
    """A stable 63-bit hash of an ``event_id`` (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def id_hashes(event_ids: Sequence[str]) -> list[int]:
    """:func:`id_hash` of each ``event_id``: compiled (``detectors/_idhash.c``, about
    0.1 µs an id one at a time, 0.025 eight at a time with AVX-512, against 0.26
    with :mod:`hashlib`), or the digests turned into integers at once.

    >>> id_hashes(["a", "b"]) == [id_hash("a"), id_hash("b")]
    True
    """
    if _idhash is not None:
        return _idhash.hashes(event_ids)
    return _hashlib_hashes(event_ids)


def id_hash_array(event_ids: Sequence[str]) -> np.ndarray:
    """:func:`id_hashes` as an array of uint64, without an int object per id.

    >>> id_hash_array(["a", "b"]).tolist() == id_hashes(["a", "b"])
    True
    """
    if _idhash is not None:
        return np.frombuffer(_idhash.hash_array(event_ids), dtype=np.uint64)
    return np.array(_hashlib_hashes(event_ids), dtype=np.uint64).reshape(len(event_ids))


def id_hash_loop() -> str:
    """Which loop hashes event ids (the worker logs it when it starts folding)."""
    if _idhash is None:
        return "hashlib"
    lanes = getattr(_idhash, "LANES", 1)
    return f"compiled (detectors/_idhash.c, {lanes} at a time)" if lanes > 1 \
        else "compiled (detectors/_idhash.c)"


def _hashlib_hashes(event_ids: Sequence[str]) -> list[int]:
    """:func:`id_hashes` without the compiled loop (and its reference)."""
    blake = partial(hashlib.blake2b, digest_size=8)
    digests = b"".join([blake(e).digest() for e in map(str.encode, event_ids)])
    return (np.frombuffer(digests, dtype=">u8") >> np.uint64(1)).tolist()


class LabelJoin:
    """Predictions waiting for their label, by ``event_id``: bounded, sampled, segmented.

    Bounded in entries (``max_size``) and in event time (``ttl_s``). A model
    busier than ``max_size`` predictions per ``ttl_s`` is *sampled* rather than
    truncated: a prediction is kept when the hash of its ``event_id`` falls
    under a threshold, which halves whenever the buffer would overflow (the
    entries above it are dropped), and doubles again once the buffer has been
    under a quarter full for a whole ``ttl_s``. A label is looked up only when
    its ``event_id`` hashes under the threshold (otherwise it is counted
    ``unsampled``), so labels an hour late still find their predictions at any
    traffic, for a sample whose share ``sample_rate`` says. (Dropping the
    oldest instead would keep only the last ``max_size`` predictions: at
    1,000/s, 20 seconds' worth, and no late label would ever match.)

    Entries live in segments of at most ``segment_size``, in arrival order;
    the checkpoint (:meth:`checkpoint`) writes only the segments changed since
    the last one, each a record of bounded size (a prediction string longer
    than ``MAX_VALUE_CHARS`` is kept as a digest, see :func:`compact_value`).

    >>> j = LabelJoin(max_size=4, ttl_s=100)
    >>> for i in range(6):
    ...     j.add(f"e{i}", float(i), "v1", "stable", 0.1 * i)
    >>> len(j), j.sample_rate, j.stats()["dropped"]
    (2, 0.5, 3)
    >>> [e for e in (f"e{i}" for i in range(6)) if j.match(e) is not None]
    ['e0', 'e1']
    >>> j.stats()["unsampled"], j.stats()["unmatched"]
    (4, 0)
    """

    def __init__(self, max_size: int = 20_000, ttl_s: float = 3600.0,
                 segment_size: int = 1_000) -> None:
        if max_size < 1 or ttl_s <= 0 or segment_size < 1:
            raise ValueError("max_size and segment_size must be >= 1 and ttl_s > 0")
        self.max_size, self.ttl_s, self.segment_size = max_size, ttl_s, segment_size
        self._halvings = 0                    # kept share of event ids: 2 ** -halvings
        self._changed_at = -math.inf          # event time of the last change of the share
        self._low_since: float | None = None  # event time since the buffer is under 1/4
        self._segments: dict[int, dict[int, Entry]] = {}  # oldest first
        self._where: dict[int, int] = {}      # id hash -> segment
        self._open = 0                        # the segment new entries go to
        self._names: dict[str, str] = {}      # one string object per version and cohort
        self._dirty: set[int] = set()         # segments changed since the last checkpoint
        self._gone: set[int] = set()          # segments emptied since the last checkpoint
        self._counts = {"matched": 0, "unmatched": 0, "unsampled": 0, "expired": 0,
                        "dropped": 0}

    def __len__(self) -> int:
        return len(self._where)

    @property
    def sample_rate(self) -> float:
        return 2.0 ** -self._halvings

    @property
    def _limit(self) -> int:
        return 1 << (63 - self._halvings)

    def add(self, event_id: str, ts: float, version: str, cohort: str, prediction: Any) -> None:
        h = id_hash(event_id)
        if h >= self._limit:
            return
        if h in self._where:  # the same event again (a replay): keep one
            self._remove(h)
        seg = self._segments.get(self._open)
        if seg is None or len(seg) >= self.segment_size:
            if seg is not None:
                self._open += 1
            seg = self._segments[self._open] = {}
        names = self._names
        v, c = names.setdefault(version, version), names.setdefault(cohort, cohort)
        seg[h] = (ts, v, c, compact_value(prediction))
        self._where[h] = self._open
        self._dirty.add(self._open)
        while len(self._where) > self.max_size:
            self._halve(ts)

    def add_many(self, event_ids: Sequence[str], ts: Sequence[float] | np.ndarray,
                 versions: Sequence[str], cohorts: Sequence[str],
                 predictions: Sequence[Any]) -> None:
        """:meth:`add` of each prediction in turn (the same state), the ids hashed at once
        and those outside the sample passed over at once (the share only shrinks within
        a call: an id over the limit at the start is over it at every step)."""
        hashes = id_hash_array(event_ids)
        rows = np.flatnonzero(hashes < self._limit)
        if rows.size == 0:
            return
        kept = rows.tolist()
        kept_hashes = hashes[rows].tolist()
        where = self._where
        if len(where) + len(kept) <= self.max_size and where.keys().isdisjoint(kept_hashes) \
                and len(set(kept_hashes)) == len(kept_hashes):  # the usual batch
            self._append(kept_hashes, pick(ts, kept), pick(versions, kept), pick(cohorts, kept),
                         pick(predictions, kept))
            return
        segments, names, dirty = self._segments, self._names, self._dirty
        limit, size, most = self._limit, self.segment_size, self.max_size
        seg = segments.get(self._open)
        for h, t, v, c, p in zip(kept_hashes, pick(ts, kept), pick(versions, kept),
                                 pick(cohorts, kept), pick(predictions, kept), strict=True):
            if h >= limit:
                continue
            if h in where:  # the same event again (a replay): keep one
                self._remove(h)  # never drops the open segment
            if seg is None or len(seg) >= size:
                if seg is not None:
                    self._open += 1
                seg = segments[self._open] = {}
            seg[h] = (t, names.setdefault(v, v), names.setdefault(c, c),
                      compact_value(p) if type(p) is str else p)
            where[h] = self._open
            dirty.add(self._open)
            if len(where) > most:
                while len(where) > most:
                    self._halve(t)
                limit = self._limit

    def _append(self, hashes: list[int], ts: list[float], versions: list[str],
                cohorts: list[str], predictions: list[Any]) -> None:
        """:meth:`add_many`'s loop for new ids that all fit (no repeat, no halving):
        the open segment filled, then new ones, a segment's entries at once."""
        names = self._names
        canon = {k: names.setdefault(k, k) for k in {*versions, *cohorts}}
        entries = list(zip(ts, map(canon.__getitem__, versions), map(canon.__getitem__, cohorts),
                           [compact_value(p) for p in predictions]
                           if str in set(map(type, predictions)) else predictions,
                           strict=True))
        where, segments, size = self._where, self._segments, self.segment_size
        seg = segments.get(self._open)
        at = 0
        while at < len(hashes):
            if seg is None or len(seg) >= size:
                if seg is not None:
                    self._open += 1
                seg = segments[self._open] = {}
            part = hashes[at:at + size - len(seg)]
            seg.update(zip(part, entries[at:at + len(part)], strict=True))
            where.update(dict.fromkeys(part, self._open))
            self._dirty.add(self._open)
            at += len(part)

    def _halve(self, ts: float) -> None:
        """Halve the kept share: drop the entries hashed over the new limit (as
        :meth:`_remove` would, one by one), a segment at a time."""
        self._halvings += 1
        self._changed_at, self._low_since = ts, None
        limit = self._limit
        where = self._where  # in place: add_many holds it
        over = [h for h in where if h >= limit]
        for h in over:
            del where[h]
        self._counts["dropped"] += len(over)
        for sid, seg in list(self._segments.items()):
            over = [h for h in seg if h >= limit]
            if not over:
                continue
            for h in over:
                del seg[h]
            self._dirty.add(sid)
            if not seg and sid != self._open:
                del self._segments[sid]
                self._dirty.discard(sid)
                self._gone.add(sid)

    def _remove(self, h: int) -> Entry:
        sid = self._where.pop(h)
        seg = self._segments[sid]
        entry = seg.pop(h)
        self._dirty.add(sid)
        if not seg and sid != self._open:
            del self._segments[sid]
            self._dirty.discard(sid)
            self._gone.add(sid)
        return entry

    def match(self, event_id: str) -> Entry | None:
        h = id_hash(event_id)
        if h >= self._limit:
            self._counts["unsampled"] += 1
            return None
        if h not in self._where:
            self._counts["unmatched"] += 1
            return None
        self._counts["matched"] += 1
        return self._remove(h)

    def match_many(self, event_ids: Sequence[str]) -> list[Entry | None]:
        """:meth:`match` of each ``event_id`` in turn, the ids hashed at once and those
        outside the sample counted at once."""
        out: list[Entry | None] = [None] * len(event_ids)
        hashes = id_hash_array(event_ids)
        rows = np.flatnonzero(hashes < self._limit)
        where, counts = self._where, self._counts
        counts["unsampled"] += len(out) - rows.size
        for i, h in zip(rows.tolist(), hashes[rows].tolist(), strict=True):
            if h not in where:
                counts["unmatched"] += 1
            else:
                counts["matched"] += 1
                out[i] = self._remove(h)
        return out

    def expire(self, watermark: float) -> int:
        """Forget predictions older than the TTL (event time); return how many."""
        n = 0
        horizon = watermark - self.ttl_s
        for sid in list(self._segments):
            seg = self._segments[sid]
            old = [h for h, e in seg.items() if e[0] < horizon]
            for h in old:
                self._remove(h)
            n += len(old)
            if seg:
                break  # entries arrive in time order: the rest are newer
        self._counts["expired"] += n
        self._maybe_double(watermark)
        return n

    def _maybe_double(self, watermark: float) -> None:
        if not self._halvings:
            return
        if len(self._where) >= self.max_size // 4:
            self._low_since = None
        elif self._low_since is None:
            self._low_since = watermark
        elif watermark - max(self._low_since, self._changed_at) >= self.ttl_s:
            self._halvings -= 1
            self._changed_at, self._low_since = watermark, None

    def stats(self) -> dict[str, float]:
        return {**self._counts, "waiting": len(self._where), "sample_rate": self.sample_rate}

    # -- checkpoint ------------------------------------------------------------

    def checkpoint(self) -> tuple[dict[str, Any], dict[int, dict[str, Any] | None]]:
        """The small state (with the model's) and the segments changed since the last
        call: segment id -> its record, or None for a segment now empty."""
        changed: dict[int, dict[str, Any] | None] = {sid: None for sid in self._gone}
        for sid in self._dirty:
            seg = self._segments.get(sid)
            if seg is None:
                changed[sid] = None
                continue
            names: dict[tuple[str, str], int] = {}
            entries = [[h, ts, names.setdefault((v, c), len(names)), p]
                       for h, (ts, v, c, p) in seg.items()]
            changed[sid] = {"names": [list(k) for k in names], "entries": entries}
        self._dirty, self._gone = set(), set()
        return self.meta(), changed

    def meta(self) -> dict[str, Any]:
        return {"segments": list(self._segments), "open": self._open,
                "halvings": self._halvings, "changed_at": _finite(self._changed_at),
                "low_since": self._low_since, "counts": dict(self._counts)}

    def load(self, meta: dict[str, Any], segments: dict[int, dict[str, Any] | None]) -> None:
        """Restore from :meth:`checkpoint`'s output (missing segments are skipped)."""
        self._halvings = int(meta.get("halvings", 0))
        changed = meta.get("changed_at")
        self._changed_at = -math.inf if changed is None else float(changed)
        self._low_since = meta.get("low_since")
        self._counts = {**self._counts, **meta.get("counts", {})}
        self._open = int(meta.get("open", 0))
        self._segments, self._where = {}, {}
        for sid in meta.get("segments", []):
            rec = segments.get(int(sid))
            if rec is None:
                continue
            names = [(self._names.setdefault(v, v), self._names.setdefault(c, c))
                     for v, c in rec["names"]]
            seg = self._segments[int(sid)] = {}
            for h, ts, k, p in rec["entries"]:
                if h not in self._where:
                    seg[h] = (ts, *names[k], p)
                    self._where[h] = int(sid)
        self._dirty, self._gone = set(), set()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


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
    severity
        Of the alert.

    Examples
    --------
    A fraud classifier right 90 % of the time whose labels, from the 2,000th on,
    agree with it only 75 % of the time; its reference accuracy (from the
    training profile) is 0.9.

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> det = PerformanceCheck("fraud-scorer", "v7", window=500, reference=0.9)
    >>> y = rng.integers(0, 2, 4000)
    >>> right = rng.random(4000) < np.where(np.arange(4000) < 2000, 0.9, 0.75)
    >>> p = np.where(right == (y == 1), 0.8, 0.2)
    >>> for s in det.update({"ts": np.arange(4000.0), "prediction": p.tolist(),
    ...                      "label": y.tolist()}):
    ...     print(f"label {s.timestamp:.0f}: {'ALERT' if s.active else 'ok'} "
    ...           f"accuracy {s.details['value']:.3f}")
    label 499: ok accuracy 0.906
    label 999: ok accuracy 0.900
    label 1499: ok accuracy 0.896
    label 1999: ok accuracy 0.898
    label 2499: ALERT accuracy 0.752
    label 2999: ALERT accuracy 0.796
    label 3499: ALERT accuracy 0.770
    label 3999: ALERT accuracy 0.750
    """

    inputs = ("ts", "prediction", "label")

    def __init__(self, model: str, version: str, *, cohort: str = "stable", window: int = 500,
                 run_length: float = 60_480_000, min_drop: float = 0.02,
                 reference: float | None = None, severity: Severity = "error") -> None:
        if not (window >= 10 and run_length > window):
            raise ValueError("need window >= 10 and run_length > window")
        if not 0 <= min_drop < math.inf:
            raise ValueError("min_drop must be >= 0")
        if reference is not None and not 0 <= reference < math.inf:
            raise ValueError("reference must be a metric value >= 0")
        check_severity(severity)
        self.model, self.version, self.cohort = model, version, cohort
        self.window, self.run_length, self.min_drop = window, run_length, min_drop
        self.reference = reference
        self.severity = severity
        self.alpha = window / run_length
        self._reference = reference          # learned from the first window when None
        self._source = "profile" if reference is not None else "first_window"
        self.task: str | None = None
        self._reset()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"model": "m", "version": "v1", "window": 200, "run_length": 1e6}
        yield {"model": "m", "version": "v1", "cohort": "canary", "window": 100,
               "run_length": 1e5, "min_drop": 0.05, "reference": 0.9, "severity": "warning"}

    @property
    def key(self) -> str:
        return dedup_key("performance_degradation", self.model, self.version, self.cohort)

    @property
    def learned_reference(self) -> float | None:
        """The reference in use: the given one, or the first window's."""
        return self._reference

    def _reset(self) -> None:
        self._n = 0
        # River's metrics read one confusion matrix, which a run of labels updates once
        # per distinct (label, decision) pair with its count as the weight: the same
        # figures as one update per label, for a handful of calls per micro-batch
        self._cm = metrics.ConfusionMatrix()
        self._accuracy = metrics.Accuracy(cm=self._cm)
        self._f1 = metrics.F1(cm=self._cm)
        self._logloss = stats.Mean()  # of the run's log losses, each run's mean weighted
        self._mae = stats.Mean()
        self._abs_err: list[float] = []
        self._pairs: list[list[Any]] = []  # the window's (prediction, label): the checkpoint

    def update(self, batch: Batch) -> list[Signal]:
        """Score labelled predictions (in order); a signal per full window."""
        preds, labels = _listed(batch["prediction"]), _listed(batch["label"])
        if not preds:
            return []
        if self.task is None:
            self.task = task_of(preds[0], labels[0])
        ts = batch["ts"]
        scored = self._scorable(preds, labels)
        out = []
        while scored:
            run, scored = scored[:self.window - self._n], scored[self.window - self._n:]
            self._fold([preds[i] for i in run], [labels[i] for i in run])
            if self._n >= self.window:
                signal = self._evaluate(float(ts[run[-1]]))
                self._reset()
                if signal is not None:
                    out.append(signal)
        return out

    def _scorable(self, preds: Sequence[Any], labels: Sequence[Any]) -> list[int]:
        """The positions of the pairs this check can score (its task's types)."""
        if self.task == "binary_proba":
            return [i for i, (p, y) in enumerate(zip(preds, labels, strict=True))
                    if type(p) in _NUMBER_OR_BOOL and _as_binary(y) is not None]
        if self.task == "classification":
            return list(range(len(preds)))
        return [i for i, (p, y) in enumerate(zip(preds, labels, strict=True))
                if type(p) in _NUMBER_OR_BOOL and type(y) in _NUMBER_OR_BOOL]

    def _fold(self, preds: list[Any], labels: list[Any]) -> None:
        """Fold a run of scorable pairs into the window (it does not overflow it)."""
        n = len(preds)
        if self.task == "binary_proba":
            y = (np.asarray(labels, dtype=float) == 1).astype(np.int64)  # 0/1, bools too
            p = np.clip(np.asarray(preds, dtype=float), 1e-15, 1 - 1e-15)
            said = p >= 0.5
            cells = np.bincount(2 * y + said, minlength=4)
            for cell in np.flatnonzero(cells):
                self._cm.update(bool(cell >= 2), bool(cell % 2), w=float(cells[cell]))
            loss = -np.where(y == 1, np.log(p), np.log(1.0 - p))
            self._logloss.update(float(loss.mean()), w=n)
        elif self.task == "classification":
            for (truth, said_), count in Counter(zip(map(str, labels), map(str, preds),
                                                     strict=True)).items():
                self._cm.update(truth, said_, w=float(count))
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # 1e308 - -1e308: inf, as River
                err = np.abs(np.asarray(preds, dtype=float) - np.asarray(labels, dtype=float))
            self._mae.update(float(err.mean()), w=n)
            self._abs_err.extend(err.tolist())
        self._n += n
        self._pairs.extend([p, y] for p, y in zip(preds, labels, strict=True))

    def _evaluate(self, ts: float) -> Signal | None:
        n = self._n
        if self.task == "regression":
            value = self._mae.get()
            if self._reference is None:
                self._reference = value
                return None
            errs = np.asarray(self._abs_err)
            se = float(errs.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
            z = (value - self._reference) / se if se > 0 else 0.0
            p = float(special.ndtr(-z))  # the normal's upper tail
            worse = value > self._reference * (1 + self.min_drop)
            statistic, relation = "mae", ">"
        else:
            value = self._accuracy.get()
            if self._reference is None:
                self._reference = value
                return None
            correct = round(value * n)
            p = float(special.bdtr(correct, n, min(max(self._reference, 1e-9), 1.0)))  # binom CDF
            worse = value < self._reference - self.min_drop
            statistic, relation = "accuracy", "<"
        active = worse and p < self.alpha
        details: dict[str, Any] = {
            "statistic": statistic, "value": round(value, 5),
            "reference": round(self._reference, 5), "reference_source": self._source,
            "p_value": p, "alpha_per_test": self.alpha, "min_drop": self.min_drop,
            "task": self.task, "cohort": self.cohort, "window": {"labels": n, "end_ts": ts},
            "estimate": False,
        }
        if self.task == "binary_proba":
            details["f1"] = round(self._f1.get(), 5)
            details["log_loss"] = round(self._logloss.get(), 5)
        verdict = relation if active else "vs"
        return Signal(
            check="performance_degradation", key=f"{self.key}:{statistic}",
            active=active, severity=self.severity,
            summary=(f"{self.model} {self.version}: {statistic} {value:.3f} {verdict} "
                     f"reference {self._reference:.3f} over {n} labelled predictions"),
            timestamp=ts, model=self.model, version=self.version, details=details)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self._reference, "source": self._source, "task": self.task,
                "window": [list(pair) for pair in self._pairs]}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._reference, self._source = data["reference"], data["source"]
        self.task = data["task"]
        self._reset()
        pairs = data.get("window", [])  # River's metrics are not JSON
        if pairs:
            preds, labels = [p for p, _ in pairs], [y for _, y in pairs]
            rows = self._scorable(preds, labels)
            self._fold([preds[i] for i in rows], [labels[i] for i in rows])


MAX_KNOTS = 200  # a profile's calibration may carry at most this many knots


def pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted least squares (isotonic).

    >>> pool_adjacent_violators(np.array([0.1, 0.4, 0.3, 0.8]), np.array([1, 1, 3, 1.0]))
    array([0.1  , 0.325, 0.325, 0.8  ])
    """
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            merged = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum if wsum > 0 else vals[-1]
            vals[-2:], wts[-2:], sizes[-2:] = [merged], [wsum], [sizes[-2] + sizes[-1]]
    return np.repeat(np.asarray(vals, dtype=float), sizes)


def raw_correct(p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """How likely each score is right taken at its word: ``p`` if it says 1, else ``1 - p``."""
    return np.where(p >= threshold, p, 1.0 - p)


def _unit(x: float, name: str) -> float:
    if not 0.0 <= x <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1], not {x!r}")
    return float(x)


@dataclass(frozen=True)
class ScoreCalibration:
    """What a binary classifier's score means, learned from the reference's labels.

    ``scores`` are knots (the mean score of each histogram bin of the
    reference's predictions, increasing) and ``rates`` the share of positive
    labels there, made non-decreasing by pool-adjacent-violators (isotonic);
    between knots the map is linear, outside them flat. ``counts`` are the
    reference rows per knot. The decision ``threshold`` is a bin edge, so no
    bin mixes the two decisions. ``accuracy`` is the reference's realized
    accuracy at the threshold, ``expected_accuracy`` what the map expects on the
    reference (close to it by construction; the difference is the binning's
    error), and ``raw_accuracy`` what the raw confidence expects there (the gap
    to ``accuracy`` is the model's miscalibration).

    An overconfident model: its score says 0.9 where the truth is 0.68.

    >>> rng = np.random.default_rng(42)
    >>> x = rng.normal(0, 1.5, 20_000)
    >>> y = (rng.random(x.size) < 1 / (1 + np.exp(-2 * x))).astype(int)
    >>> p = 1 / (1 + np.exp(-6 * x))
    >>> cal = ScoreCalibration.fit(p, y)
    >>> len(cal.scores), round(cal.accuracy, 3), round(cal.raw_accuracy, 3)
    (50, 0.837, 0.939)
    >>> cal.probability(np.array([0.1, 0.5, 0.9])).round(2)
    array([0.32, 0.51, 0.68])
    """

    scores: tuple[float, ...]
    rates: tuple[float, ...]
    counts: tuple[int, ...]
    threshold: float
    accuracy: float
    expected_accuracy: float
    raw_accuracy: float

    def __post_init__(self) -> None:
        n = len(self.scores)
        if not 1 <= n <= MAX_KNOTS or len(self.rates) != n or len(self.counts) != n:
            raise ValueError(f"a calibration has 1 to {MAX_KNOTS} knots, as many scores as "
                             f"rates and counts")
        for v in (*self.scores, *self.rates):
            _unit(v, "scores and rates")
        if any(b <= a for a, b in zip(self.scores, self.scores[1:], strict=False)):
            raise ValueError("calibration scores must increase")
        if any(b < a for a, b in zip(self.rates, self.rates[1:], strict=False)):
            raise ValueError("calibration rates must not decrease")
        if any(c < 0 for c in self.counts) or sum(self.counts) < 1:
            raise ValueError("calibration counts must be >= 0, and not all 0")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("the decision threshold must be in (0, 1)")
        for name in ("accuracy", "expected_accuracy", "raw_accuracy"):
            _unit(getattr(self, name), name)

    @property
    def rows(self) -> int:
        return sum(self.counts)

    def probability(self, p: np.ndarray) -> np.ndarray:
        """P(label = 1) for each score."""
        return np.interp(p, self.scores, self.rates)

    def expected_correct(self, p: np.ndarray) -> np.ndarray:
        """How likely each prediction is right."""
        q = self.probability(p)
        return np.where(p >= self.threshold, q, 1.0 - q)

    @classmethod
    def from_bins(cls, counts: ArrayLike, score_sums: ArrayLike, positives: ArrayLike,
                  correct: ArrayLike, raw_sums: ArrayLike,
                  threshold: float = 0.5) -> ScoreCalibration:
        """From per-bin sums over the reference (bins in score order, none straddling the
        threshold): rows, scores, positive labels, right decisions, raw confidences."""
        n = np.asarray(counts, dtype=float)
        keep = n > 0
        if not keep.any():
            raise ValueError("no labelled probabilities to calibrate on")
        n = n[keep]
        x = np.asarray(score_sums, dtype=float)[keep] / n
        pos = np.asarray(positives, dtype=float)[keep]
        rates = np.clip(pool_adjacent_violators(pos / n, n), 0.0, 1.0)
        says_one = x >= threshold
        expected = float(np.where(says_one, rates, 1 - rates) @ n) / float(n.sum())
        total = float(n.sum())
        # Bins are disjoint, so their mean scores increase; merge any tie all the same.
        xs, ys, ns = [float(x[0])], [float(rates[0])], [int(n[0])]
        for xi, yi, ni in zip(x[1:].tolist(), rates[1:].tolist(), n[1:].tolist(), strict=True):
            if xi <= xs[-1]:
                ys[-1] = (ys[-1] * ns[-1] + yi * ni) / (ns[-1] + ni)
                ns[-1] += int(ni)
            else:
                xs.append(xi)
                ys.append(yi)
                ns.append(int(ni))
        return cls(tuple(xs), tuple(ys), tuple(ns), float(threshold),
                   float(np.sum(np.asarray(correct, dtype=float))) / total,
                   min(max(expected, 0.0), 1.0),
                   float(np.sum(np.asarray(raw_sums, dtype=float))) / total)

    @staticmethod
    def edges(quantiles: Sequence[float], threshold: float) -> np.ndarray:
        """Inner bin edges: the score quantiles and the threshold (one decision per bin)."""
        qs = np.asarray(quantiles, dtype=float)
        return np.unique(np.append(qs[(qs > 0) & (qs < 1)], threshold))

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5,
            max_knots: int = 50) -> ScoreCalibration:
        """Fit on labelled probabilities (in memory; ``profile build`` does the same in
        streaming passes with Polars)."""
        if not 2 <= max_knots <= MAX_KNOTS:
            raise ValueError(f"max_knots must be in [2, {MAX_KNOTS}]")
        p = np.asarray(scores, dtype=float)
        y = np.asarray(labels, dtype=float)
        ok = np.isfinite(p) & (p >= 0) & (p <= 1) & ((y == 0) | (y == 1))
        p, y = p[ok], y[ok]
        if p.size == 0:
            raise ValueError("no labelled probabilities to calibrate on")
        inner = cls.edges(np.quantile(p, np.linspace(0, 1, max_knots)[1:-1]), threshold)
        b = np.searchsorted(inner, p, side="right")
        k = inner.size + 1

        def per_bin(v: np.ndarray) -> np.ndarray:
            return np.bincount(b, weights=v, minlength=k)

        right = ((p >= threshold) == (y == 1)).astype(float)
        return cls.from_bins(np.bincount(b, minlength=k), per_bin(p), per_bin(y),
                             per_bin(right), per_bin(raw_correct(p, threshold)), threshold)

    def to_dict(self) -> dict[str, Any]:
        """The profile's ``performance.score_calibration``."""
        return {"method": "histogram_isotonic", "threshold": self.threshold,
                "scores": list(self.scores), "rates": list(self.rates),
                "counts": list(self.counts), "rows": self.rows, "accuracy": self.accuracy,
                "expected_accuracy": self.expected_accuracy, "raw_accuracy": self.raw_accuracy}

    @classmethod
    def from_dict(cls, data: Any) -> ScoreCalibration:
        """``ValueError`` unless ``data`` is a valid :meth:`to_dict` output."""
        if not isinstance(data, dict):
            raise ValueError("score_calibration must be an object")
        try:
            return cls(tuple(float(v) for v in data["scores"]),
                       tuple(float(v) for v in data["rates"]),
                       tuple(int(v) for v in data["counts"]),
                       float(data.get("threshold", 0.5)), float(data["accuracy"]),
                       float(data["expected_accuracy"]), float(data["raw_accuracy"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"score_calibration: bad or missing field: {exc}") from None

class ConfidenceEstimate:
    """Accuracy estimated from probabilities alone (no labels needed), NannyML's CBPE way.

    A prediction ``p`` says 1 when ``p >= threshold``; it is right with
    probability ``q = cal(p)`` then, ``1 - q`` otherwise. The mean of that over
    a window estimates the window's accuracy, and its standard error follows
    from those Bernoulli variances.

    - **Calibrated** (``calibration`` given, from the reference's labelled
      predictions): ``cal`` is the fitted map, and the estimate is compared with
      the reference's realized accuracy (whose own sampling noise is added to
      the test's). This holds under covariate shift, as long as what a score
      means does not change (no concept shift).
    - **Uncalibrated**: ``cal(p) = p``, right only for a calibrated model, and
      the reference is the version's first window (the estimate is compared with
      itself, so a miscalibrated but stable model does not alert). The alert
      says ``uncalibrated``.

    Every signal carries both estimates: ``value`` (calibrated when it can be)
    and ``raw_value`` (the raw confidence).

    Parameters
    ----------
    model, version, cohort
        The series.
    calibration
        The reference's :class:`ScoreCalibration`; None: uncalibrated.
    window
        Predictions per estimate.
    run_length
        Predictions between false alarms.
    min_drop
        Smallest drop of the estimated accuracy worth an alert.
    severity
        Of the alert.

    Examples
    --------
    Scores that are confident (near 0 or 1) for 6,000 predictions, then hesitant
    (near 0.5): the model no longer knows.

    >>> rng = np.random.default_rng(42)
    >>> det = ConfidenceEstimate("fraud-scorer", "v7", window=2000)
    >>> sure = np.where(rng.random(6000) < 0.3, rng.uniform(0.85, 1, 6000),
    ...                 rng.uniform(0, 0.15, 6000))
    >>> p = np.concatenate([sure, rng.uniform(0.3, 0.7, 4000)])
    >>> for s in det.update({"ts": np.arange(p.size, dtype=float), "prediction": p}):
    ...     print(f"prediction {s.timestamp:.0f}: {'ALERT' if s.active else 'ok'} "
    ...           f"{s.details['value']:.3f} vs {s.details['reference']:.3f} "
    ...           f"({s.details['calibration']})")
    prediction 3999: ok 0.924 vs 0.926 (uncalibrated)
    prediction 5999: ok 0.925 vs 0.926 (uncalibrated)
    prediction 7999: ALERT 0.601 vs 0.926 (uncalibrated)
    prediction 9999: ALERT 0.601 vs 0.926 (uncalibrated)

    The first window (to prediction 1999) is the reference. An overconfident
    model (score ``sigmoid(6x)`` where the truth is ``sigmoid(2x)``), calibrated
    on its labelled reference, then serving a population moved towards ``x = 0``:
    the raw confidence barely moves, the calibrated estimate follows the truth.

    >>> def population(n, spread):
    ...     x = rng.normal(0, spread, n)
    ...     return 1 / (1 + np.exp(-6 * x)), (rng.random(n) < 1 / (1 + np.exp(-2 * x)))
    >>> p_ref, y_ref = population(20_000, 1.5)
    >>> det = ConfidenceEstimate("fraud-scorer", "v7", window=2000,
    ...                          calibration=ScoreCalibration.fit(p_ref, y_ref))
    >>> p, y = population(4000, 0.4)
    >>> for s in det.update({"ts": np.arange(p.size, dtype=float), "prediction": p}):
    ...     d, end = s.details, int(s.timestamp) + 1
    ...     realized = ((p >= 0.5) == y)[end - 2000:end].mean()
    ...     print(f"{'ALERT' if s.active else 'ok'} {d['value']:.3f} (raw {d['raw_value']:.3f})"
    ...           f" vs {d['reference']:.3f}; realized {realized:.3f}")
    ALERT 0.655 (raw 0.811) vs 0.838; realized 0.637
    ALERT 0.653 (raw 0.808) vs 0.838; realized 0.660
    """

    inputs = ("ts", "prediction")

    def __init__(self, model: str, version: str, *, cohort: str = "stable",
                 calibration: ScoreCalibration | None = None, window: int = 2000,
                 run_length: float = 60_480_000, min_drop: float = 0.02,
                 severity: Severity = "warning") -> None:
        if not (window >= 10 and run_length > window):
            raise ValueError("need window >= 10 and run_length > window")
        if not 0 <= min_drop < 1:
            raise ValueError("min_drop must be in [0, 1)")
        if calibration is not None and not isinstance(calibration, ScoreCalibration):
            raise ValueError("calibration must be a ScoreCalibration")
        check_severity(severity)
        self.model, self.version, self.cohort = model, version, cohort
        self.calibration = calibration
        self.window, self.run_length, self.min_drop = window, run_length, min_drop
        self.severity = severity
        self.alpha = window / run_length
        self.threshold = calibration.threshold if calibration is not None else 0.5
        self.reference: float | None = (calibration.accuracy if calibration is not None
                                        else None)
        self._sum = 0.0   # expected right decisions (calibrated when it can be)
        self._var = 0.0   # their Bernoulli variances
        self._raw = 0.0   # the same from the raw confidence
        self._n = 0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"model": "m", "version": "v1", "window": 400, "run_length": 1e6}
        yield {"model": "m", "version": "v1", "cohort": "canary", "window": 200,
               "run_length": 1e5, "min_drop": 0.05, "severity": "error"}
        # Scores meaning what they say, and a reference right 90 % of the time.
        yield {"model": "m", "version": "v1", "window": 400, "run_length": 1e6,
               "calibration": ScoreCalibration((0.0, 1.0), (0.0, 1.0), (5000, 5000), 0.5,
                                               0.9, 0.9, 0.9)}

    @property
    def key(self) -> str:
        return dedup_key("performance_degradation", self.model, self.version, self.cohort,
                         "estimated_accuracy")

    def update(self, batch: Batch) -> list[Signal]:
        """Fold probabilities in (``prediction``: values in [0, 1], others filtered first);
        a signal per full window (uncalibrated: after the first, the reference)."""
        probs = np.asarray(batch["prediction"], dtype=float)
        ts = batch["ts"]
        out: list[Signal] = []
        cal = self.calibration
        raw = raw_correct(probs, self.threshold)
        right = cal.expected_correct(probs) if cal is not None else raw
        pos = 0
        while pos < right.size:
            take = min(self.window - self._n, right.size - pos)
            part = right[pos:pos + take]
            self._sum += float(part.sum())
            self._var += float((part * (1 - part)).sum())
            self._raw += float(raw[pos:pos + take].sum())
            self._n += take
            pos += take
            if self._n == self.window:
                sig = self._evaluate(float(ts[pos - 1]))
                if sig is not None:
                    out.append(sig)
                self._sum = self._var = self._raw = 0.0
                self._n = 0
        return out

    def _evaluate(self, ts: float) -> Signal | None:
        n, cal = self._n, self.calibration
        value, raw = self._sum / n, self._raw / n
        if self.reference is None:
            self.reference = value
            return None
        ref = self.reference
        var = self._var / n ** 2
        if cal is not None:  # the reference accuracy is itself a sample of cal.rows
            var += ref * (1 - ref) / cal.rows
        se = math.sqrt(var)
        p = float(special.ndtr((value - ref) / se)) if se > 0 else 1.0
        active = value < ref - self.min_drop and p < self.alpha
        details: dict[str, Any] = {
            "statistic": "estimated_accuracy", "value": round(value, 5),
            "raw_value": round(raw, 5), "reference": round(ref, 5), "p_value": p,
            "alpha_per_test": self.alpha, "min_drop": self.min_drop,
            "threshold": self.threshold, "estimate": True,
            "calibration": "calibrated" if cal is not None else "uncalibrated",
            "method": "confidence-based performance estimation",
            "cohort": self.cohort, "window": {"events": n, "end_ts": ts}}
        if cal is not None:
            details.update(reference_source="profile", reference_expected=round(
                cal.expected_accuracy, 5), reference_raw=round(cal.raw_accuracy, 5),
                reference_rows=cal.rows)
            how = (f"calibrated on the reference's {cal.rows:,} labels; raw confidence "
                   f"says {raw:.3f}")
        else:
            details["reference_source"] = "first_window"
            how = ("uncalibrated: raw prediction confidence, vs the version's first window; "
                   "profile the reference with its labels to calibrate")
        return Signal(
            check="performance_degradation", key=self.key,
            active=active, severity=self.severity,
            summary=(f"{self.model} {self.version}: estimated accuracy {value:.3f} "
                     f"{'<' if active else 'vs'} reference {ref:.3f} over {n} predictions "
                     f"(an estimate, no labels; {how})"),
            timestamp=ts, model=self.model, version=self.version, details=details)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "sum": self._sum, "var": self._var,
                "raw": self._raw, "n": self._n, "calibrated": self.calibration is not None}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.reference = data["reference"]
        self._sum, self._var, self._n = data["sum"], data["var"], data["n"]
        self._raw = data.get("raw", self._sum)  # checkpoints before 'raw': uncalibrated
