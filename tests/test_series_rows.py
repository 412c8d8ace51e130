"""Each (version, cohort) series' rows of a micro-batch, found by hashing both strings
(or, for a few rows, by a dict of the pairs): the same groups as Polars' group-by, in
order of appearance, hash collisions or not."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import series
from streams.core.series import series_pairs, series_rows

pair = st.tuples(st.sampled_from(["v1", "v2", "v10", "", "é", "v1\x00"]),
                 st.sampled_from(["stable", "canary", "shadow"]))


def _expected(frame: pl.DataFrame) -> list[tuple[tuple[str, str], list[int]]]:
    keyed = frame.with_row_index("row")
    return [((str(v), str(c)), part["row"].to_list())
            for (v, c), part in keyed.group_by(["version", "cohort"], maintain_order=True)]


def _frame(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame({"version": [v for v, _ in rows], "cohort": [c for _, c in rows]},
                        schema={"version": pl.String, "cohort": pl.String})


@settings(max_examples=200, deadline=None)
@given(st.lists(pair, min_size=1, max_size=60))
def test_the_groups_are_polars_groups_in_order_of_appearance(rows: list[tuple[str, str]]
                                                             ) -> None:
    frame = _frame(rows)
    got = [(p, r.tolist()) for p, r in series_rows(frame)]
    assert got == _expected(frame)
    assert series_pairs(frame) == [p for p, _ in got]
    few, series._FEW_ROWS = series._FEW_ROWS, 0  # the same rows by hashing
    try:
        assert [(p, r.tolist()) for p, r in series_rows(frame)] == got
    finally:
        series._FEW_ROWS = few


def test_many_series_are_grouped_by_one_sort() -> None:
    rng = np.random.default_rng(3)
    rows = [(f"v{i}", "canary" if i % 2 else "stable") for i in rng.integers(0, 20, 500)]
    frame = _frame(rows)
    assert len({*rows}) > 8  # past the comparisons' count
    assert [(p, r.tolist()) for p, r in series_rows(frame)] == _expected(frame)


def test_a_hash_collision_falls_back_to_polars(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _frame([("v1", "stable"), ("v2", "canary"), ("v1", "stable"), ("v3", "stable")])
    real = pl.Series.hash
    monkeypatch.setattr(pl.Series, "hash", lambda self, seed=0: real(self, seed) * 0)
    monkeypatch.setattr(series, "_FEW_ROWS", 0)  # past the dict's few rows
    assert [(p, r.tolist()) for p, r in series_rows(frame)] == _expected(frame)
    assert series_pairs(frame) == [("v1", "stable"), ("v2", "canary"), ("v3", "stable")]
