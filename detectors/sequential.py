"""Sequential tests on binned values: a bank of CUSUMs against a reference's bin shares.

A windowed test (a window of 2,000 values tested every 500) cannot alert sooner
than a few hundred values after a change, whatever its size. A sequential test
has no such floor: Page's CUSUM accumulates, value by value, the log-likelihood
ratio of an alternative distribution ``p`` against the reference ``q``,
``S = max(0, S + log p(x) / q(x))``, and alerts when ``S`` reaches ``h``. Run
against the right ``p`` it is optimal (Lorden; Moustakides): for a false alarm
every ``L`` values it needs about ``ln(L) / KL(p || q)`` values after the
change, which is also the least any test can need (:func:`information_bound`).

**Alternatives.** The change is unknown, so a bank of CUSUMs runs side by side,
one per alternative, on the feature's bins (:func:`alternatives`):

- numeric features: the reference histogram *shifted* by ``±0.125 .. 2``
  standard deviations (robust: interquartile range / 1.349) and *spread* or
  *narrowed* (``x e^{±0.2, ±0.5}`` around the median), both computed on the
  profile's bins from its piecewise-uniform density, so they are the binned
  distributions a location or scale change gives; and one bin's share up
  (odds ``x e``: a spike, a default value pouring in);
- categorical features: each category's share up (odds ``x e^{0.5, 1, 2.5}``)
  or down (``x e^-1.5``, categories of 5 % or more), the others in proportion; when every
  category is a number (integer codes, counts), also the shares tilted toward
  higher or lower values (``p ∝ q e^{θ x}``, exact for a Poisson rate).

Each alternative is mixed with 1 % of the reference, so no bin has probability
0 under it (one impossible value resets a CUSUM, it does not break it).

**Calibration.** The setting is the run length ``L`` (expected values between
false alarms on a stationary stream). It is shared out between the families
(numeric: 50 % shifts, 15 % spread, 35 % bins), then evenly between each
family's alternatives, and each CUSUM gets the threshold ``h`` whose run
length is at least its share: the larger of Lorden's bound ``e^h`` and the
Brownian approximation ``(e^h - 1 - h) / KL(q || p)`` (a CUSUM on a small
alternative drifts down slowly and waits long between excursions). Both are
conservative for these discrete increments (the overshoot past ``h`` is
ignored) and the union over the bank more so.

**The reference's own noise.** The reference shares are estimated from ``n``
training values, so the stream's true shares differ from them by about
``1/sqrt(n)``; an alternative leaning the same way would then drift upward on a
stationary stream. The shares are smoothed (half a count per bin, so a value
never seen in training has a small, not a zero, share) and every increment is
lowered by a margin of ``h / n`` nats: to first order this makes the expected
false-alarm rate, averaged over the reference's sampling error, the target
(the rate grows as ``exp(2 h e)`` for a sampling error ``e`` along the
alternative; ``e`` is Gaussian with variance ``1/n`` in the alternative's own
units, and the margin cancels the mean of that exponential). With 50,000
training rows the margin costs a 0.25 SD shift about 1 % of its drift.

**Cost.** Values are counted per block (4 values for the alternatives expected
to take under 256 values, 32 for the others), and the CUSUM of every
alternative moves at each block's end (``S_t = W_t - min(0, min W)``, with ``W``
the cumulative sum of the increments). A CUSUM over blocks restarts only at
block boundaries, so it is a (slightly) conservative CUSUM, and an alert comes
at a block's end: at most ``block - 1`` values late. The loop over the values
is compiled (``detectors/_cusum.c``: each value adds its bin's row of log
ratios to its block's increments; a block's end moves W and its running
minimum; about 10 ns per value for a bank of 40 alternatives; one call folds a
micro-batch into every group of a test and picks the bank's status at the
marks asked for), with a numpy version of the same arithmetic (a ``bincount``,
a matrix product with the bank's table of log ratios, then the running sum and
minimum over the blocks) where no C compiler built it, and as the reference it
is tested against. The state is one float and one integer per alternative and
a partial block per block size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.profile import OTHER, UNSEEN, FeatureBins

_ABI = 3   # detectors/_cusum.c's ABI this module calls
try:  # the compiled inner loop (setup.py builds it; optional)
    from detectors import _cusum
except ImportError:  # pragma: no cover - a build without a C compiler
    _cusum = None  # type: ignore[assignment]
if _cusum is not None and getattr(_cusum, "ABI", None) != _ABI:  # pragma: no cover
    _cusum = None  # type: ignore[assignment]  # a stale build: pip install -e . again

KERNEL = True   # False: the numpy loop even when the compiled one is there (tests)


def loop() -> str:
    """Which loop folds values into the CUSUMs here, for benchmarks and logs."""
    if _cusum is not None and KERNEL:
        return "compiled loop (detectors/_cusum.c)"
    return ("numpy loop (detectors/_cusum.c not built, or built from an older version: "
            "no C compiler at install, or pip install again)")

__all__ = ["Alternatives", "alternatives", "SequentialTest", "Change", "information_bound"]

SHIFTS_SD = (0.125, 0.177, 0.25, 0.354, 0.5, 0.707, 1.0, 1.414, 2.0)
LOG_SCALES = (0.2, 0.5)
BIN_NUMERIC = (1.0,)              # log odds of one bin, numeric features
BIN_UP = (0.5, 1.0, 2.5)           # log odds of one category, up
BIN_DOWN = (-1.5,)                 # and down (categories of at least DOWN_MIN)
DOWN_MIN = 0.05
TILTS = (0.125, 0.25, 0.5, 1.0, 2.0)  # ordered categories: standardised tilts
FLOOR = 0.01                       # share of the reference mixed into each alternative
WEIGHTS = {"shift": 0.5, "spread": 0.15, "bin": 0.35}
UNKNOWN_SIZE = 1e6                 # reference size assumed when none is known


TIE = 1e-9   # ratios this close (relative) to the largest are a tie


def nearest(ratio: np.ndarray) -> int:
    """The index of the largest CUSUM / threshold ratio; ties (within :data:`TIE`,
    relative) go to the first alternative of the bank. The same sums added in another
    order (another batching) differ in their last bits: a plain argmax would then
    name another of two equally near alternatives."""
    return _top_and_nearest(ratio)[1]


def _top_and_nearest(ratio: np.ndarray) -> tuple[float, int]:
    """The largest ratio, and :func:`nearest`'s index."""
    top = float(ratio.max())
    return top, int(np.argmax(ratio >= top - TIE * abs(top)))


