"""Data quality of serving features, each issue judged against its reference rate.

Per (model, version), the features of every ``window`` consecutive events are
counted for: missing values, type mismatches (a string where the profile says
numeric, an object or a list anywhere), NaN/inf, numbers outside the training
range, and features the profile does not know. One bad event is not an
incident: an issue fires when, over a whole window, its count is both

- significantly above the reference rate (a one-sided binomial test at the
  false-alarm budget ``alpha = window / run_length``, the same budget as the
  distribution checks), and
- above the reference rate by at least ``min_excess`` (default 1 point), so a
  huge window does not page for a 0.01 % change.

Reference rates: ``missing_rate`` from the profile; type mismatches and NaN/inf
are 0 in a typed training table; out-of-range gets ``2 / (rows + 1)``, the
chance that a new value from the training distribution falls outside the
training sample's min and max; an unknown feature is expected in no event.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from scipy import special

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key

__all__ = ["as_rows", "FeatureSpec", "FeatureColumns", "FeatureTable", "QualityDetector", "ISSUES",
           "floats", "take"]

ISSUES = ("missing", "type_mismatch", "non_finite", "out_of_range")
_NUMBER = (int, float)
_EMPTY: dict[str, Any] = {}
_NUMBER_TYPES = frozenset(_NUMBER)


#: One feature's values: a list of objects, or float64 values when every one is a float.
Column = list[Any] | np.ndarray


class FeatureTable(Sequence[dict[str, Any]]):
    """Feature objects that all have the same names, held as one column per name.

    What the batch form's fast path reads (``streams/core/_batchparse.c``): a
    message whose events share their feature names, without a dict per event.
    A column is a list of the values, or a float64 array when every value is a
    float (the usual numeric feature: no float object per value). It reads as
    the list of objects it stands for (``table[i]`` builds row ``i``'s, with
    Python floats), and :meth:`FeatureColumns.extract` takes its columns as
    they are. Tables appended (:meth:`extend`) are joined on the first read.

    >>> t = FeatureTable(("x", "c"), [np.array([1.5, 2.0]), ["a", None]], 2)
    >>> t[1], list(t.take([1, 0])) == [t[1], t[0]]
    ({'x': 2.0, 'c': None}, True)
    """

    __slots__ = ("names", "rows", "_columns", "_more")

    def __init__(self, names: tuple[str, ...], columns: list[Column], rows: int) -> None:
        self.names, self.rows = names, rows
        self._columns = columns
        self._more: list[list[Column]] = []  # columns of tables appended since

    @property
    def columns(self) -> list[Column]:
        if self._more:
            parts = [self._columns, *self._more]
            self._columns = [_joined([p[k] for p in parts]) for k in range(len(self.names))]
            self._more = []
        return self._columns

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.take(range(self.rows)[i])
        return dict(zip(self.names, [col[i].item() if isinstance(col, np.ndarray) else col[i]
                                     for col in self.columns], strict=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self.names
        if not names:
            return iter([{} for _ in range(self.rows)])
        cols = [c.tolist() if isinstance(c, np.ndarray) else c for c in self.columns]
        return (dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True))

    def extend(self, other: FeatureTable) -> None:
        """Append ``other``'s rows (the same names)."""
        self._more.append(other.columns)
        self.rows += other.rows

    def take(self, rows: Sequence[int]) -> FeatureTable:
        """Rows ``rows``, in that order (C speed: fancy indexing, ``itemgetter``; a
        ``range``, see :func:`as_rows`, as slices)."""
        n = len(rows)
        if isinstance(rows, range) and rows.step == 1:
            if rows.start == 0 and n == self.rows:
                return self
            a, b = rows.start, rows.stop
            return FeatureTable(self.names, [c[a:b].copy() if isinstance(c, np.ndarray)
                                             else c[a:b] for c in self.columns], n)
        index = np.asarray(rows, dtype=np.intp)
        if n == self.rows and (n == 0 or (index == np.arange(n)).all()):
            return self
        listed = index.tolist()
        get = itemgetter(*listed) if n > 1 else None
        out: list[Column] = []
        for col in self.columns:
            if isinstance(col, np.ndarray):
                out.append(col[index])
            elif get is not None:
                out.append(list(get(col)))
            else:
                out.append([col[i] for i in listed])
        return FeatureTable(self.names, out, n)


