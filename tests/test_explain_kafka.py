"""``sentinelle explain DEDUP_KEY`` against the real broker: the latest trigger of the key,
its evidence, the moved bins drawn, and an HTML page on request."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streams.cli.explain import find_alert, render_html
from tests.conftest import ROOT
from tests.kafka_io import produce

pytestmark = pytest.mark.kafka


def alert(action: str, serving: float) -> dict[str, object]:
    return {"event_action": action, "dedup_key": "training_serving_skew:m:v1:amount",
            "payload": {"summary": f"m v1: skew on 'amount' ({action})", "severity": "warning",
                        "timestamp": "2026-12-02T10:00:00.000Z", "class": "training_serving_skew",
                        "custom_details": {"feature": "amount", "largest_moves": [
                            {"bin": "[10, 20)", "reference": 0.1, "serving": serving}]}}}


async def test_explain_prints_the_latest_trigger_with_its_moved_bins(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.ml.alerts"
    await produce(kafka_bootstrap, topic, [alert("trigger", 0.3), alert("resolve", 0.3),
                                           alert("trigger", 0.45)], key=b"m")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"topics:\n  alerts: {topic}\n")
    page = tmp_path / "a.html"
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "explain", "training_serving_skew:m:v1:amount",
         "--config", str(cfg), "--html", str(page)], capture_output=True, text=True,
        timeout=120, cwd=ROOT, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("trigger training_serving_skew:m:v1:amount (warning)")
    assert "45.0%" in done.stdout and "10.0%" in done.stdout  # the latest trigger's bins
    assert "reference vs serving" in page.read_text(encoding="utf-8").lower()
    missing = subprocess.run(
        [sys.executable, "-m", "streams.cli", "explain", "nope", "--config", str(cfg)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert missing.returncode == 2 and "no alert 'nope'" in missing.stderr


def test_find_alert_prefers_the_latest_trigger() -> None:
    import orjson

    values = [orjson.dumps(a) for a in (alert("trigger", 0.3), alert("resolve", 0.3))]
    found = find_alert(values, "training_serving_skew:m:v1:amount")
    assert found is not None and found["event_action"] == "trigger"
    assert find_alert(values, "other") is None
    assert "<table>" in render_html(found)
