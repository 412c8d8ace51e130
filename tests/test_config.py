"""Configuration: defaults, file, environment, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import ConfigError, load_settings


def test_no_file_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    s = load_settings()
    assert s.windows.size_s == 60 and s.topics.alerts == "ml.alerts"
    assert s.kafka.bootstrap_servers is None
    assert [r.name for r in s.burn_rate.rules] == ["page", "ticket"]


def test_environment_beats_file_and_flag_beats_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("windows:\n  size_s: 30\nkafka:\n  bootstrap_servers: file:9092\n")
    assert load_settings(cfg).windows.size_s == 30
    monkeypatch.setenv("SENTINELLE_WINDOWS__SIZE_S", "15")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:9092")
    s = load_settings(cfg)
    assert s.windows.size_s == 15 and s.kafka.bootstrap_servers == "env:9092"
    assert load_settings(cfg, "flag:9092").kafka.bootstrap_servers == "flag:9092"


def test_brokers_from_the_environment_or_the_flag_are_checked_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "PLAINTEXT://env:9092")
    with pytest.raises(ConfigError, match="^KAFKA_BOOTSTRAP_SERVERS: field "
                                          "'kafka.bootstrap_servers': 'PLAINTEXT://env:9092'"):
        load_settings()
    with pytest.raises(ConfigError, match="^--bootstrap-servers: .* 'flag/x' is not host:port"):
        load_settings(None, "ok:9092,flag/x")
    good = "kafka-1.example.com:9092, 10.0.0.2:9093,[::1]:9094,compose_kafka"
    assert load_settings(None, good).kafka.bootstrap_servers == good


@pytest.mark.parametrize("text, message", [
    ("windows:\n  size_s: 0\n", "field 'windows.size_s': Input should be greater than 0"),
    ("windowz: {}\n", "field 'windowz': unknown field"),
    ("outage:\n  floor_s: soon\n", "field 'outage.floor_s': Input should be a valid number"),
    ("burn_rate:\n  rules:\n    - {name: x, long_s: 10, short_s: 60, factor: 2}\n",
     "field 'burn_rate.rules.0': Value error, short_s must not exceed long_s"),
    ("kafka:\n  bootstrap_servers: 'kafka://k:9092'\n",
     "field 'kafka.bootstrap_servers': Value error, 'kafka://k:9092' is not host:port"),
    ("kafka:\n  bootstrap_servers: 'k:9092?fetch_max_wait_ms=1'\n",
     "field 'kafka.bootstrap_servers': Value error, 'k:9092?fetch_max_wait_ms=1' is not"),
    ("kafka:\n  bootstrap_servers: 'a:9092,b:99999'\n",
     "field 'kafka.bootstrap_servers': Value error, 'b:99999': the port must be 1-65535"),
    ("kafka:\n  bootstrap_servers: ' , '\n",
     "field 'kafka.bootstrap_servers': Value error, no broker"),
    ("- a list\n", "the top level must be a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_files_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        load_settings(cfg)
    assert message in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings(tmp_path / "nope.yaml")
