"""``kafka.security`` without a broker: the settings and their checks, the client options
every Kafka client gets, Faust's credentials, the CLI's error on a refused connection,
that every aiokafka client in the code takes the options, and the approvers' allow-list.

(A SASL-requiring broker: tests/test_security_kafka.py.)
"""

from __future__ import annotations

import ast
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner

from streams.config import ConfigError, KafkaSecuritySettings, Settings, load_settings
from streams.runtime.kafka import client_options, faust_options, ssl_context

ROOT = Path(__file__).resolve().parents[1]
WORD = "s3cr3t-Passw0rd"


def write_config(tmp_path: Path, security: dict[str, Any], **more: Any) -> Path:
    path = tmp_path / "sentinelle.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"security": security}, **more}))
    return path


def config_error(tmp_path: Path, security: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, security))
    return str(err.value)


SASL = {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "username": "worker",
        "password_env": "SENTINELLE_TEST_KAFKA_PASSWORD"}


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SENTINELLE_TEST_KAFKA_PASSWORD", WORD)
    return WORD


# -- the settings -------------------------------------------------------------------------------


def test_plaintext_is_the_default_and_gives_no_options() -> None:
    settings = Settings()
    assert settings.kafka.security.protocol == "PLAINTEXT"
    assert client_options(settings) == {} and faust_options(settings) == {}


@pytest.mark.parametrize(("security", "field", "says"), [
    ({"protocol": "SASL_SSL"}, "sasl_mechanism", "required with protocol SASL_SSL"),
    ({**SASL, "username": None}, "username", "required with protocol SASL_PLAINTEXT"),
    ({**SASL, "password_env": None}, "password_env, password_file", "exactly one is required"),
    ({**SASL, "password_file": "/etc/hostname"}, "password_env, password_file",
     "exactly one is required"),
    ({**SASL, "password_env": "SENTINELLE_TEST_NOT_SET"}, "password_env",
     "SENTINELLE_TEST_NOT_SET is not set"),
    ({**SASL, "password_env": None, "password_file": "/nonexistent/pw"}, "password_file",
     "cannot read '/nonexistent/pw'"),
    ({"username": "worker"}, "username", "only used with protocol SASL_PLAINTEXT or SASL_SSL"),
    ({"protocol": "SSL", "password_env": "X"}, "password_env", "only used with protocol SASL"),
    ({"ssl_cafile": "/etc/hostname"}, "ssl_cafile", "only used with protocol SSL or SASL_SSL"),
    ({"protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile", "cannot read"),
    ({"protocol": "SSL", "ssl_keyfile": "/etc/hostname"}, "ssl_keyfile", "needs ssl_certfile"),
    ({"protocol": "SASL"}, "kafka.security.protocol", "Input should be"),
    ({**SASL, "sasl_mechanism": "GSSAPI"}, "kafka.security.sasl_mechanism", "Input should be"),
])
def test_a_bad_security_section_names_the_field(tmp_path: Path, password_env: str,
                                                security: dict[str, Any], field: str,
                                                says: str) -> None:
    message = config_error(tmp_path, security)
    assert "kafka.security" in message and f"{field}" in message and says in message, message
    assert WORD not in message


def test_a_password_is_never_a_setting(tmp_path: Path) -> None:
    message = config_error(tmp_path, {**SASL, "password": WORD})
    assert "field 'kafka.security.password': unknown field" in message
    assert WORD not in message  # not echoed back either


def test_the_password_comes_from_the_environment_and_is_never_shown(
        tmp_path: Path, password_env: str) -> None:
    settings = load_settings(write_config(tmp_path, SASL))
    assert settings.kafka.security.password() == WORD
    for shown in (repr(settings), str(settings), settings.model_dump_json(),
                  yaml.safe_dump(settings.model_dump(mode="json"))):
        assert WORD not in shown
    options = client_options(settings)
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "worker", "sasl_plain_password": WORD}
    creds = faust_options(settings)["broker_credentials"]
    assert WORD not in repr(creds)


def test_the_password_file_is_its_first_line_read_at_each_client(tmp_path: Path) -> None:
    pw = tmp_path / "kafka-password"
    pw.write_text(f"{WORD}\nignored\n")
    sec = KafkaSecuritySettings(protocol="SASL_SSL", sasl_mechanism="PLAIN", username="bridge",
                                password_file=pw)
    assert client_options(sec)["sasl_plain_password"] == WORD
    pw.write_text("rotated\n")  # a rotated password: the next client has it
    assert client_options(sec)["sasl_plain_password"] == "rotated"  # noqa: S105
    pw.write_text("")
    with pytest.raises(ValueError, match="password_file: .* is empty"):
        client_options(sec)


