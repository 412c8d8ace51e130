"""The label join fed a micro-batch at once (``add_many``, ``match_many``) ends in the
same state, and answers the same, as fed one prediction and one label at a time."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.performance import LabelJoin, id_hash, id_hashes

ids = st.sampled_from([f"e{i}" for i in range(40)])
prediction = st.sampled_from([0.1, 0.9, 1, "fraud", "x" * 200, True])
add = st.lists(st.tuples(ids, st.floats(0, 50), st.sampled_from(["v1", "v2"]),
                         st.sampled_from(["stable", "canary"]), prediction), max_size=30)
ops = st.lists(st.one_of(add.map(lambda b: ("add", b)),
                         st.lists(ids, max_size=20).map(lambda b: ("match", b)),
                         st.floats(0, 100).map(lambda w: ("expire", w))), max_size=12)


def _state(j: LabelJoin) -> Any:
    meta, segments = j.checkpoint()
    return meta, segments, j.stats(), dict(j._where), {k: dict(v) for k, v in j._segments.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, max_size=st.integers(1, 12), segment_size=st.integers(1, 5))
def test_batches_join_as_one_at_a_time(ops: list[tuple[str, Any]], max_size: int,
                                       segment_size: int) -> None:
    one = LabelJoin(max_size, ttl_s=20, segment_size=segment_size)
    many = LabelJoin(max_size, ttl_s=20, segment_size=segment_size)
    for op, arg in ops:
        if op == "add":
            for eid, t, v, c, p in arg:
                one.add(eid, t, v, c, p)
            many.add_many(*([list(x) for x in zip(*arg, strict=True)] if arg else [[]] * 5))
        elif op == "match":
            assert [one.match(e) for e in arg] == many.match_many(arg)
        else:
            assert one.expire(arg) == many.expire(arg)
        assert _state(one) == _state(many)


def test_hashes_at_once_are_the_same() -> None:
    eids = ["", "a", "é", "x" * 300, "e2e-01-7-123"]
    assert id_hashes(eids) == [id_hash(e) for e in eids]
    assert id_hashes([]) == []