def _pick(groups: list[tuple[_Group, float, int, np.ndarray]]) -> tuple[int, float, float] | None:
    """:func:`nearest` over a bank from its groups' own (largest ratio, first member
    within :data:`TIE` of it, CUSUMs): the alternative, its CUSUM and threshold, when a
    single group comes within TIE of the bank's largest ratio (the bank's first such
    alternative is then that group's); None when several do (rare: ask the whole bank)."""
    best = max(top for _, top, _, _ in groups)
    lim = best - TIE * abs(best)
    within = [(g, arg, s) for g, top, arg, s in groups if top >= lim]
    if len(within) != 1:
        return None
    g, arg, s = within[0]
    return int(g.members[arg]), float(s[arg]), float(g.h[arg])


def information_bound(shifted: np.ndarray, reference: np.ndarray, run_length: float) -> float:
    """``ln(run_length) / KL(shifted || reference)``: the fewest values after a change any
    test with that false-alarm rate needs, on average, to see it (Lai, 1998).

    >>> import numpy as np
    >>> round(information_bound(np.array([0.6, 0.4]), np.array([0.5, 0.5]), 6.048e7))
    890
    """
    p = shifted / shifted.sum()
    q = reference / reference.sum()
    on = p > 0
    kl = float((p[on] * np.log(p[on] / np.maximum(q[on], 1e-300))).sum())
    return math.log(run_length) / kl if kl > 0 else math.inf


@dataclass(frozen=True)
class Alternatives:
    """A bank of alternatives to a reference, with their calibrated thresholds."""

    names: tuple[str, ...]
    family: tuple[str, ...]
    reference: np.ndarray     # smoothed reference shares (k)
    log_ratio: np.ndarray     # log p_j(i) / q(i), margin included (m x k)
    threshold: np.ndarray     # h_j, nats (m)
    kl_null: np.ndarray       # KL(q || p_j) (m)
    kl_alt: np.ndarray        # KL(p_j || q) (m)
    margin: np.ndarray        # nats taken off each increment for the reference's noise (m)
    run_length: float
    reference_size: float | None

    @property
    def size(self) -> int:
        return len(self.names)

    def describe(self, j: int) -> dict[str, Any]:
        return {"alternative": self.names[j], "family": self.family[j],
                "threshold": round(float(self.threshold[j]), 3),
                "kl_per_value": round(float(self.kl_alt[j]), 5),
                "margin_per_value": round(float(self.margin[j]), 6),
                "run_length_events": self.run_length,
                "reference_size": self.reference_size, "alternatives": self.size}


