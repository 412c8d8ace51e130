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


many_ids = st.sampled_from([f"e{i}" for i in range(2_000)])
wide = st.lists(st.tuples(many_ids, st.floats(0, 50), st.sampled_from(["v1", "v2"]),
                          st.sampled_from(["stable", "canary"]), prediction), max_size=60)
wide_ops = st.lists(st.one_of(wide.map(lambda b: ("add", b)),
                              st.lists(many_ids, max_size=40).map(lambda b: ("match", b)),
                              st.floats(0, 100).map(lambda w: ("expire", w))), max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=wide_ops, max_size=st.integers(20, 400), segment_size=st.integers(1, 50))
def test_roomy_batches_join_as_one_at_a_time(ops: list[tuple[str, Any]], max_size: int,
                                             segment_size: int) -> None:
    """Ids rarely repeated and room in the buffer: mostly the path that adds a batch's
    new ids a segment at a time (``LabelJoin._append``)."""
    test_batches_join_as_one_at_a_time.hypothesis.inner_test(ops, max_size, segment_size)


def test_a_sampled_batch_keeps_the_ids_under_the_limit() -> None:
    j = LabelJoin(max_size=100, ttl_s=1e9, segment_size=7)
    eids = [f"e{i}" for i in range(1_000)]
    j.add_many(eids, [float(i) for i in range(1_000)], ["v1"] * 1_000, ["stable"] * 1_000,
               [0.5] * 1_000)
    assert 0 < len(j) <= 100 and j.sample_rate < 1
    limit = 1 << (63 - j._halvings)
    assert all((id_hash(e) < limit) == (j.match(e) is not None) for e in eids[-500:])
    j.add_many(eids[:300], [2e3] * 300, ["v1"] * 300, ["stable"] * 300, [0.1] * 300)
    kept = [e for e in eids[:300] if id_hash(e) < 1 << (63 - j._halvings)]
    assert len(j) >= len(kept) and all(j.match(e) == (2e3, "v1", "stable", 0.1) for e in kept)


def test_hashes_at_once_are_the_same() -> None:
    eids = ["", "a", "é", "x" * 300, "e2e-01-7-123"]
    assert id_hashes(eids) == [id_hash(e) for e in eids]
    assert id_hashes([]) == []
