"""Reference profiles of training data, and how serving values fall into them.

A profile (the contract's ``ml.references`` message) describes each feature of
the data a model version was trained on:

- numeric: quantile bin edges (``bins``, ``len(counts) + 1`` of them, the first
  the minimum and the last the maximum), the ``counts`` per bin, ``min``,
  ``max`` and ``missing_rate`` (null or NaN);
- categorical: ``frequencies`` (value -> share of non-missing rows) of the
  ``max_categories`` most frequent values, the rest folded into ``__other__``,
  and ``missing_rate``. A value longer than :data:`MAX_CATEGORY_CHARS` is never
  listed (it counts as ``__other__``, and so does it when served): a profile's
  size, and the state of a version that learns its profile from its first
  events, is bounded whatever the values hold.

``prediction`` and ``label`` columns, when present, are profiled the same way
under their own keys, and give ``performance``: the model's accuracy (or MAE) on
this data. For a binary classifier's probabilities it also carries
``score_calibration`` (:class:`~detectors.performance.ScoreCalibration`: what a
score means, for the label-free estimate of accuracy); an optional field, which
readers of older profiles do without. :func:`build_profile` works on a Polars ``LazyFrame``, so
a Parquet or CSV file larger than memory is read in streaming passes.

:class:`FeatureBins` maps serving values onto a profile's bins, vectorised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np
import polars as pl

from detectors.performance import ScoreCalibration

_ABI = 2  # detectors/_bins.c's ABI this module calls
try:
    from detectors import _bins
except ImportError:  # built without a C compiler: numpy does the same
    _bins = None  # type: ignore[assignment]
if _bins is not None and getattr(_bins, "ABI", None) != _ABI:  # pragma: no cover
    _bins = None  # type: ignore[assignment]  # a stale build: pip install -e . again

__all__ = ["build_profile", "FeatureBins", "OTHER", "UNSEEN", "category_key",
           "category_bins_loop", "MAX_CATEGORY_CHARS"]

OTHER = "__other__"
UNSEEN = "__unseen__"
MAX_CATEGORY_CHARS = 256  # longest value a profile lists by name
SPECIAL = ("prediction", "label")
NOT_FEATURES = frozenset({"event_id", "ts", "model", "version", "cohort", "status",
                          "latency_ms", "error"})


def category_key(value: Any) -> str:
    """The category a JSON value counts as (bools as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _numeric_profile(lf: pl.LazyFrame, col: str, bins: int, rows: int) -> dict[str, Any]:
    c = pl.col(col).cast(pl.Float64)
    clean = c.filter(c.is_not_null() & c.is_not_nan())
    qs = np.linspace(0, 1, bins + 1)
    stats = lf.select(
        clean.min().alias("min"), clean.max().alias("max"), clean.len().alias("n"),
        *[clean.quantile(float(q), "linear").alias(f"q{i}") for i, q in enumerate(qs)],
    ).collect(engine="streaming").row(0, named=True)
    n = int(stats["n"])
    if n == 0:
        return {"type": "numeric", "bins": [], "counts": [], "min": None, "max": None,
                "missing_rate": 1.0}
    edges = np.unique(np.array([stats[f"q{i}"] for i in range(len(qs))], dtype=float))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    inner = edges[1:-1]
    v = pl.col("v")
    # Bin index = how many inner edges the value reaches (same rule as FeatureBins).
    index = (pl.sum_horizontal([(v >= float(e)).cast(pl.Int32) for e in inner])
             if inner.size else pl.lit(0, dtype=pl.Int32))
    counted = (lf.select(clean.alias("v")).select(index.alias("b"))
               .group_by("b").len().collect(engine="streaming"))
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    for b, k in counted.iter_rows():
        counts[int(b)] += int(k)
    return {"type": "numeric", "bins": edges.tolist(), "counts": counts.tolist(),
            "min": float(stats["min"]), "max": float(stats["max"]),
            "missing_rate": round(1 - n / rows, 6) if rows else 0.0}


def _categorical_profile(lf: pl.LazyFrame, col: str, max_categories: int,
                         rows: int) -> dict[str, Any]:
    dtype = lf.collect_schema()[col]
    c = pl.col(col)
    if dtype == pl.Boolean:
        c = pl.when(c).then(pl.lit("true")).when(~c).then(pl.lit("false"))
    vc = (lf.select(c.cast(pl.Utf8).alias("v")).drop_nulls().group_by("v").len()
          .sort(["len", "v"], descending=[True, False]).collect(engine="streaming"))
    n = int(vc["len"].sum()) if vc.height else 0
    listed = vc.filter(pl.col("v").str.len_chars() <= MAX_CATEGORY_CHARS).head(max_categories)
    freqs: dict[str, float] = {}
    for v, k in listed.iter_rows():
        freqs[str(v)] = k / n
    rest = n - int(listed["len"].sum()) if n else 0
    if rest:
        freqs[OTHER] = rest / n
    return {"type": "categorical", "frequencies": freqs,
            "missing_rate": round(1 - n / rows, 6) if rows else 0.0}


def _distinct(lf: pl.LazyFrame, col: str) -> int:
    return int(lf.select(pl.col(col).n_unique()).collect(engine="streaming").item())


def build_profile(data: pl.LazyFrame, model: str, version: str, bins: int = 20,
                  max_categories: int = 50, created_at: float | None = None,
                  decision_threshold: float = 0.5, calibration_knots: int = 50,
                  progress: Callable[[str, int, int], None] | None = None
                  ) -> dict[str, Any]:
    """The contract's reference profile of ``data``.

    Every column is a feature except the contract's event fields (``event_id``,
    ``ts``, ``latency_ms``…); ``prediction`` and ``label`` get their own keys.
    Numeric dtypes are profiled as numeric, except integer columns with at most
    ``bins`` distinct values (codes, 0/1 labels), which are categorical like
    everything else. When ``prediction`` holds probabilities (floats in [0, 1]) and
    ``label`` is 0/1, ``performance.score_calibration`` maps a score to
    P(label = 1) in at most ``calibration_knots`` knots, for decisions taken at
    ``decision_threshold``. Each column is a streaming pass over ``data``:
    ``progress(column, done, total)`` is called before each (and ``("", total,
    total)`` at the end), for a command to show how far it is.

    >>> import polars as pl
    >>> lf = pl.LazyFrame({"amount": [1.0, 2.0, 3.0, 4.0, None], "country": list("FFGGF")})
    >>> p = build_profile(lf, "m", "v1", bins=2, created_at=0)
    >>> amount = p["features"]["amount"]
    >>> p["rows"], amount["bins"], amount["counts"], amount["missing_rate"]
    (5, [1.0, 2.5, 4.0], [2, 2], 0.2)
    >>> p["features"]["country"]["frequencies"]
    {'F': 0.6, 'G': 0.4}
    """
    if bins < 1 or max_categories < 1:
        raise ValueError("bins and max_categories must be >= 1")
    if not 0 < decision_threshold < 1 or not 2 <= calibration_knots <= 200:
        raise ValueError("decision_threshold must be in (0, 1), calibration_knots in [2, 200]")
    schema = data.collect_schema()
    rows = int(data.select(pl.len()).collect(engine="streaming").item())
    profile: dict[str, Any] = {
        "model": model, "version": version,
        "created_at": created_at if created_at is not None else time.time(),
        "rows": rows, "features": {},
    }
    todo = [(col, dtype) for col, dtype in schema.items() if col not in NOT_FEATURES]
    for i, (col, dtype) in enumerate(todo):
        if progress is not None:
            progress(col, i, len(todo))
        if dtype.is_integer() and _distinct(data, col) <= bins:
            # A few integer codes (a 0/1 label, a star rating) are categories:
            # quantile bins would merge them into one.
            prof = _categorical_profile(data, col, max_categories, rows)
        elif dtype.is_numeric():
            prof = _numeric_profile(data, col, bins, rows)
        else:
            prof = _categorical_profile(data, col, max_categories, rows)
        if col in SPECIAL:
            profile[col] = prof
        else:
            profile["features"][col] = prof
    if "prediction" in schema and "label" in schema:
        perf: dict[str, Any] = dict(_performance(data, schema["prediction"], schema["label"]))
        if schema["prediction"].is_float() and "accuracy" in perf:
            cal = _score_calibration(data, decision_threshold, calibration_knots)
            if cal is not None:
                perf["score_calibration"] = cal.to_dict()
        if perf:
            profile["performance"] = perf
    if progress is not None:
        progress("", len(todo), len(todo))
    return profile


def _score_calibration(data: pl.LazyFrame, threshold: float,
                       knots: int) -> ScoreCalibration | None:
    """What the ``prediction`` probabilities mean given the 0/1 ``label``s: two streaming
    passes (score quantiles, then sums per bin). None unless every score is in [0, 1]."""
    p, y = pl.col("prediction").cast(pl.Float64), pl.col("label").cast(pl.Float64)
    both = data.filter(p.is_not_null() & y.is_not_null() & p.is_not_nan())
    qs = np.linspace(0, 1, knots)[1:-1]
    head = both.select(p.min().alias("lo"), p.max().alias("hi"), pl.len().alias("n"),
                       *[p.quantile(float(q), "linear").alias(f"q{i}") for i, q in enumerate(qs)]
                       ).collect(engine="streaming").row(0, named=True)
    if not head["n"] or head["lo"] < 0 or head["hi"] > 1:
        return None  # scores, not probabilities
    inner = ScoreCalibration.edges([head[f"q{i}"] for i in range(qs.size)], threshold)
    v = pl.col("p")
    index = (pl.sum_horizontal([(v >= float(e)).cast(pl.Int32) for e in inner])
             if inner.size else pl.lit(0, dtype=pl.Int32))
    says_one = v >= threshold
    sums = (both.select(p.alias("p"), y.alias("y"))
            .with_columns(index.alias("b"),
                          (says_one == (pl.col("y") == 1)).cast(pl.Float64).alias("right"),
                          pl.when(says_one).then(v).otherwise(1 - v).alias("raw"))
            .group_by("b").agg(pl.len().alias("n"), v.sum().alias("p"), pl.col("y").sum(),
                               pl.col("right").sum(), pl.col("raw").sum())
            .sort("b").collect(engine="streaming"))
    k = inner.size + 1
    cols = {c: np.zeros(k) for c in ("n", "p", "y", "right", "raw")}
    for row in sums.iter_rows(named=True):
        for c in cols:
            cols[c][int(row["b"])] = float(row[c])
    return ScoreCalibration.from_bins(cols["n"], cols["p"], cols["y"], cols["right"],
                                      cols["raw"], threshold)


def _performance(data: pl.LazyFrame, pred: pl.DataType, label: pl.DataType) -> dict[str, float]:
    """The model's quality on this data: accuracy (classification) or MAE (regression)."""
    p, y = pl.col("prediction"), pl.col("label")
    both = data.filter(p.is_not_null() & y.is_not_null())
    if pred.is_numeric() and (label == pl.Boolean or label.is_integer()):
        labels = both.select(y.cast(pl.Int64).unique()).collect(engine="streaming")["label"]
        if set(labels.to_list()) <= {0, 1}:
            acc = both.select(((p >= 0.5).cast(pl.Int64) == y.cast(pl.Int64)).mean())
            return {"accuracy": float(acc.collect(engine="streaming").item())}
    if pred.is_numeric() and label.is_numeric():
        mae = both.select((p.cast(pl.Float64) - y.cast(pl.Float64)).abs().mean())
        return {"mae": float(mae.collect(engine="streaming").item())}
    acc = both.select((p.cast(pl.Utf8) == y.cast(pl.Utf8)).mean())
    return {"accuracy": float(acc.collect(engine="streaming").item())}


@dataclass(frozen=True)
class FeatureBins:
    """The reference distribution of one feature and how values map onto it.

    Numeric values below the reference minimum fall in the first bin and above
    the maximum in the last (they are also counted as out of range). Categorical
    values the reference never saw land in ``__unseen__`` (reference share 0),
    and values folded into ``__other__`` at build time in ``__other__``.
    """

    name: str
    kind: str                       # "numeric" or "categorical"
    reference: np.ndarray           # shares per bin (sums to 1)
    labels: tuple[str, ...]         # bin labels (edges as text, or categories)
    inner_edges: np.ndarray         # numeric only
    index: dict[str, int]           # categorical only: category -> bin
    lo: float = -np.inf
    hi: float = np.inf

    @classmethod
    def from_profile(cls, name: str, prof: dict[str, Any]) -> FeatureBins | None:
        """None when the profile has no usable distribution (all missing)."""
        if prof.get("type") == "numeric":
            counts = np.asarray(prof.get("counts") or [], dtype=float)
            edges = np.asarray(prof.get("bins") or [], dtype=float)
            if counts.size == 0 or counts.sum() <= 0 or edges.size != counts.size + 1:
                return None
            labels = tuple(f"[{a:.6g}, {b:.6g})" for a, b in zip(edges[:-1], edges[1:],
                                                                   strict=True))
            return cls(name, "numeric", counts / counts.sum(), labels, edges[1:-1], {},
                       float(edges[0]), float(edges[-1]))
        if prof.get("type") == "categorical":
            freqs = dict(prof.get("frequencies") or {})
            if not freqs:
                return None
            cats = [c for c in freqs if c != OTHER]
            labels = (*cats, OTHER, UNSEEN)
            ref = np.array([freqs[c] for c in cats] + [freqs.get(OTHER, 0.0), 0.0], dtype=float)
            return cls(name, "categorical", ref / ref.sum(), labels, np.empty(0),
                       {c: i for i, c in enumerate(cats)})
        return None

    @property
    def size(self) -> int:
        return int(self.reference.size)

    def bin_numeric(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each finite value (``numpy.searchsorted``; compiled in
        ``detectors/_bins.c`` for float64 values, 2-3x faster on serving values)."""
        if (_bins is not None and self._edges_ordered and values.dtype == np.float64
                and values.flags.c_contiguous):
            return np.frombuffer(_bins.numeric(values, self.inner_edges), np.int64)
        return np.searchsorted(self.inner_edges, values, side="right")

    @cached_property
    def _edges_ordered(self) -> bool:
        """The edges are float64, finite and in order: where the compiled search and
        numpy's agree value for value (NaN values included)."""
        e = self.inner_edges
        return bool(e.dtype == np.float64 and e.flags.c_contiguous and np.isfinite(e).all()
                    and (e[1:] >= e[:-1]).all())

    def bin_categories(self, values: list[str]) -> np.ndarray:
        """Bin index of each category key (``index.get(value, fallback)``; compiled in
        ``detectors/_bins.c``, 3x faster)."""
        unseen = self.size - 1
        other = self.size - 2
        # Values folded into __other__ at build time are unknown here: a value the
        # reference had but did not list counts as "other" only if __other__ exists.
        fallback = other if self.reference[other] > 0 else unseen
        if _bins is not None:
            return np.frombuffer(_bins.categories(values, self.index, fallback), np.int64)
        return np.fromiter(map(self.index.get, values, repeat(fallback)), dtype=np.int64,
                           count=len(values))


def category_bins_loop() -> str:
    """Which loop bins category keys (the worker logs it when it starts folding)."""
    return "compiled (detectors/_bins.c)" if _bins is not None else "map(dict.get)"
