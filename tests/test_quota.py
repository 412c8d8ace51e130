"""``sentinelle quota estimate``: reading the topics, the chart, and the report.

The numbers themselves are tested in tests/test_quota_usage.py. No Kafka: the
report's test fakes the topics.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.cli import quota as qe
from streams.cli.quota import plot_usage
from streams.cli.quota_topics import Decoded, Message, decode_values
from streams.cli.quota_usage import usage_series
from streams.config import Settings
from tests.quota_records import chart_records, keyed, messages, window

# -- decoding -----------------------------------------------------------------------------


def test_decode_objects_batches_and_count_the_rest() -> None:
    values = [b'{"a": 1}', b'[{"b": 2}, {"c": 3}, 4]', b"not json", b'"a string"', None,
              b"\xff\xfe"]
    assert decode_values(values) == Decoded([{"a": 1}, {"b": 2}, {"c": 3}], 4)


# -- chart --------------------------------------------------------------------------------


def test_usage_series_per_day_cumulative_against_the_limit() -> None:
    series = usage_series(messages(chart_records()), "team-a", "gpu_hours")
    assert series["period"].dt.strftime("%Y-%m-%d").to_list() == [
        "2026-11-27", "2026-11-28", "2026-11-29"]
    assert series["used"].to_list() == [30.0, 0.0, 50.0]
    assert series["cumulative"].to_list() == [30.0, 30.0, 80.0]
    assert series["reported_used"].to_list() == [40.0, None, 95.0]
    assert series["limit"].to_list() == [200.0, 200.0, 200.0]  # carried over the quiet day
    hourly = usage_series(messages(chart_records()), "team-a", "gpu_hours", every="1h")
    assert hourly.height == 2 * 24 + 1 and hourly["cumulative"][-1] == 80.0
    assert usage_series(messages(chart_records()), "nobody", "gpu_hours").is_empty()


def test_the_terminal_chart_shows_the_limit() -> None:
    series = usage_series(messages(chart_records()), "team-a", "gpu_hours")
    text = plot_usage(series, title="pool team-a: gpu_hours")
    lines = text.splitlines()
    assert len(lines) > 15 and "pool team-a: gpu_hours" in text
    assert "limit 200" in lines[-1] and "\x1b[" not in text  # no colour codes
    assert "2026-11-27" in text
    assert any(line.lstrip().startswith("220") for line in lines)  # the axis reaches the limit
    assert "limit 5" in plot_usage(series, limit=5.0)


def test_the_chart_is_written_to_a_text_or_html_file(tmp_path: Path) -> None:
    series = usage_series(messages(chart_records()), "team-a", "gpu_hours")
    for name in ("usage.txt", "usage.html"):
        out = tmp_path / name
        assert plot_usage(series, path=str(out)) == f"chart saved to {out}"
        assert out.stat().st_size > 0
    with pytest.raises(ValueError, match=r"\.png"):
        plot_usage(series, path=str(tmp_path / "usage.jpg"))


def test_a_png_without_matplotlib_falls_back_to_the_terminal_chart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it raises ImportError
    out = tmp_path / "usage.png"
    text = plot_usage(usage_series(messages(chart_records()), "team-a", "gpu_hours"), path=str(out))
    assert "matplotlib" in text and "not installed" in text and "limit 200" in text
    assert not out.exists()


# -- the report, with the topics faked --------------------------------------------------------


async def test_estimate_reports_both_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    topics = {settings.topics.pipeline: [*keyed(chart_records(), "pipeline"),
                                         (b"fraud-train", b"not json"),
                                         (b"fraud-train", b"[1]")],  # a batch of a number
              settings.topics.stats: keyed([window("fraud", 0, 6000), {"model": 1}], "model")}

    async def fake_read(servers: str, topic: str, options: object = None,
                        progress: Callable[[int, int], None] | None = None
                        ) -> list[Message]:
        assert progress is not None
        progress(len(topics[topic]), len(topics[topic]))
        return topics[topic]

    monkeypatch.setattr(qe, "read_topic", fake_read)
    text = await qe.estimate(settings, capacity_qps=40, days=None, plot="-")
    assert "4 records (2 not JSON objects: skipped)" in text
    assert "2 records (1 not in the contract's shape: skipped)" in text
    assert "fraud-train" in text and "95 / 200 (48%)" in text
    serving = [line.split() for line in text.splitlines() if line.startswith("  fraud ")]
    assert serving == [["fraud", "1", "60", "s", "100", "100", "100", "2026-11-27", "00:00:00",
                        "4"]]  # 100 * 1.3 / 40 = 3.25
    assert "ceil(peak qps x 1.3 / 40)" in text
    # One chart per pool and resource with a limit.
    assert text.count("pool team-a: gpu_hours") == 1 and text.count("pool team-b: gpu_hours") == 1
