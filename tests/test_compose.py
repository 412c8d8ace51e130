"""docker-compose.yml, checked by reading it (no Docker engine runs here).

Where Docker is present, ``docker compose config`` is run too. Elsewhere the
structure is checked against the code it drives: every service's command
parses as a ``sentinelle`` command line, every ``SENTINELLE_*`` variable is a
real setting with a valid value, published ports answer on the loopback
only, two workers do not collide, and every ``service_healthy`` condition
has a healthcheck to wait for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import click
import pytest
import yaml

from streams.cli import main
from streams.config import ConfigError, Settings, load_settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(compose).items() if s.get("command") == ["worker"]}


def parse_cli(args: list[str]) -> click.Command:
    """Parse ``sentinelle ARGS`` the way click would, without running it: a bad
    command or option raises click's usage error."""
    ctx = main.make_context("sentinelle", list(args))
    command: click.Command = main
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") \
            else [*ctx.protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return command


def test_the_system_runs_on_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = services(compose)["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_every_part_of_the_system_is_there(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    assert {"kafka", "publish-profiles", "simulator", "controller", "bridge-webhook",
            "bridge-pagerduty"} <= names
    assert len(workers(compose)) == 2


def test_every_command_is_a_sentinelle_command_line(compose: dict[str, Any]) -> None:
    checked = 0
    for name, svc in services(compose).items():
        if svc.get("build") != "." or "entrypoint" in svc:
            continue  # not the sentinelle entrypoint (the image's ENTRYPOINT)
        if svc["command"] == ["--help"]:
            continue  # the one-off tools service: its command is given at `run`
        parse_cli(svc["command"])
        checked += 1
    assert checked >= 6
    with pytest.raises(click.UsageError):
        parse_cli(["simulate", "--rate-typo", "3"])  # the check can fail


def test_the_image_runs_the_sentinelle_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["sentinelle"]' in dockerfile
    for package in ("streams", "detectors", "alerting"):
        assert f"COPY {package} " in dockerfile


def test_worker_settings_are_real_and_valid(compose: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in services(compose).items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items() if v is not None}
        if not any(k.startswith("SENTINELLE_") for k in env):
            continue
        for key in [k for k in os.environ if k.startswith("SENTINELLE_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()  # extra="forbid": a misspelt variable fails here
        assert settings.kafka.servers == "kafka:9092", name
        assert settings.worker.web_host == "0.0.0.0"  # noqa: S104 - in the container; see ports
        if name in workers(compose):
            assert settings.worker.web_port == int(env["SENTINELLE_WORKER__WEB_PORT"])
        elif "SENTINELLE_BRIDGES__METRICS_PORT" in env:
            assert settings.bridges.metrics_port == int(env["SENTINELLE_BRIDGES__METRICS_PORT"])
    monkeypatch.setenv("SENTINELLE_WINDOWS__SIZ_S", "5")
    with pytest.raises((ValueError, ConfigError)):
        Settings()


def test_ports_are_published_on_the_loopback_only(compose: dict[str, Any]) -> None:
    published = []
    for name, svc in services(compose).items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
            published.append(str(port).split(":")[1])
    assert len(published) == len(set(published)), "two services publish one host port"
    web_ports = {svc["environment"]["SENTINELLE_WORKER__WEB_PORT"]
                 for svc in workers(compose).values()}
    assert len(web_ports) == 2


def test_each_healthy_condition_has_a_healthcheck(compose: dict[str, Any]) -> None:
    waited = 0
    for name, svc in services(compose).items():
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), name
        for other, cond in depends.items():
            assert other in services(compose), (name, other)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services(compose)[other], (name, other)
                waited += 1
            elif cond["condition"] == "service_completed_successfully":
                assert services(compose)[other].get("restart") == "no", other
    assert waited >= 5
    for svc in workers(compose).values():
        probe = " ".join(svc["healthcheck"]["test"])
        assert "/ready" in probe and "SENTINELLE_WORKER__WEB_PORT" in probe
    sim = services(compose)["simulator"]["depends_on"]
    assert all(sim[w]["condition"] == "service_healthy" for w in workers(compose))
    assert sim["publish-profiles"]["condition"] == "service_completed_successfully"


def test_the_profiles_are_published_before_the_traffic(compose: dict[str, Any]) -> None:
    script = " ".join(services(compose)["publish-profiles"]["command"])
    assert "profile build" in script and "--publish" in script
    from streams.tools.simulate import SCENARIOS, training_rows  # what the script imports
    assert SCENARIOS["demo"].models and callable(training_rows)


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    pd = services(compose)["bridge-pagerduty"]["environment"]
    assert pd["PAGERDUTY_ROUTING_KEY"] is None  # passed through from the shell


def has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not has_compose(), reason="no `docker compose` here")
def test_docker_compose_config_accepts_it() -> None:  # pragma: no cover - needs Docker
    subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], check=True)


