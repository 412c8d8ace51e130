"""The command line: configuration errors stop start-up with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.cli import format_record


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_bad_config_file_stops_the_worker_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("windows:\n  size_s: -5\nlatency:\n  p99_treshold_ms: 300\n")
    result = run_cli("worker", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1")
    assert result.returncode == 2
    assert "field 'windows.size_s': Input should be greater than 0" in result.stderr
    assert "field 'latency.p99_treshold_ms': unknown field" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_yaml_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("windows: [unclosed\n")
    result = run_cli("simulate", "--config", str(cfg))
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr


def test_alert_lines_are_readable() -> None:
    line = format_record("alerts", {"event_action": "trigger", "dedup_key": "outage:m",
                                    "payload": {"timestamp": "T", "severity": "critical",
                                                "summary": "m: no predictions"}})
    assert "trigger" in line and "outage:m" in line and "m: no predictions" in line
