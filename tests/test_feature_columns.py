"""A micro-batch's feature objects pulled apart into columns: the one-pass reading
(every event has every name) gives what the per-name reading gives."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.quality import FeatureColumns

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
