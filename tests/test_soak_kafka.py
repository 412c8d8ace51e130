"""A short soak (``bench/soak.py``): two workers of one group under steady real-time load.

The bench runs ten minutes by default and judges memory flat once warm; here a
one-minute run checks the rest of what it judges on the real broker: the rate
held, both workers holding partitions and folding events, the lag drained and
every event counted once in ``ml.stats``; and that its report prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakPlan, render, soak

pytestmark = pytest.mark.kafka


async def test_a_short_soak_holds_its_rate_and_counts_every_event(kafka_bootstrap: str,
                                                                  tmp_path: Path) -> None:
    plan = SoakPlan(minutes=1.0, models=4, rate=10.0, batch=10, window_s=10.0, warmup_s=30.0,
                    tolerance=1.0)  # a minute says nothing about memory trends; 10 min does
    lines: list[str] = []
    report = await soak(kafka_bootstrap, plan, tmp_path, say=lines.append)
    assert report.ok, (report.problems, report.log_tails)
    assert report.events >= 0.98 * plan.total_rate * plan.seconds
    assert sum(report.counted.values()) == report.events
    assert all(f > 0 for f in report.folded) and len(report.workers) == 2
    assert report.drained_after is not None
    render(report, lines.append)
    text = "\n".join(lines)
    assert "rate" in text.lower() and "lag" in text.lower()