def alternatives(bins: FeatureBins, run_length: float, *, shares: np.ndarray | None = None,
                 reference_size: float | None = None) -> Alternatives:
    """The bank of alternatives for ``bins`` (against ``shares``, default its reference).

    ``reference_size``: how many values the shares were estimated from (``None``:
    unknown, taken as exact).

    >>> import numpy as np
    >>> from detectors.profile import FeatureBins
    >>> bins = FeatureBins.from_profile("c", {"type": "categorical",
    ...                                 "frequencies": {"a": 0.6, "b": 0.3, "c": 0.1}})
    >>> alt = alternatives(bins, 6.048e7, reference_size=10_000)
    >>> alt.size, alt.names[0]
    (18, "more 'a' (odds x1.65)")
    >>> bool((alt.threshold > 14).all() and (alt.threshold < 21).all())
    True
    """
    if not run_length > 1:
        raise ValueError("run_length must be > 1")
    raw = bins.reference if shares is None else np.asarray(shares, dtype=float)
    k = raw.size
    n = float(reference_size) if reference_size else UNKNOWN_SIZE
    q = (raw / raw.sum() * n + 0.5) / (n + 0.5 * k)
    probs: list[np.ndarray] = []   # blocks of alternatives (a row each), in layout order
    layout: _Layout | None = None   # names, families, shares of the budget (cached)

    def add(p: np.ndarray, mix: bool = True) -> None:
        probs.append((1 - FLOOR) * p + FLOOR * q if mix else p)

    if bins.kind == "numeric" and k >= 2 and math.isfinite(bins.lo) and bins.hi > bins.lo:
        edges = np.concatenate([[bins.lo], bins.inner_edges, [bins.hi]])
        cum = np.concatenate([[0.0], np.cumsum(q)])
        cum[-1] = 1.0
        # The unit of the shifts: a robust standard deviation (interquartile range / 1.349,
        # from the profile's quantiles), which heavy tails or a far minimum or maximum
        # (uniform over the outer bins) would not inflate.
        q1, q3 = np.interp([0.25, 0.75], cum, edges)
        sd = float(q3 - q1) / 1.349
        median = float(np.interp(0.5, cum, edges))
        inner = bins.inner_edges

        def binned(at: np.ndarray) -> np.ndarray:
            # Shares of the bins (a row per row of ``at``) when P(X < inner edge) is the
            # reference CDF at ``at``.
            c = np.interp(at, edges, cum)
            out = np.empty((c.shape[0], k))
            out[:, 0] = c[:, 0]
            np.subtract(c[:, 1:], c[:, :-1], out=out[:, 1:-1])
            np.subtract(1.0, c[:, -1], out=out[:, -1])
            return out

        layout = _numeric_layout(bins.labels, sd > 0)
        if sd > 0:   # the shifts, then the spreads (one interpolation for both)
            add(binned(np.concatenate([inner[None, :] - _SHIFT_OFFSETS[:, None] * sd,
                                       median + (inner[None, :] - median)
                                       / _SPREAD_FACTORS[:, None]])))
        add(_bin_tilts(q, layout.tilts), mix=False)
    elif bins.kind == "categorical":
        ordered = _ordered_values(bins)
        layout = _categorical_layout(bins.labels, tuple((q >= DOWN_MIN).tolist()),
                                     ordered is not None)
        if ordered is not None:
            score = ordered - float((q * ordered).sum())
            score = score / math.sqrt(float((q * score * score).sum()))
            w = q[None, :] * np.exp(_TILT_THETAS[:, None] * score[None, :])
            add(w / w.sum(axis=1)[:, None])
        add(_bin_tilts(q, layout.tilts), mix=False)
    if layout is None or not layout.names:
        empty = np.empty(0)
        return Alternatives((), (), q, np.empty((0, k)), empty, empty, empty, empty,
                            run_length, reference_size)
    p = np.concatenate(probs) if len(probs) > 1 else probs[0]
    log_ratio = np.log(p / q)
    kl_null = np.maximum(-(q * log_ratio).sum(axis=1), 1e-12)
    kl_alt = (p * log_ratio).sum(axis=1)
    h = _thresholds(kl_null, run_length / layout.share, reference_size)
    margin = h / reference_size if reference_size else np.zeros_like(h)
    return Alternatives(layout.names, layout.family, q, log_ratio - margin[:, None], h,
                        kl_null, kl_alt, margin, run_length, reference_size)


@dataclass(frozen=True)
class _Layout:
    """What a bank's alternatives are, apart from their arithmetic: names, families,
    each one's share of the run length, and the bin tilts (bin, log odds). The same
    for every bank of one set of bins (drift rebuilds a bank each time its baseline is
    renewed), so it is built once (:func:`_numeric_layout`, :func:`_categorical_layout`)."""

    names: tuple[str, ...]
    family: tuple[str, ...]
    share: np.ndarray
    tilts: _Tilts

    @classmethod
    def of(cls, parts: list[tuple[str, list[str]]], tilts: list[tuple[int, float]]) -> _Layout:
        names = tuple(n for _, block in parts for n in block)
        family = tuple(f for f, block in parts for _ in block)
        counts = {f: family.count(f) for f in WEIGHTS}
        weights = {f: WEIGHTS[f] for f in WEIGHTS if counts[f]}
        total = sum(weights.values())
        share = np.array([weights[f] / total / counts[f] for f in family])
        share.setflags(write=False)
        return cls(names, family, share, _Tilts.of(tilts))


_SHIFTS = [(sign, d) for d in SHIFTS_SD for sign in (1, -1)]
_SHIFT_OFFSETS = np.array([sign * d for sign, d in _SHIFTS])
_SPREAD_FACTORS = np.array([math.exp(sign * s) for s in LOG_SCALES for sign in (1, -1)])
_TILT_SIGNS = [(theta, sign) for theta in TILTS for sign in (1, -1)]
_TILT_THETAS = np.array([sign * theta for theta, sign in _TILT_SIGNS])