def _joined(parts: list[Column]) -> Column:
    """Columns one after the other: an array if every part is one, else a list."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return list(chain.from_iterable(p.tolist() if isinstance(p, np.ndarray) else p
                                    for p in parts))


def as_rows(index: np.ndarray) -> Sequence[int]:
    """Row numbers for :func:`pick` and :meth:`FeatureTable.take`: a ``range`` when they
    are one increasing run (often: a model's rows of a slice), taken as a slice without
    a look at each row; else a list.

    >>> as_rows(np.array([3, 4, 5])), as_rows(np.array([3, 5])), as_rows(np.array([4, 3]))
    (range(3, 6), [3, 5], [4, 3])
    """
    n = index.size
    if n and int(index[-1]) - int(index[0]) == n - 1 and (
            n == 1 or bool((np.diff(index.astype(np.int64, copy=False)) == 1).all())):
        return range(int(index[0]), int(index[-1]) + 1)
    return index.tolist()


def pick(values: Sequence[Any] | np.ndarray, rows: Sequence[int]) -> list[Any]:
    """``[values[i] for i in rows]`` at C speed: an array's as Python scalars, a run of
    consecutive rows (often all of them; a ``range`` from :func:`as_rows` at once) as a
    slice.

    >>> pick(["a", "b", "c"], [1, 2]), pick(["a", "b", "c"], [2, 0]), pick(np.arange(3.0), [1])
    (['b', 'c'], ['c', 'a'], [1.0])
    >>> pick(["a", "b", "c"], range(1, 3)), pick(np.arange(3.0), range(2))
    (['b', 'c'], [0.0, 1.0])
    """
    if isinstance(rows, range) and rows.step == 1:
        part = values[rows.start:rows.stop]
        return part.tolist() if isinstance(part, np.ndarray) else (
            part if isinstance(part, list) else list(part))
    if isinstance(values, np.ndarray):
        return values[rows].tolist()
    if not rows:
        return []
    if rows[-1] - rows[0] == len(rows) - 1 and rows == list(range(rows[0], rows[-1] + 1)):
        run = values[rows[0]:rows[-1] + 1]
        return run if isinstance(run, list) else list(run)
    if len(rows) == 1:
        return [values[rows[0]]]
    return list(itemgetter(*rows)(values))


def take(features: Sequence[dict[str, Any] | None], rows: Sequence[int]
         ) -> Sequence[dict[str, Any] | None]:
    """``[features[i] for i in rows]``, a :class:`FeatureTable` staying one."""
    if isinstance(features, FeatureTable):
        return features.take(rows)
    return [features[i] for i in rows]


@dataclass(frozen=True, slots=True)
class FeatureColumns:
    """A micro-batch's feature objects, pulled apart once per feature.

    Every check of the batch reads these columns, so each value is touched a
    fixed, small number of times (Python list comprehensions and
    ``numpy.fromiter``), never once per check.
    """

    values: dict[str, Column]        # raw values (None when absent; floats may be an array)
    numbers: dict[str, np.ndarray]   # numeric features: the value, NaN when absent or not a number
    events: Sequence[Collection[str]]  # each event's feature object ({} when absent), or names
    extra: frozenset[str]            # keys present in the batch but not asked for

    @classmethod
    def extract(cls, features: Sequence[dict[str, Any] | None], names: list[str],
                numeric: set[str]) -> FeatureColumns:
        if isinstance(features, FeatureTable):
            return cls._from_table(features, names, numeric)
        events = [f if f is not None else _EMPTY for f in features]
        values: dict[str, Column] = {}
        whole = True  # every event has every name (the usual case)
        for n in names:
            try:
                values[n] = list(map(itemgetter(n), events))  # at C speed
            except KeyError:
                values[n] = [f.get(n) for f in events]
                whole = False
        numbers = {n: floats(values[n]) for n in names if n in numeric}
        if whole and events and max(map(len, events)) == len(names):
            return cls(values, numbers, events, frozenset())  # no key but the names
        seen = set().union(*events) if events else set()
        return cls(values, numbers, events, frozenset(seen - set(names)))

    @classmethod
    def _from_table(cls, table: FeatureTable, names: list[str],
                    numeric: set[str]) -> FeatureColumns:
        """The same columns from a :class:`FeatureTable`, whose rows all hold its names."""
        have = dict(zip(table.names, table.columns, strict=True))
        n = len(table)
        values = {name: have[name] if name in have else [None] * n for name in names}
        numbers = {name: floats(values[name]) for name in names if name in numeric}
        keys = frozenset(table.names)
        extra = keys - set(names) if n else frozenset()
        # every row holds the same keys: one shared set stands for each row's object
        return cls(values, numbers, [keys] * n, extra)

    def __len__(self) -> int:
        return len(self.events)


def floats(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Numbers as floats; anything else (None, text, bool) as NaN (an array of floats
    as it is).

    >>> floats([1, 2.5, None, "x", True]).tolist()
    [1.0, 2.5, nan, nan, nan]
    """
    if isinstance(values, np.ndarray):
        return values.astype(float, copy=False)
    if set(map(type, values)) <= _NUMBER_TYPES:
        return np.array(values, dtype=float).reshape(len(values))
    return np.fromiter((v if type(v) in _NUMBER else np.nan for v in values), dtype=float,
                       count=len(values))


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What the reference says of one feature."""

    name: str
    kind: str                 # "numeric" or "categorical"
    missing_rate: float
    lo: float = -np.inf
    hi: float = np.inf
    rows: int = 0

    @classmethod
    def from_profile(cls, name: str, prof: dict[str, Any], rows: int) -> FeatureSpec:
        lo, hi = prof.get("min"), prof.get("max")
        return cls(name, str(prof.get("type")), float(prof.get("missing_rate") or 0.0),
                   -np.inf if lo is None else float(lo), np.inf if hi is None else float(hi),
                   rows)

    def expected(self, issue: str) -> float:
        if issue == "missing":
            return self.missing_rate
        if issue == "out_of_range" and self.kind == "numeric":
            return 2 / (self.rows + 1) if self.rows else 0.0
        return 0.0


class QualityDetector:
    """Counts quality issues of one (model, version) over tumbling windows of events.

    Parameters
    ----------
    model, version, cohort
        The series.
    specs
        The reference's features (:class:`FeatureSpec`).
    window
        Events per test.
    run_length
        Expected events between false alarms per issue.
    min_excess
        Smallest rate above the reference rate worth an alert.
    max_unknown
        Unknown feature names remembered per window (each cut to 128
        characters); events with any unknown feature are counted whatever
        their names, so the state stays small whatever a producer sends.
    severity
        Of the alerts.

    Examples
    --------
    ``amount`` is missing in 2 % of the training rows; from event 6,000 on a
    producer drops it from 10 % of the events.

    >>> import random
    >>> import numpy as np
    >>> rng = random.Random(42)
    >>> specs = [FeatureSpec("amount", "numeric", missing_rate=0.02, lo=0.0, hi=1000.0,
    ...                      rows=50_000)]
    >>> det = QualityDetector("fraud-scorer", "v7", specs=specs, window=2000)
    >>> events = [{} if rng.random() < (0.1 if i >= 6000 else 0.02)
    ...           else {"amount": rng.uniform(1, 900)} for i in range(10_000)]
    >>> for s in det.update({"ts": np.arange(10_000.0), "features": events}):
    ...     if s.active:
    ...         print(f"event {s.timestamp:.0f}: {s.key} ({s.details['value']:.1%})")
    event 7999: data_quality:fraud-scorer:v7:amount:missing (9.3%)
    event 9999: data_quality:fraud-scorer:v7:amount:missing (12.2%)
    """

    inputs = ("ts", "features")

    def __init__(self, model: str, version: str, *, cohort: str = "stable",
                 specs: Sequence[FeatureSpec], window: int = 2000,
                 run_length: float = 60_480_000, min_excess: float = 0.01,
                 max_unknown: int = 20, severity: Severity = "warning") -> None:
        if not (window >= 1 and run_length > window):
            raise ValueError("need window >= 1 and run_length > window")
        if not 0 <= min_excess < 1:
            raise ValueError("min_excess must be in [0, 1)")
        if not max_unknown >= 0:
            raise ValueError("max_unknown must be >= 0")
        check_severity(severity)
        self.model, self.version, self.cohort = model, version, cohort
        self.specs = tuple(specs)
        self.window = window
        self.run_length = run_length
        self.min_excess = min_excess
        self.max_unknown = max_unknown
        self.severity = severity
        self.alpha = window / run_length
        self._specs = {s.name: s for s in self.specs}
        # the numeric features' rows in _count's array, and their reference ranges
        self._numeric = {name: i for i, name in
                         enumerate(n for n, s in self._specs.items() if s.kind == "numeric")}
        self._lo = np.array([[self._specs[n].lo] for n in self._numeric])
        self._hi = np.array([[self._specs[n].hi] for n in self._numeric])
        self._n = 0
        self._counts: dict[str, dict[str, int]] = {}
        self._unknown: dict[str, int] = {}   # the first max_unknown names, and their events
        self._unknown_events = 0             # events with any unknown feature
        self._unknown_more = False           # more names than were remembered

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        specs = (FeatureSpec("amount", "numeric", 0.02, 0.0, 1000.0, 50_000),
                 FeatureSpec("country", "categorical", 0.0))
        yield {"model": "m", "version": "v1", "specs": specs, "window": 500,
               "run_length": 1e6}
        yield {"model": "m", "version": "v1", "cohort": "canary", "specs": specs[:1],
               "window": 1000, "run_length": 1e7, "min_excess": 0.05, "max_unknown": 2,
               "severity": "error"}

    @property
    def key(self) -> str:
        return dedup_key("data_quality", self.model, self.version, self.cohort)

    def columns(self, features: Sequence[dict[str, Any] | None]) -> FeatureColumns:
        """The columns this detector reads (when no other check extracted them)."""
        rows = features if isinstance(features, (list, FeatureTable)) else list(features)
        return FeatureColumns.extract(rows, list(self._specs),
                                      {n for n, s in self._specs.items() if s.kind == "numeric"})

    def update(self, batch: Batch) -> list[Signal]:
        """Fold a micro-batch in (``features``: its columns, or its feature objects);
        per completed window, a signal per feature and issue, and one for unknown features."""
        cols, ts = batch["features"], batch["ts"]
        if not isinstance(cols, FeatureColumns):
            cols = self.columns(cols)
        out: list[Signal] = []
        pos, n = 0, len(cols)
        while pos < n:
            take = min(self.window - self._n, n - pos)
            self._count(cols, pos, pos + take)
            self._n += take
            pos += take
            if self._n == self.window:
                out.extend(self._evaluate(float(ts[pos - 1])))
                self._n, self._counts, self._unknown = 0, {}, {}
                self._unknown_events, self._unknown_more = 0, False
        return out

    def _count(self, cols: FeatureColumns, a: int, b: int) -> None:
        """Count rows ``a:b``. NaN (which JSON cannot carry) counts as a type mismatch,
        like any non-number in a numeric feature; +-inf counts as non-finite."""
        numeric = self._numeric
        if numeric:  # every numeric feature at once: a row each
            x = np.vstack([cols.numbers[name][a:b] for name in numeric])
            nan, inf = np.isnan(x), np.isinf(x)
            with np.errstate(invalid="ignore"):  # NaN compares False: not out of range
                out = ((x < self._lo) | (x > self._hi)) & ~inf
            nans, infs, outs = (m.sum(axis=1).tolist() for m in (nan, inf, out))
        for name, spec in self._specs.items():
            values = cols.values[name][a:b]
            c = self._counts.setdefault(name, dict.fromkeys(ISSUES, 0))
            if isinstance(values, np.ndarray):  # floats only: none missing, none an object
                values = []
            missing = values.count(None)
            c["missing"] += missing
            if spec.kind == "numeric":
                row = numeric[name]
                c["type_mismatch"] += nans[row] - missing
                c["non_finite"] += infs[row]
                c["out_of_range"] += outs[row]
            else:  # an object or an array is no category (a number or a bool is one)
                types = set(map(type, values))
                if dict in types or list in types:
                    c["type_mismatch"] += sum(type(v) in (dict, list) for v in values)
        if cols.extra:
            extra, known = cols.extra, self._unknown
            for f in cols.events[a:b]:
                names = extra.intersection(f)
                if not names:
                    continue
                self._unknown_events += 1
                for name in names:
                    name = name[:128]
                    if name in known:
                        known[name] += 1
                    elif len(known) < self.max_unknown:
                        known[name] = 1
                    else:
                        self._unknown_more = True

    def _evaluate(self, ts: float) -> list[Signal]:
        tests = [(name, issue, self._counts.get(name, {}).get(issue, 0), spec.expected(issue))
                 for name, spec in self._specs.items() for issue in ISSUES
                 if spec.kind == "numeric" or issue not in ("non_finite", "out_of_range")]
        # P(X >= count) for X ~ Binomial(window, expected), every test at once
        # (scipy.special.bdtrc(k, n, p) = P(X > k); scipy.stats.binom.sf is the same
        # figure at ~25 us a call)
        p_values = special.bdtrc(
            np.array([t[2] for t in tests], dtype=float) - 1, self.window,
            np.clip(np.array([t[3] for t in tests], dtype=float), 1e-12, 1.0)).tolist()
        out = []
        for (name, issue, count, expected), p in zip(tests, p_values, strict=True):
            rate = count / self.window
            active = p < self.alpha and rate > expected + self.min_excess
            out.append(self._signal(f"{name}:{issue}", active, ts, {
                "feature": name, "issue": issue, "statistic": f"{issue}_rate",
                "value": round(rate, 5),
                "threshold": round(expected + self.min_excess, 5),
                "reference_rate": round(expected, 6), "count": count,
                "p_value": p}, f"feature '{name}': {issue.replace('_', ' ')} "
                   f"{rate:.1%} vs {expected:.1%} in training"))
        share = self._unknown_events / self.window
        names = sorted(self._unknown, key=lambda n: (-self._unknown[n], n))
        unknown = [n for n in names if self._unknown[n] / self.window > self.min_excess]
        active = share > self.min_excess
        shown = ", ".join(unknown[:5] or names[:5]) or "none"
        more = " and others" if self._unknown_more or len(unknown) > 5 else ""
        out.append(self._signal("schema:unknown_features", active, ts, {
            "issue": "unknown_features", "statistic": "features_not_in_reference",
            "value": len(unknown), "threshold": 0, "features": unknown[:20],
            "counts": {n: self._unknown[n] for n in names[:20]},
            "events_share": round(share, 5), "names_truncated": self._unknown_more},
            f"features not in the training profile: {shown}{more}"))
        return out

    def _signal(self, part: str, active: bool, ts: float, details: dict[str, Any],
                what: str) -> Signal:
        details = {**details, "cohort": self.cohort, "window": {"events": self.window,
                                                                "end_ts": ts},
                   "alpha_per_test": self.alpha}
        return Signal(check="data_quality",
                      key=f"{self.key}:{part}",
                      active=active, severity=self.severity,
                      summary=f"{self.model} {self.version}: {what}", timestamp=ts,
                      model=self.model, version=self.version, details=details)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self._n, "counts": {k: dict(v) for k, v in self._counts.items()},
                "unknown": dict(self._unknown), "unknown_events": self._unknown_events,
                "unknown_more": self._unknown_more}

    def load_dict(self, data: dict[str, Any]) -> None:
        self._n = int(data["n"])
        self._counts = {k: dict(v) for k, v in data["counts"].items()}
        self._unknown = dict(list(data["unknown"].items())[:self.max_unknown])
        self._unknown_events = int(data.get("unknown_events", 0))
        self._unknown_more = bool(data.get("unknown_more", False))