def test_environment_variables_set_the_section(monkeypatch: pytest.MonkeyPatch,
                                               password_env: str) -> None:
    """The demo has no --config: ``SENTINELLE_KAFKA__SECURITY__*`` reach it (and any command)."""
    for name, value in {"PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "PLAIN",
                        "USERNAME": "ops",
                        "PASSWORD_ENV": "SENTINELLE_TEST_KAFKA_PASSWORD"}.items():
        monkeypatch.setenv(f"SENTINELLE_KAFKA__SECURITY__{name}", value)
    sec = load_settings().kafka.security
    assert (sec.protocol, sec.sasl_mechanism, sec.username) == ("SASL_PLAINTEXT", "PLAIN", "ops")
    assert client_options(sec)["sasl_plain_password"] == WORD


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM), made by the openssl command."""
    assert shutil.which("openssl"), "the TLS tests need the openssl command (Debian: openssl)"
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_options_carry_a_context_with_the_ca_and_the_client_certificate(
        certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    sec = KafkaSecuritySettings(protocol="SSL", ssl_cafile=cert, ssl_certfile=cert,
                                ssl_keyfile=key, ssl_check_hostname=False)
    options = client_options(sec)
    assert set(options) == {"security_protocol", "ssl_context"}
    ctx = options["ssl_context"]
    assert options["security_protocol"] == "SSL" and isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is False
    assert any(c.get("subject") == ((("commonName", "localhost"),),)
               for c in ctx.get_ca_certs())  # our CA, loaded
    faust = faust_options(sec)
    assert faust["broker_credentials"].context is faust["ssl_context"]


def test_sasl_over_tls_gives_both(certificate: tuple[Path, Path], password_env: str) -> None:
    cert, _ = certificate
    sec = KafkaSecuritySettings(**{**SASL, "protocol": "SASL_SSL", "ssl_cafile": cert})
    options = client_options(sec)
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname is True  # the default
    assert options["sasl_plain_password"] == WORD
    creds = faust_options(sec)["broker_credentials"]
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.ssl_context is not None


def test_tls_without_a_ca_file_trusts_the_system_cas() -> None:
    ctx = ssl_context(KafkaSecuritySettings(protocol="SSL"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# -- Faust --------------------------------------------------------------------------------------


def test_the_faust_app_gets_the_credentials(password_env: str) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.runtime.app import create_app

    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:1",  # type: ignore[arg-type]
                               "security": SASL})
    app = create_app(settings).app
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_plain_username": "worker", "sasl_plain_password": WORD,
                    "ssl_context": None}


# -- every client takes the options -------------------------------------------------------------


CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "App"}


def test_every_kafka_client_in_the_code_is_given_the_security_options() -> None:
    """Each aiokafka client (and the Faust app) is built with ``**options`` of some kind:
    a client added without them would connect without credentials."""
    missing = []
    for folder in ("streams", "alerting"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = (node.func.attr if isinstance(node.func, ast.Attribute)
                        else getattr(node.func, "id", ""))
                if name == "App" and not (isinstance(node.func, ast.Attribute)
                                          and getattr(node.func.value, "id", "") == "faust"):
                    continue
                if name in CLIENTS and not any(k.arg is None for k in node.keywords):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not missing, "built without the security options: " + ", ".join(missing)


# -- the CLI on a refused connection ------------------------------------------------------------


def test_a_refused_kafka_client_ends_the_command_with_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import KafkaConnectionError

    from streams.cli import alerts, main

    async def refused(settings: Settings) -> list[dict[str, Any]]:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

    monkeypatch.setattr(alerts, "firing_alerts", refused)
    result = CliRunner().invoke(main, ["alerts", "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "sentinelle: Kafka: KafkaConnectionError: Unable to bootstrap" in result.output
    assert "kafka.security" in result.output and "Traceback" not in result.output


def test_other_errors_are_not_taken_for_kafka_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.cli import alerts, main

    async def broken(settings: Settings) -> list[dict[str, Any]]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(alerts, "firing_alerts", broken)
    result = CliRunner().invoke(main, ["alerts"])
    assert isinstance(result.exception, RuntimeError)


# -- the approvers' allow-list ------------------------------------------------------------------


def test_approvers_are_anyone_by_default_and_a_list_when_set() -> None:
    assert Settings().canary.approvers == ()
    assert Settings(canary={"approvers": ["ana", "bo"]}  # type: ignore[arg-type]
                    ).canary.approvers == ("ana", "bo")


def test_an_approval_from_someone_not_allowed_is_dead_lettered_and_does_nothing() -> None:
    from streams.core.predictions import InMessage, PredictionProcessor
    from tests.test_predictions_canary import PREDICTIONS, SETTINGS, Traffic, commands

    settings = SETTINGS.model_copy(update={"canary": SETTINGS.canary.model_copy(
        update={"approvers": ("ana",)})})
    p = PredictionProcessor(settings, PREDICTIONS)
    t = Traffic(seed=2)
    p.process([t.deployment("started", 5)] + t.windows(4, percent=5), now=0.0)
    [wait] = commands(p.process([t.deployment("step", 25)] + t.windows(5, percent=25), now=1.0))
    assert wait["requires_approval"] is True
    eve = t.message("ml.deploy.approvals", {"model": "m", "version": "v2", "action": "promote",
                                            "approved_by": "eve", "ts": 1_795_000_000.0})
    box = p.process([eve], now=2.0)
    assert commands(box) == []  # nothing happens...
    [dead] = box.deadletters    # ...and it says why
    assert dead["reason"] == "bad_value: 'approved_by' 'eve' is not an allowed approver"
    assert dead["topic"] == "ml.deploy.approvals" and orjson.loads(dead["raw"])["approved_by"] \
        == "eve"
    box = p.process([t.approval()], now=3.0)  # ana is on the list
    [approved] = commands(box)
    assert approved["command_id"] == "promote:m:v2:50" and "approved by ana" in approved["reason"]
    assert box.deadletters == []
    assert isinstance(eve, InMessage)