@functools.lru_cache(maxsize=1024)
def _numeric_layout(labels: tuple[str, ...], scaled: bool) -> _Layout:
    """A numeric bank's layout: shifts and spreads (``scaled``: the reference has a
    spread to scale them by), then a tilt per bin."""
    parts = []
    if scaled:
        parts.append(("shift", [f"mean shift {sign * d:+.3g} sd" for sign, d in _SHIFTS]))
        parts.append(("spread", [f"spread x{f:.3g}" for f in _SPREAD_FACTORS.tolist()]))
    tilts = [(j, eta) for j in range(len(labels)) for eta in BIN_NUMERIC]
    parts.append(("bin", [f"more of bin '{labels[j]}' (odds x{math.exp(eta):.3g})"
                          for j, eta in tilts]))
    return _Layout.of(parts, tilts)


@functools.lru_cache(maxsize=1024)
def _categorical_layout(labels: tuple[str, ...], large: tuple[bool, ...],
                        ordered: bool) -> _Layout:
    """A categorical bank's layout: value tilts (``ordered``: the categories are
    numbers), then each category up, and down where ``large`` (a share of at least
    :data:`DOWN_MIN`)."""
    parts = []
    if ordered:
        parts.append(("shift", [f"{'higher' if sign > 0 else 'lower'} values (tilt "
                                f"{sign * theta:+.3g} sd)" for theta, sign in _TILT_SIGNS]))
    tilts = [(j, eta) for j in range(len(labels))
             for eta in BIN_UP + (BIN_DOWN if large[j] else ())]
    parts.append(("bin", [f"{'more' if eta > 0 else 'less'} '{labels[j]}' (odds "
                          f"x{math.exp(eta):.3g})" for j, eta in tilts]))
    return _Layout.of(parts, tilts)


def _bin_tilt(q: np.ndarray, j: int, eta: float) -> np.ndarray:
    """Bin ``j``'s log odds moved by ``eta``, the other bins' shares in proportion."""
    return _bin_tilts(q, [(j, eta)])[0]


def _bin_tilts(q: np.ndarray, tilts: list[tuple[int, float]] | _Tilts) -> np.ndarray:
    """:func:`_bin_tilt` for each ``(j, eta)`` of ``tilts``, a row each."""
    t = tilts if isinstance(tilts, _Tilts) else _Tilts.of(tilts)
    qe = q[t.bins] * t.up
    p = q[None, :] * (1 - qe / (1 + qe))[:, None]
    p[t.rows, t.bins] = q[t.bins] * t.odds / (1 + qe)
    return p / p.sum(axis=1)[:, None]


@dataclass(frozen=True)
class _Tilts:
    """Tilts ``(bin, log odds)`` as arrays: the bins, ``e^eta - 1``, ``e^eta``."""

    bins: np.ndarray
    up: np.ndarray
    odds: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, tilts: list[tuple[int, float]]) -> _Tilts:
        return cls(np.array([t[0] for t in tilts], dtype=np.int64),
                   np.array([math.expm1(t[1]) for t in tilts]),
                   np.array([math.exp(t[1]) for t in tilts]), np.arange(len(tilts)))


def _ordered_values(bins: FeatureBins) -> np.ndarray | None:
    """The categories as numbers (``__other__``/``__unseen__`` at the mean), if all are."""
    cats = [c for c in bins.labels if c not in (OTHER, UNSEEN)]
    if len(cats) < 3:
        return None
    try:
        values = [float(c) for c in cats]
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    ref = bins.reference[:len(cats)]
    mean = float(np.dot(ref, values) / ref.sum()) if ref.sum() > 0 else 0.0
    return np.array(values + [mean] * (bins.size - len(cats)))


def _thresholds(kl_null: np.ndarray, target: np.ndarray, size: float | None) -> np.ndarray:
    """Per alternative, the least ``h`` whose run length reaches ``target``."""
    lorden = np.log(target)
    # h = log(1 + h + target * mu), mu = KL(q || p) + h / size: log1p(a + c h)
    a = target * kl_null
    c = 1.0 + (target / size if size else 0.0)
    h = lorden.copy()
    for i in range(12):
        new = np.minimum(lorden, np.log1p(a + c * h))
        if i % 4 == 3 and (new == h).all():
            break   # a fixed point: the rest of the 12 rounds would not move it
        h = new
    return h


@dataclass(frozen=True, slots=True)
class Change:
    """The test changed state at value ``index`` of the batch (0-based)."""

    index: int
    alarm: bool            # True: alarm raised; False: cleared
    alternative: int       # the alternative that crossed (alarm) or was tested (clear)
    statistic: float       # its CUSUM, nats
    threshold: float
    since: int             # values from the estimated change start to ``index``, inclusive
    name: str = ""         # the alternative's name (an index can outlive its bank)


