"""The compiled category bins (detectors/_bins.c) are the plain ones, value for value.

Skew, drift, canary and label-drift checks count values per bin of a profile; a
worker with the compiled loop and one without must count the same: repeated
string objects and equal strings that are other objects, categories absent from
the profile, and the same errors for what cannot be looked up.
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
