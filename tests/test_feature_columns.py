"""A micro-batch's feature objects pulled apart into columns: the one-pass reading
(every event has every name) gives what the per-name reading gives."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.quality import FeatureColumns, FeatureTable, as_rows, pick

NAMES = ["a", "b", "c"]
value = st.sampled_from([None, 0, 1.5, -2, 2**64 - 1, True, False, "x", "1.5"])
features = st.one_of(st.none(), st.dictionaries(st.sampled_from([*NAMES, "d", "e"]), value),
                     st.fixed_dictionaries({n: value for n in NAMES}))


def _reference(feats: list[dict[str, Any] | None], names: list[str], numeric: set[str]
               ) -> tuple[Any, ...]:
    events = [f if f is not None else {} for f in feats]
    values = {n: [f.get(n) for f in events] for n in names}
    numbers = {n: np.fromiter((v if type(v) in (int, float) else np.nan for v in values[n]),
                              dtype=float, count=len(events)) for n in names if n in numeric}
    seen = set().union(*events) if events else set()
    return values, numbers, frozenset(seen - set(names))


@settings(max_examples=300, deadline=None)
@given(feats=st.lists(features, max_size=8), names=st.sampled_from([NAMES, ["a"], [], ["a", "d"]]),
       numeric=st.sampled_from([set(), {"a"}, {"a", "b", "c", "d"}]))
def test_columns_as_per_name(feats: list[dict[str, Any] | None], names: list[str],
                             numeric: set[str]) -> None:
    got = FeatureColumns.extract(feats, names, numeric)
    values, numbers, extra = _reference(feats, names, numeric)
    assert got.values == values and got.extra == extra and len(got) == len(feats)
    assert got.numbers.keys() == numbers.keys()
    for n, x in numbers.items():
        assert got.numbers[n].dtype == x.dtype and got.numbers[n].shape == x.shape
        np.testing.assert_array_equal(got.numbers[n], x)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(0, 12), start=st.integers(0, 12), stop=st.integers(0, 12),
       data=st.data())
def test_a_run_of_rows_is_taken_as_the_rows_one_by_one(rows: int, start: int, stop: int,
                                                        data: st.DataObject) -> None:
    """``as_rows`` gives a range for an increasing run; ``pick`` and ``FeatureTable.take``
    read it as a slice, and must give what the same rows listed give."""
    x = np.arange(rows, dtype=float) * 1.5
    before = x.copy()
    c = data.draw(st.lists(value, min_size=rows, max_size=rows))
    table = FeatureTable(("x", "c"), [x, c], rows)
    start, stop = min(start, rows), min(max(start, stop), rows)
    run = as_rows(np.arange(start, stop, dtype=np.uint32))
    assert isinstance(run, range) == (stop > start)
    listed = list(range(start, stop))
    taken = table.take(run)
    assert list(taken) == list(table.take(listed)) == [table[i] for i in listed]
    assert pick(c, run) == pick(c, listed) and pick(x, run) == pick(x, listed)
    if taken is not table:  # a copy: writing to it leaves the micro-batch's columns alone
        for col in taken.columns:
            if isinstance(col, np.ndarray) and col.size:
                col[0] = -1.0
        assert table.columns[0].tolist() == before.tolist()
    shuffled = data.draw(st.permutations(listed))
    as_listed = as_rows(np.array(shuffled, dtype=np.int64))
    assert list(as_listed) == shuffled
    assert isinstance(as_listed, range) == (shuffled == listed and bool(listed))


def test_rows_in_another_order_between_the_same_ends_are_listed() -> None:
    for rows in ([0, 2, 1, 3], [5, 7, 6, 6, 8], [1, 1, 1, 4]):
        got = as_rows(np.array(rows, dtype=np.uint32))
        assert got == rows and not isinstance(got, range)