def test_prometheus_scrapes_every_worker(compose: dict[str, Any]) -> None:
    prom = services(compose)["prometheus"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in prom["volumes"]}
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] if job["job_name"] == "sentinelle-worker"
               for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{svc['environment']['SENTINELLE_WORKER__WEB_PORT']}"
                       for name, svc in workers(compose).items()}
    assert all(job.get("metrics_path", "/metrics") == "/metrics"
               for job in config["scrape_configs"])


def pages_port(svc: dict[str, Any]) -> int | None:
    """The port a Sentinelle service serves /metrics, /health and /ready on, if any."""
    env, cmd = svc.get("environment") or {}, svc.get("command") or []
    if cmd == ["worker"]:
        return int(env["SENTINELLE_WORKER__WEB_PORT"])
    if cmd[:1] == ["bridge"] and "SENTINELLE_BRIDGES__METRICS_PORT" in env:
        return int(env["SENTINELLE_BRIDGES__METRICS_PORT"])
    if cmd[:1] == ["controller"] and "--web-port" in cmd:
        return int(cmd[cmd.index("--web-port") + 1])
    return None


def test_every_service_with_pages_is_probed_and_scraped(compose: dict[str, Any]) -> None:
    """The controller and the bridges serve the worker's three pages too: their
    healthcheck asks /ready on that port, Prometheus scrapes it, and the pages answer
    on all interfaces inside the network (worker.web_host), where Prometheus is."""
    prom = services(compose)["prometheus"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in prom["volumes"]}
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    scraped = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    probed = {name: port for name, svc in services(compose).items()
              if (port := pages_port(svc)) is not None}
    assert {"controller", "bridge-webhook", "bridge-pagerduty"} <= set(probed)
    for name, port in probed.items():
        svc = services(compose)[name]
        probe = " ".join(svc["healthcheck"]["test"])
        if svc["command"] != ["worker"]:
            assert f"127.0.0.1:{port}/ready" in probe, name
        assert svc["environment"]["SENTINELLE_WORKER__WEB_HOST"] == "0.0.0.0", name  # noqa: S104
        assert f"{name}:{port}" in scraped, name
        assert "KAFKA_BOOTSTRAP_SERVERS" in svc["environment"], name
    assert len(set(probed.values())) == len(probed)  # no two share a port


def test_grafana_is_provisioned_from_the_repository(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml")
                              .read_text(encoding="utf-8"))["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "sentinelle.yml")
                                .read_text(encoding="utf-8"))["providers"]
    dashboards = mounts[provider["options"]["path"]]
    import json
    dash = json.loads((dashboards / "sentinelle.json").read_text(encoding="utf-8"))
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    assert uids == {source["uid"]}  # every panel asks the provisioned datasource
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] is None  # from the shell
    assert services(compose)["grafana"]["depends_on"]["prometheus"]["condition"] == \
        "service_healthy"
