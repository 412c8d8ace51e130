"""The sequential test's faster arithmetic against the one it replaced, on random inputs.

:mod:`detectors.sequential` builds its banks of alternatives a block of rows at a
time and folds a micro-batch into each group of CUSUMs with fewer numpy calls
than it used to. Both are meant to give the same numbers, bit for bit: the
reference implementations below are the previous code, kept verbatim (one
alternative at a time; the blocks' counts, then ``S = W - min(0, running min of
W)`` in full), and every array and every change must match exactly.

The drift detector reads the status after each chunk off one pass over the
CUSUMs instead of a pass per chunk: the same sums in another order, so its
figures are compared to 1e-9 (relative) against feeding chunk by chunk, and
every alarm, clear, index and summary must be the same.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from detectors import sequential
from detectors.profile import OTHER, FeatureBins
from detectors.sequential import (
    BIN_DOWN,
    BIN_NUMERIC,
    BIN_UP,
    DOWN_MIN,
    FLOOR,
    LOG_SCALES,
    SHIFTS_SD,
    TILTS,
    UNKNOWN_SIZE,
    WEIGHTS,
    Alternatives,
    SequentialTest,
    _ordered_values,
    _thresholds,
    alternatives,
    nearest,
)

# -- the previous code ----------------------------------------------------------


def reference_alternatives(bins: FeatureBins, run_length: float, *,
                           shares: np.ndarray | None = None,
                           reference_size: float | None = None) -> Alternatives:
    raw = bins.reference if shares is None else np.asarray(shares, dtype=float)
    k = raw.size
    n = float(reference_size) if reference_size else UNKNOWN_SIZE
    q = (raw / raw.sum() * n + 0.5) / (n + 0.5 * k)
    names: list[str] = []
    family: list[str] = []
    rows: list[np.ndarray] = []
    probs: list[np.ndarray] = []

    def add(name: str, fam: str, p: np.ndarray, mix: bool = True) -> None:
        if mix:
            p = (1 - FLOOR) * p + FLOOR * q
        names.append(name)
        family.append(fam)
        probs.append(p)
        rows.append(np.log(p / q))

    if bins.kind == "numeric" and k >= 2 and math.isfinite(bins.lo) and bins.hi > bins.lo:
        edges = np.concatenate([[bins.lo], bins.inner_edges, [bins.hi]])
        cum = np.concatenate([[0.0], np.cumsum(q)])
        cum[-1] = 1.0
        q1, q3 = np.interp([0.25, 0.75], cum, edges)
        sd = float(q3 - q1) / 1.349
        median = float(np.interp(0.5, cum, edges))
        inner = bins.inner_edges

        def binned(at: np.ndarray) -> np.ndarray:
            return np.diff(np.concatenate([[0.0], np.interp(at, edges, cum), [1.0]]))

        if sd > 0:
            for d in SHIFTS_SD:
                for sign in (1, -1):
                    add(f"mean shift {sign * d:+.3g} sd", "shift", binned(inner - sign * d * sd))
            for s in LOG_SCALES:
                for sign in (1, -1):
                    f = math.exp(sign * s)
                    add(f"spread x{f:.3g}", "spread", binned(median + (inner - median) / f))
        for j in range(k):
            for eta in BIN_NUMERIC:
                add(f"more of bin '{bins.labels[j]}' (odds x{math.exp(eta):.3g})", "bin",
                    reference_bin_tilt(q, j, eta), mix=False)
    elif bins.kind == "categorical":
        ordered = _ordered_values(bins)
        if ordered is not None:
            score = ordered - float((q * ordered).sum())
            score = score / math.sqrt(float((q * score * score).sum()))
            for theta in TILTS:
                for sign in (1, -1):
                    w = q * np.exp(sign * theta * score)
                    add(f"{'higher' if sign > 0 else 'lower'} values (tilt {sign * theta:+.3g} "
                        "sd)", "shift", w / w.sum())
        for j in range(k):
            for eta in BIN_UP + (BIN_DOWN if q[j] >= DOWN_MIN else ()):
                word = "more" if eta > 0 else "less"
                add(f"{word} '{bins.labels[j]}' (odds x{math.exp(eta):.3g})", "bin",
                    reference_bin_tilt(q, j, eta), mix=False)
    if not names:
        empty = np.empty(0)
        return Alternatives((), (), q, np.empty((0, k)), empty, empty, empty, empty,
                            run_length, reference_size)
    log_ratio = np.array(rows)
    p = np.array(probs)
    kl_null = np.maximum(-(q * log_ratio).sum(axis=1), 1e-12)
    kl_alt = (p * log_ratio).sum(axis=1)
    fam = np.array(family)
    weights = {f: WEIGHTS[f] for f in WEIGHTS if (fam == f).any()}
    total = sum(weights.values())
    share = np.array([weights[f] / total / int((fam == f).sum()) for f in family])
    h = _thresholds(kl_null, run_length / share, reference_size)
    margin = h / reference_size if reference_size else np.zeros_like(h)
    return Alternatives(tuple(names), tuple(family), q, log_ratio - margin[:, None], h,
                        kl_null, kl_alt, margin, run_length, reference_size)


def reference_bin_tilt(q: np.ndarray, j: int, eta: float) -> np.ndarray:
    p = q * (1 - q[j] * math.expm1(eta) / (1 + q[j] * math.expm1(eta)))
    p[j] = q[j] * math.exp(eta) / (1 + q[j] * math.expm1(eta))
    return p / p.sum()


def reference_counts(g: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    b, k = g.block, g.k
    total = g.fill + x.size
    full = total // b
    if full == 0:
        return np.empty((0, k)), g.partial + np.bincount(x, minlength=k), g.fill
    ids = (np.arange(g.fill, total) // b) * k
    ids += x
    c = np.bincount(ids, minlength=(full + 1) * k).reshape(full + 1, k)
    c[0] += g.partial
    return c[:full].astype(float), c[full], g.fill


def reference_scan(g: Any, x: np.ndarray, seen: int,
                   marks: list[int] | None = None) -> tuple[int, int, float, int] | None:
    assert marks is None
    counts, partial, fill = reference_counts(g, x)
    b = g.block
    base = seen - fill
    if counts.shape[0] == 0:
        g.partial, g.fill = partial, fill + x.size
        return None
    w = counts @ g.table
    w[0] += g.s
    np.cumsum(w, axis=0, out=w)
    run = np.minimum.accumulate(w, axis=0)
    reached = run[-1].copy()
    np.minimum(run, 0.0, out=run)
    s = np.subtract(w, run, out=run)
    if not (s.max(axis=0) >= g.h).any():
        g.s = s[-1].copy()
        touched = reached < 0
        if touched.any():
            last = w[:, touched].argmin(axis=0)
            g.zero_at[touched] = base + (last + 1) * b
        g.partial, g.fill = partial, (fill + x.size) % b
        return None
    over = s >= g.h
    row = int(np.argmax(over.any(axis=1)))
    crossed = np.flatnonzero(over[row])
    # (the rule for near ties came later, with the batched drift: the current one)
    j = int(crossed[sequential.nearest(s[row, crossed] / g.h[crossed])])
    zeros = np.flatnonzero(s[:row + 1, j] <= 0)
    zero = base + (int(zeros[-1]) + 1) * b if zeros.size else int(g.zero_at[j])
    return (row + 1) * b - fill - 1, j, float(s[row, j]), zero


# -- random inputs ----------------------------------------------------------------


def random_bins(rng: np.random.Generator, kind: str) -> FeatureBins:
    if kind == "numeric":
        k = int(rng.integers(1, 30))
        edges = np.sort(rng.normal(size=k + 1) * rng.uniform(0.1, 100))
        if rng.random() < 0.2:
            edges[0] = -np.inf
        counts = rng.integers(0 if rng.random() < 0.2 else 1, 1000, size=k)
        counts[rng.integers(k)] += 1
        prof: dict[str, Any] = {"type": "numeric", "bins": edges.tolist(),
                                "counts": counts.tolist()}
    else:
        k = int(rng.integers(1, 40))
        numbers = rng.random() < 0.4
        cats = [str(i) if numbers else f"c{i}" for i in range(k)]
        freqs = dict(zip(cats, rng.dirichlet(np.full(k, rng.uniform(0.2, 3))).tolist(),
                         strict=True))
        if rng.random() < 0.3:
            freqs[OTHER] = 0.05
        prof = {"type": "categorical", "frequencies": freqs}
    bins = FeatureBins.from_profile("f", prof)
    assert bins is not None
    return bins


def bank_and_shift(rng: np.random.Generator, kind: str
                   ) -> tuple[FeatureBins, Alternatives, np.ndarray, np.ndarray]:
    """Random bins, their bank, the reference shares and shares half moved elsewhere
    (unnormalised)."""
    bins = random_bins(rng, kind)
    bank = alternatives(bins, float(rng.choice([1e4, 1e6])), reference_size=10_000)
    q = bins.reference / bins.reference.sum()
    return bins, bank, q, rng.dirichlet(np.ones(bins.size)) * 0.5 + q * 0.5


def assert_same_bank(a: Alternatives, b: Alternatives) -> None:
    assert a.names == b.names and a.family == b.family
    assert a.run_length == b.run_length and a.reference_size == b.reference_size
    for field in ("reference", "log_ratio", "threshold", "kl_null", "kl_alt", "margin"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.shape == y.shape and np.array_equal(x, y), field


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["numeric", "categorical"]),
       size=st.sampled_from([None, 2_000, 50_000]), own=st.booleans(),
       run_length=st.sampled_from([1e4, 1e6, 6.048e7]))
def test_banks_are_built_as_before(seed: int, kind: str, size: int | None, own: bool,
                                   run_length: float) -> None:
    rng = np.random.default_rng(seed)
    bins = random_bins(rng, kind)
    shares = rng.integers(0, 500, size=bins.size).astype(float) + 1 if own else None
    assert_same_bank(alternatives(bins, run_length, shares=shares, reference_size=size),
                     reference_alternatives(bins, run_length, shares=shares,
                                            reference_size=size))


def changes(test: SequentialTest, x: np.ndarray, cuts: np.ndarray) -> list[Any]:
    out: list[Any] = []
    for part in np.split(x, cuts):
        out.append([(c.index, c.alarm, c.alternative, c.statistic, c.threshold, c.since)
                    for c in test.feed(part)])
        out.append(test.to_dict())
        out.append(test.status())
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["numeric", "categorical"]),
       hold=st.sampled_from([None, 700]), blocks=st.sampled_from([(4, 32), (1, 8), (16,)]),
       batch=st.sampled_from([3, 29, 100, 667, 5000]))
def test_cusums_fold_values_as_before(seed: int, kind: str, hold: int | None,
                                      blocks: tuple[int, ...], batch: int) -> None:
    """Same alarms, clears, indices, statistics and state, on a stream that changes
    (and changes back), cut into random micro-batches."""
    rng = np.random.default_rng(seed)
    bins, bank, q, moved = bank_and_shift(rng, kind)
    n = int(rng.integers(2_000, 12_000))
    x = np.concatenate([rng.choice(bins.size, n // 2, p=q),
                        rng.choice(bins.size, n // 4, p=moved / moved.sum()),
                        rng.choice(bins.size, n - n // 2 - n // 4, p=q)])
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, max(1, n // batch)), replace=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequential, "KERNEL", False)
        new = changes(SequentialTest(bank, blocks, hold=hold, confirm=500), x, cuts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequential, "KERNEL", False)
        patch.setattr(sequential._Group, "scan", reference_scan)
        old = changes(SequentialTest(bank, blocks, hold=hold, confirm=500), x, cuts)
    assert new == old
    if sequential._cusum is not None:   # the compiled loop: the same up to the last bits
        assert close(changes(SequentialTest(bank, blocks, hold=hold, confirm=500), x, cuts),
                     old)


# -- statuses read off one pass (drift's chunks) ------------------------------------


def close(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 (relative): one pass over the CUSUMs sums in another order
    than a pass per piece."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["numeric", "categorical"]),
       hold=st.sampled_from([None, 700]), blocks=st.sampled_from([(4, 32), (1, 8), (16,)]),
       kernel=st.booleans())
def test_statuses_at_marks_are_those_of_feeding_in_pieces(seed: int, kind: str,
                                                          hold: int | None,
                                                          blocks: tuple[int, ...],
                                                          kernel: bool) -> None:
    """The compiled loop (``kernel``) picks the statuses at the marks itself, the numpy
    one from the CUSUMs at each mark: both as feeding in pieces gives them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequential, "KERNEL", kernel)
        statuses_at_marks(seed, kind, hold, blocks)


