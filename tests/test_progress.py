"""Long work says how far it is: ``profile build`` per column, ``quota estimate`` per
record read (the commands draw a bar from these calls on a terminal)."""

from __future__ import annotations

import uuid

import polars as pl
import pytest

from detectors.profile import build_profile
from streams.runtime.follow import read_all
from streams.runtime.kafka import ensure_topics
from tests.kafka_io import produce


def test_build_profile_reports_each_column_then_the_end() -> None:
    lf = pl.LazyFrame({"ts": [1.0, 2.0, 3.0], "amount": [1.0, 2.0, 3.0],
                       "country": ["F", "G", "F"], "prediction": [0.1, 0.9, 0.4]})
    calls: list[tuple[str, int, int]] = []
    profile = build_profile(lf, "m", "v1", bins=2, created_at=0,
                            progress=lambda c, d, t: calls.append((c, d, t)))
    # ts is an event field, not profiled; every other column is one pass
    assert calls == [("amount", 0, 3), ("country", 1, 3), ("prediction", 2, 3), ("", 3, 3)]
    assert profile == build_profile(lf, "m", "v1", bins=2, created_at=0)  # same result


@pytest.mark.kafka
async def test_read_all_reports_records_read_against_the_topic_size(
        kafka_bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.progress"
    await ensure_topics(kafka_bootstrap, [topic], 2)
    await produce(kafka_bootstrap, topic, [{"i": i} for i in range(50)], key=b"a")
    await produce(kafka_bootstrap, topic, [{"i": i} for i in range(30)], key=b"b")
    seen: list[tuple[int, int]] = []
    got = await read_all(kafka_bootstrap, topic, progress=lambda d, t: seen.append((d, t)))
    assert len(got) == 80
    assert {t for _, t in seen} == {80} and seen[-1] == (80, 80)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # only forward
