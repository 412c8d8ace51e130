"""The compiled bins (detectors/_bins.c) are the plain ones, value for value.

Skew, drift, canary and label-drift checks count values per bin of a profile; a
worker with the compiled loops and one without must count the same. Categories:
repeated string objects and equal strings that are other objects, categories
absent from the profile, and the same errors for what cannot be looked up.
Numbers: ``numpy.searchsorted(edges, values, side="right")`` for values on the
edges, between and beyond them, both zeros, infinities and NaN.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import profile
from detectors.profile import FeatureBins

pytestmark = pytest.mark.skipif(profile._bins is None, reason="built without a C compiler")

@settings(max_examples=300, deadline=None)
@given(cats=st.lists(st.text(max_size=3), max_size=8, unique=True),
       picks=st.lists(st.integers(0, 11), max_size=100), fallback=st.integers(0, 20))
def test_category_bins_are_index_get(cats: list[str], picks: list[int], fallback: int) -> None:
    index = {c: i for i, c in enumerate(cats)}
    pool = [*cats, "absent", "", "zz", "é"]
    # the same string objects repeated (as the batch reader shares them), and equal
    # strings that are other objects
    values = [pool[p % len(pool)] if p % 2 else "".join(list(pool[p % len(pool)]))
              for p in picks]
    got = np.frombuffer(profile._bins.categories(values, index, fallback), np.int64)
    assert got.tolist() == list(map(index.get, values, repeat(fallback)))


EDGE_POOL = [-2.5, -1.0, -0.0, 0.0, 1e-300, 1.0, 3.0, 1e300]


@settings(max_examples=300, deadline=None)
@given(edges=st.lists(st.sampled_from(EDGE_POOL) | st.floats(-1e6, 1e6), max_size=40),
       values=st.lists(st.sampled_from([*EDGE_POOL, np.nan, np.inf, -np.inf])
                       | st.floats(allow_nan=True, allow_infinity=True), max_size=200))
def test_numeric_bins_are_searchsorted(edges: list[float], values: list[float]) -> None:
    e, v = np.sort(np.array(edges, dtype=float)), np.array(values, dtype=float)
    got = np.frombuffer(profile._bins.numeric(v, e), np.int64)
    assert got.tolist() == np.searchsorted(e, v, side="right").tolist()


def test_numeric_bins_fall_back_where_the_compiled_search_would_differ() -> None:
    """Edges out of order or not finite, values not float64: numpy's answer."""
    with pytest.raises(TypeError, match="float64"):
        profile._bins.numeric(np.arange(3), np.array([1.0]))
    for edges in ([2.0, 1.0], [0.0, np.nan], [np.inf]):
        bins = FeatureBins("x", "numeric", np.full(len(edges) + 1, 1 / (len(edges) + 1)),
                           tuple("ab"), np.array(edges), {})
        assert not bins._edges_ordered
        v = np.array([-1.0, 0.0, 1.5, 3.0, np.nan])
        assert bins.bin_numeric(v).tolist() == np.searchsorted(bins.inner_edges, v,
                                                               side="right").tolist()
    ordered = FeatureBins.from_profile("x", {"type": "numeric", "counts": [1, 1, 1],
                                             "bins": [0.0, 1.0, 2.0, 3.0]})
    assert ordered is not None and ordered._edges_ordered
    ints = np.array([0, 1, 2, 5])  # not float64: numpy's search, the same bins
    assert ordered.bin_numeric(ints).tolist() == [0, 1, 2, 2]
    strided = np.array([0.5, 9.0, 1.5, 9.0])[::2]
    assert ordered.bin_numeric(strided).tolist() == [0, 1]


def test_categories_raise_as_dict_get_would() -> None:
    with pytest.raises(TypeError, match="unhashable"):
        profile._bins.categories(["a", ["b"]], {"a": 0}, 1)
    with pytest.raises(TypeError):
        profile._bins.categories(["a"], {"a": "not a bin"}, 1)


def test_feature_bins_give_writable_int64_bins_either_way(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    num = FeatureBins.from_profile("x", {"type": "numeric", "counts": [1, 2, 3],
                                         "bins": [0.0, 1.0, 2.0, 3.0]})
    cat = FeatureBins.from_profile("c", {"type": "categorical",
                                         "frequencies": {"a": 0.5, "b": 0.5}})
    assert num is not None and cat is not None
    x, c = np.array([-1.0, 0.5, 1.0, 2.5, 9.0]), ["b", "a", "zz", "b"]
    compiled = num.bin_numeric(x), cat.bin_categories(c)
    assert profile.category_bins_loop() == "compiled (detectors/_bins.c)"
    monkeypatch.setattr(profile, "_bins", None)
    assert profile.category_bins_loop() == "map(dict.get)"  # what the worker logs
    plain = num.bin_numeric(x), cat.bin_categories(c)
    for got, expected in zip(compiled, plain, strict=True):
        assert got.dtype == expected.dtype == np.int64
        assert got.tolist() == expected.tolist()
        got[0] = 0  # callers may write in place
    assert compiled[0].tolist() == [0, 0, 1, 2, 2] and compiled[1].tolist() == [0, 0, 3, 1]
