"""The command line: configuration errors stop start-up with a clear message.

The first tests run ``python -m streams.cli`` as the kafka tests and the demo do;
the rest call the click group in process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import orjson
import pytest
import yaml
from click.testing import CliRunner

from streams.cli import main
from streams.cli.tail import format_record
from streams.tools.broker import free_port
from tests.conftest import ROOT


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


# Every command that reads the settings, with what it needs to get that far.
SETTINGS_COMMANDS = [
    ["worker"], ["simulate"], ["tail"], ["alerts"], ["controller", "--state", "s.json"],
    ["silence", "add", "--match", "class=a"], ["silence", "list"], ["silence", "expire", "x"],
    ["bridge", "webhook", "--url", "http://x"], ["bridge", "alertmanager", "--url", "http://x"],
    ["verdict", "wait", "m", "v"], ["config", "show"], ["rollout", "fail", "m"],
    ["rollout", "pause", "m"], ["rollout", "promote", "m"],
    ["rollout", "approve", "m", "--by", "a"],
    ["profile", "build", "x.csv", "--model", "m", "--version", "v"],
    ["quota", "estimate", "--capacity-qps", "1"],
]


@pytest.mark.parametrize("args", SETTINGS_COMMANDS, ids=" ".join)
def test_every_command_stops_on_a_bad_configuration_the_same_way(
        args: list[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("windows:\n  size_s: -5\n")
    result = CliRunner().invoke(main, [*args, "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("sentinelle: bad configuration\n")
    assert "field 'windows.size_s'" in result.stderr


def test_the_command_tree() -> None:
    assert sorted(main.commands) == [
        "alerts", "bridge", "broker", "config", "controller", "demo", "explain", "profile",
        "quota",
        "rollout", "schema", "silence", "simulate", "tail", "verdict", "worker"]
    groups = {name: c for name, c in main.commands.items() if isinstance(c, click.Group)}
    assert {name: sorted(g.commands) for name, g in groups.items()} == {
        "bridge": ["alertmanager", "pagerduty", "webhook"], "profile": ["build"],
        "quota": ["estimate"], "rollout": ["approve", "fail", "pause", "promote"],
        "silence": ["add", "expire", "list"], "verdict": ["wait"],
        "config": ["check", "schema", "show"]}
    leaves = [c for name, c in main.commands.items() if name not in groups]
    leaves += [c for g in groups.values() for c in g.commands.values()]
    for command in leaves:
        options = [o for p in command.params for o in p.opts]
        if command.name not in ("broker", "demo", "check", "schema"):
            assert "--config" in options and "--bootstrap-servers" in options, command.name


def test_pagerduty_wants_its_routing_keys_before_it_connects(tmp_path: Path) -> None:
    # the keys are named in the configuration (bridges.pagerduty), so it is read first
    result = CliRunner().invoke(main, ["bridge", "pagerduty"], env={"PAGERDUTY_ROUTING_KEY": ""})
    assert result.exit_code == 2
    assert result.stderr == ("sentinelle: default routing key: set PAGERDUTY_ROUTING_KEY to the "
                             "PagerDuty routing key\n")
    cfg = tmp_path / "pd.yaml"
    cfg.write_text("bridges:\n  pagerduty:\n    routes:\n      - match: {class: outage}\n"
                   f"        routing_key_file: {tmp_path / 'missing'}\n")
    result = CliRunner().invoke(main, ["bridge", "pagerduty", "--config", str(cfg)],
                                env={"PAGERDUTY_ROUTING_KEY": "K-123"})
    assert result.exit_code == 2 and "first line of" in result.stderr
    assert "K-123" not in result.output + result.stderr
    result = CliRunner().invoke(main, ["bridge", "pagerduty", "--routing-key-env", "NOPE"],
                                env={"NOPE": ""})
    assert result.stderr == "sentinelle: set NOPE to the PagerDuty routing key\n"


def test_a_wrong_input_ends_with_the_same_exit() -> None:
    result = CliRunner().invoke(main, ["silence", "add", "--match", "bogus"],
                                env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.exit_code == 2
    assert result.stderr.startswith("sentinelle: bad matcher 'bogus'")


def test_config_check_show_and_schema(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("canary:\n  severity: error\n")
    bad.write_text("canary:\n  severity: critcal\n")
    result = CliRunner().invoke(main, ["config", "check", str(good)])
    assert result.exit_code == 0 and result.output == f"{good}: ok\n"
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 2 and "field 'canary.severity'" in result.stderr
    assert "'critcal'" in result.stderr
    result = CliRunner().invoke(main, ["config", "show", "--config", str(good)],
                                env={"SENTINELLE_WINDOWS__SIZE_S": "30"})
    shown = yaml.safe_load(result.output)
    assert shown["canary"]["severity"] == "error" and shown["windows"]["size_s"] == 30
    assert shown["bridges"]["pagerduty"]["routing_key_env"] == "PAGERDUTY_ROUTING_KEY"
    schema = orjson.loads(CliRunner().invoke(main, ["config", "schema"]).output)
    assert "canary" in schema["properties"] and "$defs" in schema


def test_an_unreachable_broker_is_one_clear_error_and_no_traceback() -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "streams.cli", "tail", "alerts",
                           "--bootstrap-servers", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith("sentinelle: Kafka: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one line, the hint on it
    for noise in ("Traceback", "Unclosed", "Unable connect"):
        assert noise not in done.stderr, done.stderr


def test_help_names_the_environment_variables() -> None:
    out = CliRunner().invoke(main, ["tail", "--help"], terminal_width=200).output
    assert "env var: KAFKA_BOOTSTRAP_SERVERS" in out


def test_the_worker_keeps_aiokafka_s_log_and_one_shot_commands_hush_it() -> None:
    import logging

    log = logging.getLogger("aiokafka")
    before = log.level
    try:
        log.setLevel(logging.INFO)
        CliRunner().invoke(main, ["worker", "--help"])
        assert log.level == logging.INFO  # its group assignments are read from it (soak)
        CliRunner().invoke(main, ["tail", "--help"])
        assert log.level == logging.CRITICAL
    finally:
        log.setLevel(before)