class _Group:
    """The alternatives tested over blocks of one size, and their CUSUMs."""

    def __init__(self, block: int, members: np.ndarray, alt: Alternatives) -> None:
        self.block, self.members = block, members
        self.k = alt.reference.size
        m = members.size   # the compiled loop's outputs at a crossing, and its scratch
        self._scratch = (np.empty(m), np.empty(m, dtype=np.int64), np.empty(m))
        self.set_table(alt)
        self.marked: list[np.ndarray] = []   # the CUSUMs at the last scan's marks (numpy)
        # the status (largest CUSUM / threshold, first alternative within TIE of it) of
        # the CUSUMs now (kept with the s and h arrays it is of: any new state or bank
        # makes it stale)
        self._status: tuple[np.ndarray, np.ndarray, float, int] | None = None
        self.reset(0)

    def top_arg(self) -> tuple[float, int]:
        """The largest ratio CUSUM / threshold now, and the first member within
        :data:`TIE` of it (:func:`nearest` within the group)."""
        c = self._status
        if c is None or c[0] is not self.s or c[1] is not self.h:
            c = self._status = (self.s, self.h, *_top_and_nearest(self.s / self.h))
        return c[2], c[3]

    def set_table(self, alt: Alternatives) -> None:
        """The members' log ratios and thresholds, from ``alt`` (the CUSUMs carry on)."""
        self.table = np.ascontiguousarray(alt.log_ratio[self.members].T)  # k x m_g
        self.table_rows = self.table.ravel()   # the same, flat, for the compiled loop
        self.h = alt.threshold[self.members]

    def reset(self, seen: int) -> None:
        self.s = np.zeros(self.members.size)
        self.zero_at = np.full(self.members.size, seen, dtype=np.int64)
        self.partial = np.zeros(self.k, dtype=np.int64)
        self.fill = 0

    def crossing(self, row: int, seen: int) -> tuple[int, int, float, int]:
        """The compiled loop's crossing at block ``row`` (1-based) as :meth:`scan` gives
        it (the CUSUMs then and their last 0s are in the scratch arrays; the state is
        as it was)."""
        s_cross, last_zero, _ = self._scratch
        b, fill = self.block, self.fill
        crossed = np.flatnonzero(s_cross >= self.h)
        j = int(crossed[nearest(s_cross[crossed] / self.h[crossed])])
        z = int(last_zero[j])
        zero = seen - fill + z * b if z else int(self.zero_at[j])
        return row * b - fill - 1, j, float(s_cross[j]), zero

    def scan(self, x: np.ndarray, seen: int, marks: list[int] | None = None
             ) -> tuple[int, int, float, int] | None:
        """Fold ``x`` in (``seen``: values before it). None, or the first crossing: index in
        ``x`` of the block's last value, member, CUSUM, value count when it was last 0.
        On a crossing the state is left as it was (the caller resets it). ``marks``:
        values of ``x`` after which the CUSUMs are wanted too, into ``self.marked``
        (those past a crossing are not meaningful).

        In numpy, where the compiled loop (:meth:`SequentialTest._scan_bank`) was not
        built: the blocks' counts from one ``bincount`` (each value's block is cached),
        and ``W`` (the running sum of the increments, from the CUSUM's current value)
        gets a leading row of zeros, so that its running minimum is ``min(0, min W)``
        directly and ``S = W - min(0, min W)`` takes one subtraction."""
        b, k, fill = self.block, self.k, self.fill
        total = fill + x.size
        full = total // b
        if full == 0:
            if marks:
                self.marked = [self.s] * len(marks)
            self.partial = self.partial + np.bincount(x, minlength=k)
            self.fill = total
            return None
        ids = _block_of(b, total)[fill:total] * k
        ids += x
        c = np.bincount(ids, minlength=(full + 1) * k).reshape(full + 1, k)
        c[0] += self.partial
        w = np.empty((full + 1, self.members.size))
        w[0] = 0.0
        np.matmul(c[:full].astype(float), self.table, out=w[1:])
        w[1] += self.s
        np.add.accumulate(w, axis=0, out=w)
        s = np.fmin.accumulate(w, axis=0)   # no NaN here: fmin is minimum, and faster
        touched = s[-1] < 0   # the CUSUM was 0 in this batch
        np.subtract(w, s, out=s)
        if marks:   # row r: the CUSUMs after r blocks (row 0: as they were)
            self.marked = [s[r].copy() if r else self.s for r in ((fill + p) // b for p in marks)]
        base = seen - fill    # value count at the start of the first block
        if not (s >= self.h).any():
            self.s = s[-1].copy()
            # where the CUSUM was 0, the first least W (row r: after r blocks)
            np.copyto(self.zero_at, base + w.argmin(axis=0) * b, where=touched)
            self.partial, self.fill = c[full], total % b
            return None
        s = s[1:]
        over = s >= self.h
        row = int(np.argmax(over.any(axis=1)))
        crossed = np.flatnonzero(over[row])
        j = int(crossed[nearest(s[row, crossed] / self.h[crossed])])
        zeros = np.flatnonzero(s[:row + 1, j] <= 0)
        zero = base + (int(zeros[-1]) + 1) * b if zeros.size else int(self.zero_at[j])
        return (row + 1) * b - fill - 1, j, float(s[row, j]), zero


_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_TOPS = np.empty(0)
_BLOCK_OF: dict[int, np.ndarray] = {}
_BLOCK_OF_MAX = 1 << 16   # values: longer batches compute theirs afresh


def _block_of(block: int, size: int) -> np.ndarray:
    """``arange(size) // block`` (at least ``size`` of them), cached per block size: the
    block of each value of a batch (bounded: a few block sizes, 64 Ki values each)."""
    cached = _BLOCK_OF.get(block)
    if cached is not None and cached.size >= size:
        return cached
    if size > _BLOCK_OF_MAX:
        return np.arange(size) // block
    cached = _BLOCK_OF[block] = np.arange(max(size, 4096)) // block
    return cached


class SequentialTest:
    """A CUSUM per alternative, over blocks of values; an alarm, then its end.

    Alternatives that take long to detect (expected delay ``d`` values) are
    counted in blocks of up to ``d / 8`` values (among ``blocks``): coarse
    blocks cost little and delay such alarms by a few per cent at most, fine
    ones keep fast alarms fast.

    After an alarm every CUSUM starts again from 0. With ``hold=None`` the alarm
    holds while the change keeps being found again: it ends after
    ``max(confirm, 3 * d)`` values without a new crossing, ``d`` the values
    from the estimated change start to the alarm (a change found once in ``d``
    values is found again in about as many while it lasts). With ``hold=N`` it
    ends after ``N`` values (a trailing baseline that will have absorbed the
    change by then) and :meth:`feed` returns at the end, the rest of the values
    unread, so that the caller can renew its reference first.

    >>> import numpy as np
    >>> from detectors.profile import FeatureBins
    >>> bins = FeatureBins.from_profile("c", {"type": "categorical",
    ...                                 "frequencies": {"a": 0.6, "b": 0.3, "c": 0.1}})
    >>> test = SequentialTest(alternatives(bins, 1e6, reference_size=10_000))
    >>> rng = np.random.default_rng(7)
    >>> x = np.concatenate([rng.choice(3, 5000, p=[.6, .3, .1]),
    ...                     rng.choice(3, 2000, p=[.4, .3, .3])])
    >>> [(c.index, c.alarm, test.alternatives.names[c.alternative]) for c in test.feed(x)]
    [(5079, True, "more 'c' (odds x2.72)")]
    """

    def __init__(self, alternatives: Alternatives, blocks: tuple[int, ...] = (4, 32),
                 hold: int | None = None, confirm: int = 2000) -> None:
        if not blocks or min(blocks) < 1 or list(blocks) != sorted(blocks):
            raise ValueError("blocks must be increasing sizes >= 1")
        if hold is not None and hold < 1:
            raise ValueError("hold must be >= 1")
        if confirm < 1:
            raise ValueError("confirm must be >= 1")
        self.blocks = tuple(blocks)
        self.hold = hold
        self.confirm = confirm
        self._sizes: np.ndarray = np.empty(0, dtype=np.int64)   # block size per alternative
        self.set_alternatives(alternatives)
        self.seen = 0                        # values since the last reset
        self.reset()

    def set_alternatives(self, alternatives: Alternatives) -> None:
        """The bank to test (a new one for the same bins: the CUSUMs carry on against it)."""
        old = getattr(self, "groups", None)
        self.alternatives = alt = alternatives
        drift = np.maximum(alt.kl_alt - alt.margin, 1e-9)
        delay = alt.threshold / drift
        size = np.full(alt.size, self.blocks[0])
        for b in self.blocks[1:]:
            size[delay >= 8 * b] = b
        same = (old is not None and self._sizes.size == size.size
                and bool((self._sizes == size).all())
                and all(o.k == alt.reference.size for o in old))
        self._sizes = size
        if same and old is not None:
            for o in old:   # the same groups (drift's renewals, mostly): new tables, CUSUMs on
                o.set_table(alt)
        else:
            members = [(b, np.flatnonzero(size == b)) for b in self.blocks]
            self.groups = [_Group(b, m, alt) for b, m in members if m.size]
        alarm = getattr(self, "alarm", None)
        if alarm is not None:  # an alarm in force: its alternative's index in the new bank
            alarm["alternative"] = (alt.names.index(alarm["name"]) if alarm["name"] in alt.names
                                    else -1)

    def reset(self) -> None:
        for g in self.groups:
            g.reset(self.seen)
        self.alarm: dict[str, Any] | None = None   # the alarm in force

    # ------------------------------------------------------------------ update

    def feed(self, x: np.ndarray, marks: list[int] | None = None) -> list[Change]:
        """Fold bin indices in; the alarms and clears they lead to (not a detector: the
        detectors of :mod:`detectors.skew` and :mod:`detectors.drift` run it).

        ``marks``: increasing positions in ``x`` (values read) at which the caller wants
        :meth:`status` as it would be had ``x`` been fed in pieces ending there; they
        are noted in ``self.noted`` as ``(position, alternative, CUSUM, threshold, alarm
        in force, the alternative's name)``, up to where feeding stops (a hold that ends
        stops it: the marks after its end are not noted)."""
        out: list[Change] = []
        self.noted: list[tuple[int, int, float, float, bool, str]] = []
        todo = list(marks or ())
        start, n = 0, x.size
        ended = False
        while start < n:
            while todo and todo[0] <= start:
                self._note(todo.pop(0))
            part = x[start:] if start else x
            if self.alarm is None:
                at = self._watch(part, start, out, todo)
            else:
                now = self.status()
                if self.hold is not None:
                    at = self._hold(part, start, out)
                    ended = at is not None
                else:
                    at = self._confirm(part, start, out)
                limit = start + (part.size if at is None else at)
                while todo and todo[0] <= limit:
                    self.noted.append((todo.pop(0), *now, True, self.status_name(now[0])))
                if ended:
                    break  # the caller renews its reference before the rest
            if at is None:
                break
            start += at + 1
        if not ended:
            while todo and todo[0] <= n:
                self._note(todo.pop(0))
        return out

    def _note(self, position: int, statistics: np.ndarray | None = None) -> None:
        """:meth:`status` now (or for the CUSUMs ``statistics``), noted at ``position``."""
        if statistics is None or self.alarm is not None:
            j, value, threshold = self.status()
        else:
            j = nearest(statistics / self.alternatives.threshold)
            value, threshold = float(statistics[j]), float(self.alternatives.threshold[j])
        self.noted.append((position, j, value, threshold, self.alarm is not None,
                           self.status_name(j)))

    def _scan(self, x: np.ndarray, offset: int = 0, marks: list[int] | None = None
              ) -> tuple[int, int, float, int, int] | None:
        """Every group over ``x``: the first crossing (index in ``x``, alternative, CUSUM,
        value count at its last 0, block), after which every CUSUM starts again; or None
        (then the state has moved past ``x``). ``marks`` (positions ``offset`` onwards,
        those in ``x`` and before a crossing are taken off and noted)."""
        if _cusum is not None and KERNEL and self.groups:
            return self._scan_bank(x, offset, marks)
        first: tuple[int, int, float, int] | None = None
        gfirst: _Group | None = None
        rel = [p - offset for p in marks if p - offset <= x.size] if marks else None
        for g in self.groups:
            hit = g.scan(x, self.seen, rel)
            if hit is not None and (first is None or hit[0] < first[0]):
                first, gfirst = hit, g
        if rel and marks is not None:
            limit = x.size if first is None else first[0]
            size = self.alternatives.size
            for i, p in enumerate(rel):
                if p > limit:
                    break
                s = np.zeros(size)
                for g in self.groups:
                    s[g.members] = g.marked[i]
                self._note(offset + p, s if size else None)
                marks.pop(0)
        if first is None or gfirst is None:
            self.seen += x.size
            return None
        at, jj, stat, zero = first
        self.seen += at + 1
        for g in self.groups:
            g.reset(self.seen)
        return at, int(gfirst.members[jj]), stat, zero, gfirst.block

    def _scan_bank(self, x: np.ndarray, offset: int, marks: list[int] | None
                   ) -> tuple[int, int, float, int, int] | None:
        """:meth:`_scan` in one call of the compiled loop for every group, the bank's
        status at the marks picked there too (the same figures: each group's loop is
        :meth:`_Group.scan`'s, the status :func:`nearest` over the bank's ratios)."""
        groups = self.groups
        rel = [p - offset for p in marks if p - offset <= x.size] if marks else []
        r = len(rel)
        mj, ms, mh = ((np.empty(r, dtype=np.int64), np.empty(r), np.empty(r)) if r
                      else (_NO_ROWS, _NO_TOPS, _NO_TOPS))
        g_top, g_arg, g_fill = (np.empty(len(groups)), np.empty(len(groups), dtype=np.int64),
                                np.empty(len(groups), dtype=np.int64))
        # s, zero_at and partial in place: written only when nothing crossed anywhere
        # (else every group starts again), after every argument was checked
        gi, row, taken = _cusum.scan_bank(
            x if x.dtype == np.int64 and x.flags.c_contiguous
            else np.ascontiguousarray(x, dtype=np.int64),
            tuple((g.table_rows, g.h, g.s, g.zero_at, g.partial, g.members, *g._scratch,
                   g.block, g.fill) for g in groups),
            self.seen, np.array(rel, dtype=np.int64) if r else _NO_ROWS, TIE, mj, ms, mh,
            g_top, g_arg, g_fill)
        if taken and marks is not None:   # no alarm in force while watching
            names = self.alternatives.names
            self.noted += [(offset + p, j, v, h, False, names[j]) for p, j, v, h in
                           zip(rel, mj[:taken].tolist(), ms[:taken].tolist(),
                               mh[:taken].tolist())]
            del marks[:taken]
        if gi < 0:
            for g, top, arg, fill in zip(groups, g_top.tolist(), g_arg.tolist(),
                                         g_fill.tolist(), strict=True):
                g.fill, g._status = fill, (g.s, g.h, top, arg)
            self.seen += x.size
            return None
        g = groups[gi]
        at, jj, stat, zero = g.crossing(row, self.seen)
        self.seen += at + 1
        for g2 in groups:
            g2.reset(self.seen)
        return at, int(g.members[jj]), stat, zero, g.block

    def _span(self, since: int) -> int:
        """Values without a new crossing after which an alarm is over."""
        return max(self.confirm, 3 * since)

    def _watch(self, x: np.ndarray, offset: int, out: list[Change],
               marks: list[int] | None = None) -> int | None:
        hit = self._scan(x, offset, marks)
        if hit is None:
            return None
        at, j, stat, zero, _ = hit
        since = self.seen - zero
        name, h = self.alternatives.names[j], float(self.alternatives.threshold[j])
        out.append(Change(offset + at, True, j, stat, h, since, name))
        self.alarm = {"alternative": j, "name": name, "threshold": h, "statistic": stat,
                      "at": self.seen, "since": since,
                      "until": self.seen + (self.hold or self._span(since))}
        return at

    def _hold(self, x: np.ndarray, offset: int, out: list[Change]) -> int | None:
        assert self.alarm is not None
        left = int(self.alarm["until"]) - self.seen
        if x.size < left:
            self.seen += x.size
            return None
        self.seen += left
        self._end(offset + left - 1, out)
        return left - 1

    def _confirm(self, x: np.ndarray, offset: int, out: list[Change]) -> int | None:
        """While an alarm is in force the CUSUMs run afresh: a new crossing confirms it
        (and pushes its end back), none for :meth:`_span` values ends it."""
        assert self.alarm is not None
        left = int(self.alarm["until"]) - self.seen
        part = x[:left]
        hit = self._scan(part)
        if hit is not None:
            at, j, stat, zero, _ = hit
            self.alarm.update(statistic=max(stat, float(self.alarm["statistic"])),
                              until=self.seen + self._span(self.seen - zero),
                              confirmed=self.seen)
            return at
        if part.size < left:
            return None
        self._end(offset + left - 1, out)
        return left - 1

    def _end(self, index: int, out: list[Change]) -> None:
        assert self.alarm is not None
        out.append(Change(index, False, int(self.alarm["alternative"]), 0.0,
                          float(self.alarm["threshold"]), self.seen - int(self.alarm["at"]),
                          str(self.alarm["name"])))
        self.alarm = None
        for g in self.groups:
            g.reset(self.seen)

    # ------------------------------------------------------------------ status

    def statistics(self) -> np.ndarray:
        """Every alternative's CUSUM, nats."""
        s = np.zeros(self.alternatives.size)
        for g in self.groups:
            s[g.members] = g.s
        return s

    def status(self) -> tuple[int, float, float]:
        """The alternative nearest its threshold, its CUSUM and threshold (an alarm in
        force: the alarm's, its CUSUM at least the threshold; its index is -1 when the
        bank was rebuilt without it since, :meth:`status_name` still names it)."""
        h = self.alternatives.threshold
        if self.alarm is not None:
            j, hj = int(self.alarm["alternative"]), float(self.alarm["threshold"])
            return j, max(float(self.alarm["statistic"]), hj), hj
        if self.alternatives.size == 0:
            return -1, 0.0, math.inf
        picked = _pick([(g, *g.top_arg(), g.s) for g in self.groups])
        if picked is not None:
            return picked
        s = self.statistics()
        j = nearest(s / h)
        return j, float(s[j]), float(h[j])

    def status_name(self, j: int) -> str:
        """The name of :meth:`status`'s alternative ``j`` ("" when there is none)."""
        if self.alarm is not None:
            return str(self.alarm["name"])
        return self.alternatives.names[j] if j >= 0 else ""

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [{"s": g.s.tolist(), "zero_at": g.zero_at.tolist(),
                            "partial": g.partial.tolist(), "fill": g.fill}
                           for g in self.groups],
                "seen": self.seen, "alarm": self.alarm}

    def load_dict(self, data: dict[str, Any]) -> bool:
        """False (nothing loaded) when the state is of another bank or other bins, or
        does not fit them (an open block as long as a block, or longer)."""
        groups = data.get("groups", [])
        if (len(groups) != len(self.groups)
                or any(len(d["s"]) != g.members.size or len(d["zero_at"]) != g.members.size
                       or len(d["partial"]) != g.k or not 0 <= int(d["fill"]) < g.block
                       for d, g in zip(groups, self.groups, strict=True))):
            return False
        for d, g in zip(groups, self.groups, strict=True):
            g.s = np.asarray(d["s"], dtype=float)
            g.zero_at = np.asarray(d["zero_at"], dtype=np.int64)
            g.partial = np.asarray(d["partial"], dtype=np.int64)
            g.fill = int(d["fill"])
        self.seen, alarm = int(data["seen"]), data["alarm"]
        if alarm is not None and "name" not in alarm:  # saved before alarms carried them
            j = int(alarm["alternative"])
            if not 0 <= j < self.alternatives.size:
                alarm = None
            else:
                alarm.update(name=self.alternatives.names[j],
                             threshold=float(self.alternatives.threshold[j]))
        self.alarm = alarm
        return True