def statuses_at_marks(seed: int, kind: str, hold: int | None, blocks: tuple[int, ...]) -> None:
    rng = np.random.default_rng(seed)
    bins, bank, q, moved = bank_and_shift(rng, kind)
    n = int(rng.integers(500, 4_000))
    x = np.concatenate([rng.choice(bins.size, n // 2, p=q),
                        rng.choice(bins.size, n - n // 2, p=moved / moved.sum())])
    marks = sorted({0, n, *rng.choice(np.arange(n + 1), size=8).tolist()})
    one = SequentialTest(bank, blocks, hold=hold, confirm=500)
    got = [(c.index, c.alarm, c.alternative, c.statistic, c.since) for c in one.feed(x, marks)]
    noted = one.noted
    pieces = SequentialTest(bank, blocks, hold=hold, confirm=500)
    want, statuses, start = [], [], 0
    for m in marks:
        changes = pieces.feed(x[start:m])
        want += [(c.index + start, c.alarm, c.alternative, c.statistic, c.since)
                 for c in changes]
        if hold is not None and changes and not changes[-1].alarm:
            break  # a hold ended: feed stops there, its caller renews the reference
        j, value, threshold = pieces.status()
        statuses.append((m, j, value, threshold, pieces.alarm is not None,
                         bank.names[j] if j >= 0 else ""))
        start = m
    if hold is not None and want and not want[-1][1]:
        want = want[:len(got)]
    assert close(got, want)
    assert close(noted, statuses[:len(noted)])
    if not (hold is not None and got and not got[-1][1]):
        assert len(noted) == len(marks)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["numeric", "categorical"]),
       batch=st.sampled_from([777, 2_500, 9_000]), shift=st.sampled_from([0.0, 0.3, 1.0]))
@example(seed=2_778_823_319, kind="numeric", batch=2_500, shift=0.0)  # two tied alternatives
@example(seed=2_349_662_259, kind="numeric", batch=777, shift=0.3)  # a hold ends in the tail
def test_drift_gives_the_same_signals_however_the_stream_is_batched(
        seed: int, kind: str, batch: int, shift: float) -> None:
    """Chunk-sized batches feed the CUSUMs a chunk at a time (as drift did for every
    batch); longer ones in one pass per stretch between renewals of the baseline.
    (An alarm's evidence, ``largest_moves`` and ``window``, counts the values of its
    own batch only, so it depends on the batching: left out.)"""
    from detectors.drift import DriftDetector
    from detectors.skew import calibrate
    rng = np.random.default_rng(seed)
    bins = random_bins(rng, kind)
    cal = calibrate(bins.reference, 400, 100, 1e5, baseline=1600)
    q = bins.reference / bins.reference.sum()
    moved = np.roll(q, 1) * shift + q * (1 - shift)
    n = 12_000
    x = np.concatenate([rng.choice(bins.size, n // 2, p=q),
                        rng.choice(bins.size, n // 4, p=moved / moved.sum()),
                        rng.choice(bins.size, n - n // 2 - n // 4, p=q)])
    ts = np.arange(n, dtype=float)
    values = x.astype(float) if kind == "numeric" else None

    def run(size: int) -> list[Any]:
        det = DriftDetector("m", "v", "f", bins=bins, calibration=cal)
        out: list[Any] = []
        for lo in range(0, n, size):
            b: dict[str, np.ndarray] = {"ts": ts[lo:lo + size], "bin": x[lo:lo + size]}
            if values is not None:
                b["value"] = values[lo:lo + size]
            out += [(s.active, s.timestamp, s.summary,
                     {k: v for k, v in s.details.items() if k not in ("largest_moves", "window")})
                    for s in det.update(b)]
        return out + [det.to_dict()]

    assert close(run(batch), run(cal.hop))


# -- the compiled loop's guards ---------------------------------------------------------


@pytest.mark.skipif(sequential._cusum is None, reason="built without a C compiler")
def test_the_compiled_loop_refuses_what_it_cannot_read() -> None:
    """A bin index past the table, a wrong dtype, buffers of the wrong sizes, marks out
    of order: an exception (the worker isolates it to the model), never a read past a
    buffer, and the state untouched."""
    scan_bank = sequential._cusum.scan_bank
    m, k = 2, 3

    def group(table: Any = None, block: int = 4, fill: int = 0, s: Any = None) -> tuple:
        return (np.zeros(k * m) if table is None else table, np.ones(m),
                np.zeros(m) if s is None else s, np.zeros(m, dtype=np.int64),
                np.zeros(k, dtype=np.int64), np.arange(m, dtype=np.int64), np.empty(m),
                np.empty(m, dtype=np.int64), np.empty(m), block, fill)

    def call(x: Any, groups: Any = None, tie: float = 1e-9, marks: Any = None) -> Any:
        groups = (group(),) if groups is None else groups
        marks = np.empty(0, dtype=np.int64) if marks is None else marks
        r, g = len(marks), len(groups)
        return scan_bank(x, groups, 0, marks, tie, np.empty(r, dtype=np.int64), np.empty(r),
                         np.empty(r), np.empty(g), np.empty(g, dtype=np.int64),
                         np.empty(g, dtype=np.int64))

    assert call(np.array([0, 1, 2, 2, 1], dtype=np.int64)) == (-1, -1, 0)
    assert call(np.array([0, 1, 2], dtype=np.int64), marks=np.array([0, 3]))[2] == 2
    with pytest.raises(ValueError, match="inconsistent sizes"):
        call(np.array([0], dtype=np.int64), tie=-1.0)
    with pytest.raises(ValueError, match="inconsistent sizes"):
        call(np.array([0], dtype=np.int64), marks=np.array([1, 0]))
    with pytest.raises(ValueError, match="inconsistent sizes"):
        call(np.array([0], dtype=np.int64), marks=np.array([2]))
    s = np.full(m, 0.5)
    with pytest.raises(IndexError, match="bin index 3"):
        call(np.array([0, 1, 2, 0, 3], dtype=np.int64),
             groups=(group(table=np.full(k * m, -1.0), s=s),))
    assert (s == 0.5).all()   # nothing written (the first block would have taken it to 0)
    with pytest.raises(IndexError, match="bin index -1"):
        call(np.array([-1], dtype=np.int64))
    with pytest.raises(TypeError):
        call(np.array([0.0, 1.0]))
    with pytest.raises(TypeError):
        call(np.array([0], dtype=np.int64), groups=([*group()],))
    with pytest.raises(ValueError, match="inconsistent sizes"):
        call(np.array([0], dtype=np.int64), groups=(group(table=np.zeros(k * m - 1)),))
    with pytest.raises(ValueError, match="inconsistent sizes"):
        call(np.array([0], dtype=np.int64), groups=(group(fill=4),))
    with pytest.raises(ValueError, match="other bins"):
        call(np.array([0], dtype=np.int64),
             groups=(group(), (np.zeros(2 * m), *group()[1:4], np.zeros(2, dtype=np.int64),
                               *group()[5:])))
    test = SequentialTest(alternatives(random_bins(np.random.default_rng(1), "categorical"),
                                       1e6))
    with pytest.raises(IndexError):
        test.feed(np.array([test.alternatives.reference.size + 5]))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["numeric", "categorical"]),
       ties=st.sampled_from(["none", "all at 0", "within a group", "across groups"]))
def test_the_status_from_each_groups_best_is_the_banks_nearest(seed: int, kind: str,
                                                                ties: str) -> None:
    """status() reads each group's best ratio and its first alternative within TIE; the
    bank's nearest alternative must come out, ties to the bank's first, as
    :func:`sequential.nearest` over the whole bank gives it (CUSUMs set at random below
    their thresholds, some copied onto another alternative, exactly or within TIE)."""
    rng = np.random.default_rng(seed)
    _, bank, _, _ = bank_and_shift(rng, kind)
    test = SequentialTest(bank, (4, 32))
    if bank.size == 0:
        return
    h = bank.threshold
    for g in test.groups:
        g.s = (0.0 if ties == "all at 0" else 1.0) * rng.uniform(0, 0.9, g.members.size) * g.h
    if ties in ("within a group", "across groups"):
        s = test.statistics()
        j = int(np.argmax(s / h))
        pool = [g for g in test.groups if (ties == "within a group") == (j in g.members)]
        if pool:
            g = pool[int(rng.integers(len(pool)))]
            i = 0 if rng.random() < 0.5 else int(rng.integers(g.members.size))
            if g.members[i] != j:
                new = g.s.copy()
                new[i] = s[j] / h[j] * g.h[i] * (1 + float(rng.choice([0.0, 1e-12, -1e-12])))
                g.s = new
    s = test.statistics()
    want = nearest(s / h)
    assert test.status() == (want, float(s[want]), float(h[want]))


def test_a_saved_state_that_does_not_fit_the_bank_is_not_loaded() -> None:
    """A checkpoint whose open block is a whole block or more, or whose arrays are of
    other sizes, loads nothing (the test starts afresh) rather than feeding the loop
    a state it would refuse on every micro-batch."""
    rng = np.random.default_rng(5)
    bins = FeatureBins.from_profile("c", {"type": "categorical", "frequencies": {
        "a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}})
    assert bins is not None
    bank, q = alternatives(bins, 1e6, reference_size=10_000), bins.reference
    test = SequentialTest(bank, (4, 32))
    test.feed(rng.choice(bins.size, 1_003, p=q))
    saved = test.to_dict()
    assert SequentialTest(bank, (4, 32)).load_dict(saved)
    for broken in ({"fill": 4}, {"fill": -1}, {"zero_at": [0]}):
        state = orjson.loads(orjson.dumps(saved))
        state["groups"][0].update(broken)
        fresh = SequentialTest(bank, (4, 32))
        assert not fresh.load_dict(state)
        assert fresh.seen == 0 and fresh.feed(rng.choice(bins.size, 100, p=q)) == []
