"""BrokerFetch on the real broker: the offsets of a gap, read again (see GapFiller)."""

from __future__ import annotations

import uuid

import pytest
from faust.types import TP

from streams.runtime.kafka import ensure_topics
from streams.runtime.shell import BrokerFetch, Gap, GapFiller
from tests.kafka_io import produce

pytestmark = pytest.mark.kafka


async def test_the_offsets_of_a_gap_are_read_again_from_the_broker(kafka_bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.ml.predictions"
    await ensure_topics(kafka_bootstrap, [topic], 2)
    sent = await produce(kafka_bootstrap, topic, [f"v{i}".encode() for i in range(6)], key=b"m")
    partition = sent[0].partition
    assert [m.offset for m in sent] == list(range(6))
    tp = TP(topic, partition)
    fetch = BrokerFetch(kafka_bootstrap, {})
    try:
        got = await fetch(Gap(0, tp, 2, 3))
        assert [(m.offset, m.value, m.key, m.partition, m.topic) for m in got] == [
            (2, b"v2", b"m", partition, topic), (3, b"v3", b"m", partition, topic)]
        # the same consumer serves the next gap, back in the partition, up to its end
        gaps = GapFiller(fetch)
        filled = await gaps.fill([Gap(7, tp, 0, 0), Gap(9, tp, 5, 5)])
        assert {i: [m.value for m in ms] for i, ms in filled.items()} == {7: [b"v0"], 9: [b"v5"]}
        assert gaps.refetched == 2
    finally:
        await fetch.stop()
