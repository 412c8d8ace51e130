"""Configuration: one YAML file, validated on load, every setting defaulted.

Precedence, highest first:

1. environment variables: ``SENTINELLE_<SECTION>__<FIELD>`` (for example
   ``SENTINELLE_WINDOWS__SIZE_S=30``), and ``KAFKA_BOOTSTRAP_SERVERS`` for the
   broker;
2. the YAML file given with ``--config``;
3. the defaults below.

A bad file stops start-up with a :class:`ConfigError` whose message names the
field and what is wrong with it. Unknown fields are errors too: a typo in a
threshold must not silently fall back to the default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerting.manager import DEFAULT_CLASS_RULES
from detectors.contract import DEFAULT_BOOTSTRAP, AlertClass, Severity

__all__ = ["Settings", "ConfigError", "load_settings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecuritySettings(_Section):
    """How every Kafka client of Sentinelle authenticates and encrypts.

    The password is never in the file: ``password_env`` names the environment
    variable that holds it, or ``password_file`` a file whose first line it is.
    It is read when a client is built (``streams.runtime.kafka.client_options``),
    never logged or printed. Checked on load: a SASL protocol needs a mechanism,
    a username and one password source (set, and not empty); SASL fields with
    another protocol, or TLS files without TLS, are errors too (they would be
    silently ignored).
    """

    protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over "
                                 "TLS)")
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with a SASL "
                          "protocol")
    username: str | None = Field(None, min_length=1,
                                 description="the SASL principal; required with a SASL protocol")
    password_env: str | None = Field(
        None, min_length=1, description="name of the environment variable holding the SASL "
                                        "password (never the password itself)")
    password_file: Path | None = Field(
        None, description="file whose first line is the SASL password (instead of "
                          "password_env)")
    ssl_cafile: Path | None = Field(
        None, description="CA bundle (PEM) the brokers' certificates are checked against; "
                          "unset: the system's CAs")
    ssl_certfile: Path | None = Field(None, description="client certificate (PEM), for mutual "
                                                        "TLS")
    ssl_keyfile: Path | None = Field(None, description="the client certificate's private key "
                                                       "(PEM), unencrypted")
    ssl_check_hostname: bool = Field(True, description="check that a broker's certificate "
                                                       "names its host")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def password(self) -> str | None:
        """The SASL password, from ``password_env`` or ``password_file`` (None without SASL).

        Read anew at each call, so a rotated password file is picked up by the
        next client; a ValueError names the field when it cannot be had.
        """
        if self.password_env is not None:
            value = os.environ.get(self.password_env, "")
            if not value:
                raise ValueError(f"password_env: the environment variable {self.password_env} "
                                 f"is not set (or empty)")
            return value
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(f"password_file: cannot read {str(self.password_file)!r}: "
                                 f"{why}") from None
            first = text.splitlines()[0] if text else ""
            if not first:
                raise ValueError(f"password_file: {str(self.password_file)!r} is empty")
            return first
        return None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecuritySettings:
        sasl_fields = ("sasl_mechanism", "username", "password_env", "password_file")
        if self.sasl:
            for name in ("sasl_mechanism", "username"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: required with protocol {self.protocol}")
            if (self.password_env is None) == (self.password_file is None):
                raise ValueError(f"password_env, password_file: exactly one is required with "
                                 f"protocol {self.protocol}")
            self.password()  # there, and not empty (it is read again by each client)
        else:
            for name in sasl_fields:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only used with protocol SASL_PLAINTEXT or "
                                     f"SASL_SSL (protocol is {self.protocol})")
        tls_files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        for name in tls_files:
            path = getattr(self, name)
            if path is not None:
                if not self.tls:
                    raise ValueError(f"{name}: only used with protocol SSL or SASL_SSL "
                                     f"(protocol is {self.protocol})")
                _readable(path, name)
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile: needs ssl_certfile")
        return self


def _readable(path: Path, name: str) -> None:
    """A ValueError naming the field when ``path`` is not a readable file."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {str(path)!r}: {exc.strerror}") from None


def check_servers(servers: str) -> str:
    """``host[:port][,host[:port]...]`` as Kafka clients take it, or ValueError saying
    which entry is wrong (a scheme, a path or a query would end up inside the
    transport's URL; see :func:`streams.runtime.app.broker_urls`).

    >>> check_servers("kafka:9092, [::1]:9093,broker_2")
    'kafka:9092, [::1]:9093,broker_2'
    >>> check_servers("PLAINTEXT://kafka:9092")
    Traceback (most recent call last):
    ...
    ValueError: 'PLAINTEXT://kafka:9092' is not host:port (no scheme, path or query)
    """
    entries = [e.strip() for e in servers.split(",")]
    if not any(entries):
        raise ValueError("no broker: expected host:port[,host:port]")
    for entry in entries:
        m = _SERVER.fullmatch(entry)
        if m is None:
            raise ValueError(f"{entry!r} is not host:port (no scheme, path or query)")
        if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
            raise ValueError(f"{entry!r}: the port must be 1-65535")
    return servers


# a host name (letters, digits, dots, dashes, underscores: compose service names), an
# IPv4 address, or an IPv6 address in brackets; then an optional port
_SERVER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
                     r"(?::(?P<port>[0-9]{1,5}))?")


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        None, description="host:port[,host:port]; unset means the embedded broker (demo)")

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str | None) -> str | None:
        return None if v is None else check_servers(v)

    partitions: int = Field(4, ge=1, description="partitions of the topics Sentinelle creates")
    replication_factor: int = Field(1, ge=1, description="copies of each topic Sentinelle creates")
    rebalance_timeout_s: float = Field(10.0, gt=0,
                                       description="how long a rebalance may take before a member "
                                                   "is dropped")
    session_timeout_s: float = Field(10.0, gt=0,
                                     description="silence before the group coordinator declares a "
                                                 "member dead")
    fetch_max_wait_s: float = Field(
        0.1, ge=0, le=30, description="how long the broker may hold the worker's fetch when its "
                                      "partitions have nothing new (Faust's own driver fixes "
                                      "1.5 s, which stalls a worker catching up; see "
                                      "streams/runtime/transport.py)")
    producer_batch_bytes: int | None = Field(
        None, ge=1, description="the producer's max_batch_size; unset: 16 KiB, or one record "
                                "per batch on Tansu, which misreports the end of a batch")
    security: KafkaSecuritySettings = Field(
        default_factory=KafkaSecuritySettings,
        description="authentication and encryption of every Kafka client (see docs/RUNNING.md, "
                    "\"Security\")")

    @property
    def servers(self) -> str:
        """The brokers to use: ``bootstrap_servers``, or where ``sentinelle broker`` listens."""
        return self.bootstrap_servers or DEFAULT_BOOTSTRAP


class TopicSettings(_Section):
    predictions: str = Field("ml.predictions", description="prediction events (input)")
    feedback: str = Field("ml.feedback", description="labels (input)")
    alerts: str = Field("ml.alerts", description="alerts (output)")
    deadletter: str = Field("ml.deadletter",
                            description="unusable inputs, with their reason (output)")
    stats: str = Field("ml.stats", description="closed windows (output)")
    references: str = Field("ml.references",
                            description="training reference profiles (compacted input)")
    silences: str = Field("ml.silences", description="silences (compacted input)")
    deployments: str = Field("ml.deployments",
                             description="what deployment controllers applied (compacted input)")
    commands: str = Field("ml.deploy.commands",
                          description="rollback/promote/pause commands (output)")
    approvals: str = Field("ml.deploy.approvals", description="people's approvals (input)")
    pipeline: str = Field("ml.pipeline", description="pipeline run events (input)")
    metrics: str = Field("ml.metrics", description="metric series (input)")

    def all(self) -> list[str]:
        """Every topic Sentinelle reads or writes (what ``ensure_topics`` creates)."""
        return list(self.model_dump().values())

    def compacted(self) -> list[str]:
        """The topics that hold a latest state per key."""
        return [self.references, self.silences, self.deployments]


class WorkerSettings(_Section):
    app_id: str = Field("sentinelle", min_length=1, description="Kafka consumer group id")
    batch_max: int = Field(
        800, ge=1, description="messages per micro-batch, at most (under 80 % of read_ahead: "
                               "a micro-batch then never waits for a fetch behind a backlog)")
    read_ahead: int = Field(
        1024, ge=1, description="messages Faust reads ahead per agent while a micro-batch is "
                                "folded (its stream_buffer_maxsize); with batch_max, the input "
                                "a worker holds behind a backlog")
    batch_within_s: float = Field(
        0.5, gt=0, description="an input waits at most about this long for its micro-batch "
                               "(Faust's timer is set to half of it: it starts once the "
                               "previous micro-batch is handled)")
    tick_s: float = Field(1.0, gt=0, description="wall-clock check period (outage, idle)")
    web_port: int = Field(6066, ge=0, le=65535, description="metrics and health; 0 disables")
    web_host: str = Field("127.0.0.1", description="address the web page (/metrics) listens on")
    idle_close_s: float = Field(
        120.0, gt=0, description="flush a model's open windows after this much wall-clock silence")
    series_ttl_s: float = Field(
        3600.0, gt=0, description="forget a (version, cohort) quiet this long (wall clock)")
    model_ttl_s: float = Field(
        86400.0, gt=0, description="forget a model quiet this long; resolves its alerts")
    max_models: int = Field(
        10_000, ge=1, description="models one worker holds; a new one evicts the least recently "
                                  "seen if it is idle (idle_close_s), else is dead-lettered")
    max_series: int = Field(
        64, ge=1, description="(version, cohort) series per model, with the same eviction rule")
    max_operations: int = Field(
        10_000, ge=1, description="pipelines, metric series and quota pools one worker holds")
    delivery_timeout_s: float = Field(
        300.0, gt=0, description="how long an output the broker does not acknowledge is tried "
                                 "again (the broker may be restarting) before it is dropped")
    slice_bytes: int = Field(
        4_000_000, ge=1, description="a micro-batch is processed in slices of about this many "
                                     "input bytes, yielding to timers and rebalances between")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line (ts, level, logger, "
                            "message, exception) for log aggregators; the worker, the bridges "
                            "and the controller")
    faust_metrics: bool = Field(
        True, description="Faust's own Prometheus sensor on /metrics (faust_*: producer send "
                          "latency and errors, commit latency, committed offsets, rebalances, "
                          "assignment latency, table operations, messages and events read); "
                          "its per-message series are read from Faust's plain monitor when "
                          "scraped, so it costs nothing per message (faust_events_runtime_ms "
                          "is not made)")
    blas_threads: int = Field(
        1, ge=1, description="threads of numpy's BLAS pool (the sequential tests' matrix "
                             "products) in a worker process: a worker scales out by processes, "
                             "and idle BLAS threads spin on cores the broker and the other "
                             "workers need")


class LimitSettings(_Section):
    """Bounds on what is read and written; see docs/RUNNING.md, "Limits and guarantees"."""

    max_message_bytes: int = Field(1_000_000, ge=1, description="largest input message read")
    max_batch_events: int = Field(10_000, ge=1, description="events in one batch message")
    max_record_bytes: int = Field(
        1_000_000, ge=10_000,
        description="largest record written (state, alerts, stats, dead letters): the "
                    "producer's max_request_size and the created topics' max.message.bytes "
                    "follow it; larger state is split, a larger output skipped and counted")
    max_id_chars: int = Field(256, ge=8, description="longest model, version, cohort, event id, "
                                                      "pipeline, source, metric or feature name")
    max_features: int = Field(1_000, ge=1, description="features in one prediction event")
    max_future_s: float = Field(600.0, gt=0, description="refuse event times further ahead of "
                                                         "the worker's clock")
    max_unknown_features: int = Field(
        20, ge=1, description="unknown feature names remembered (the rest are only counted)")
    max_silences: int = Field(1_000, ge=1, description="silences held; more are dead-lettered")
    max_profile_features: int = Field(1_000, ge=1, description="features in one reference "
                                                               "profile")
    max_profile_bins: int = Field(1_000, ge=2, description="bins or categories of one profiled "
                                                           "feature")


class WindowSettings(_Section):
    size_s: float = Field(60.0, gt=0, description="event-time tumbling window length")
    allowed_lateness_s: float = Field(10.0, ge=0,
                                      description="event time a window stays open after its end "
                                                  "for late events")
    percentile_accuracy: float = Field(0.01, gt=0, lt=1,
                                       description="relative accuracy of the latency quantiles "
                                                   "(DDSketch)")
    max_lead_s: float = Field(
        0.0, ge=0, description="how far a model's watermark may run ahead of the worker's clock: "
                               "an event stamped further ahead (a producer's clock running fast, "
                               "up to limits.max_future_s) is folded, but moves the watermark "
                               "only this far, so that other producers' events are not judged "
                               "late against it")
    late_alert_share: float = Field(
        0.05, gt=0, le=1, description="data_quality alert when more of a window's events arrive "
                                      "late (a producer's clock or a stuck queue)")


class LatencySettings(_Section):
    p99_threshold_ms: float = Field(500.0, gt=0,
                                    description="a window's p99 above this alerts (latency_slo)")
    min_events: int = Field(20, ge=1, description="windows with fewer requests say nothing")
    severity: Severity = Field("error", description="severity of latency_slo (p99)")


class BurnRuleSettings(_Section):
    name: str
    long_s: float = Field(gt=0)
    short_s: float = Field(gt=0)
    factor: float = Field(gt=0)
    severity: Severity = Field("critical", description="severity of a burn-rate rule")

    @model_validator(mode="after")
    def _short_within_long(self) -> BurnRuleSettings:
        if self.short_s > self.long_s:
            raise ValueError("short_s must not exceed long_s")
        return self


def _default_rules() -> list[BurnRuleSettings]:
    return [
        BurnRuleSettings(name="page", long_s=3600, short_s=300, factor=14.4, severity="critical"),
        BurnRuleSettings(name="ticket", long_s=21600, short_s=1800, factor=6.0, severity="error"),
    ]


class BurnRateSettings(_Section):
    enabled: bool = Field(True,
                          description="multi-window burn-rate alerts on latency and availability")
    latency_objective: float = Field(
        0.99, gt=0, lt=1, description="share of requests faster than slow_ms")
    slow_ms: float = Field(500.0, gt=0, description="the latency SLO's bound")
    availability_objective: float = Field(0.999, gt=0, lt=1,
                                          description="share of requests with status ok")
    min_events: int = Field(20, ge=1, description="requests a window needs to count")
    min_bad: int = Field(5, ge=1, description="bad requests a rule needs before it fires")
    rules: list[BurnRuleSettings] = Field(default_factory=_default_rules, min_length=1,
                                          description="long/short windows and burn factors (SRE "
                                                      "workbook defaults)")


class ErrorRateSettings(_Section):
    threshold: float = Field(0.05, gt=0, lt=1,
                             description="a window's error rate above this alerts, whatever the "
                                         "baseline")
    baseline_factor: float = Field(3.0, ge=1,
                                   description="... or above this many times the learned baseline")
    min_events: int = Field(20, ge=1, description="windows with fewer requests say nothing")
    severity: Severity = Field("error", description="severity of error_rate (spike)")


class OutageSettings(_Section):
    k: float = Field(10.0, gt=0, description="multiple of the typical inter-arrival time")
    floor_s: float = Field(60.0, gt=0, description="never call a model silent sooner (wall clock)")
    min_arrivals: int = Field(10, ge=1, description="arrivals before a model counts as serving")
    severity: Severity = Field("critical", description="severity of outage")


class SkewSettings(_Section):
    enabled: bool = Field(True, description="training/serving skew against the reference profile")
    test: Literal["sequential", "window"] = Field(
        "sequential", description="sequential: CUSUMs on the bins, an alert as soon as the "
                                  "evidence suffices (a 1 SD shift: a few dozen values); "
                                  "window: the JS distance of the window, every hop values")
    window_events: int = Field(2000, ge=10, description="serving values compared at once "
                                                        "(sequential: the alert's evidence)")
    hop_events: int = Field(500, ge=1, description="the window is tested every hop values "
                                                   "(sequential: a status signal every hop)")
    run_length_events: float = Field(
        60_480_000, gt=0,
        description="expected events between false alarms per feature (1/week at 100/s)")
    bootstrap_draws: int = Field(2000, ge=100,
                                 description="bootstrap draws when calibrating a threshold")
    first_events: int = Field(
        5000, ge=0, description="without a published profile, learn one from the version's "
                                "first N events (0: only published profiles)")
    severity: Severity = Field("warning", description="severity of training_serving_skew")

    @model_validator(mode="after")
    def _hop_divides_window(self) -> SkewSettings:
        if self.hop_events > self.window_events or self.window_events % self.hop_events:
            raise ValueError("hop_events must divide window_events")
        if self.run_length_events <= self.hop_events:
            raise ValueError("run_length_events must exceed hop_events")
        return self


class DriftSettings(_Section):
    """Drift over time; windows and false-alarm budget are ``skew``'s."""

    enabled: bool = Field(True,
                          description="feature and prediction drift against a trailing baseline")
    baseline_factor: int = Field(4, ge=1, description="baseline length, in recent windows")
    test: Literal["sequential", "window"] = Field(
        "sequential", description="sequential: CUSUMs against the trailing baseline (rebuilt "
                                  "each time it is renewed), held until the baseline has "
                                  "absorbed the change; window: recent window vs baseline, "
                                  "JS; ADWIN runs with both")
    severity: Severity = Field("warning",
                               description="severity of feature_drift and prediction_drift")


class QualitySettings(_Section):
    """Data quality per feature; the false-alarm budget is ``skew.run_length_events``."""

    enabled: bool = Field(True, description="data quality per feature")
    window_events: int = Field(2000, ge=10, description="events per test")
    min_excess: float = Field(0.01, ge=0, lt=1,
                              description="smallest rate above the reference rate that alerts")
    severity: Severity = Field("warning", description="severity of data_quality")


class LabelSettings(_Section):
    """Ground truth from ``ml.feedback``, joined to predictions by ``event_id``."""

    enabled: bool = Field(True,
                          description="labels: performance, label drift, confidence estimates")
    join_max: int = Field(20_000, ge=1, description="predictions kept per model awaiting a "
                                                     "label; past it, a hash sample is kept")
    join_ttl_s: float = Field(3600.0, gt=0, description="event time a prediction waits")
    join_checkpoint_s: float = Field(30.0, gt=0,
                                     description="wall-clock period of the join-buffer checkpoint")
    window: int = Field(500, ge=10, description="labelled predictions per quality test")
    min_drop: float = Field(0.02, ge=0, lt=1,
                            description="accuracy points (or relative MAE) worth an alert")
    estimate: bool = Field(True, description="estimate accuracy from confidence without labels")
    estimate_window: int = Field(2000, ge=10, description="predictions per confidence estimate")
    estimate_label_lag_s: float = Field(
        600.0, ge=0, description="keep estimating a series whose labels lag its predictions by "
        "more than this (event time): labels an hour late leave the last hour to the estimate; "
        "0: always estimate")
    severity: Severity = Field("error",
                               description="severity of performance_degradation and label_drift")


class ClassRuleSettings(_Section):
    """One alert class's own lifecycle rule (``alerting.manager.ClassRule``)."""

    keep_firing_for_s: float | None = Field(
        None, ge=0, description="replaces alerts.keep_firing_for_s for the class (and a "
        "self-resolving class's 0); a condition back within it re-affirms the alert; unset: "
        "the manager's")
    cooldown_s: float = Field(0.0, ge=0, description="after an alert of the class fires, its "
                                                     "key does not fire again for this long")


def _default_class_rules() -> dict[str, Any]:
    """The manager's default class rules, as the configuration writes them."""
    return {name: {"keep_firing_for_s": rule.keep_firing_for_s, "cooldown_s": rule.cooldown_s}
            for name, rule in DEFAULT_CLASS_RULES.items()}


class AlertSettings(_Section):
    """The alert manager (``alerting/manager.py``); Alertmanager's defaults where they apply.

    Field for field ``alerting.manager.ManagerSettings``, which the worker builds from it.
    """

    for_s: float = Field(0.0, ge=0, description="a condition must hold this long to fire")
    hysteresis: float = Field(0.05, ge=0, lt=1,
                              description="resolve only this share of the threshold past it")
    keep_firing_for_s: float = Field(
        600.0, ge=0, description="a firing alert resolves once its condition has been clear "
        "this long (not outage, burn-rate, pipeline and other self-resolving alerts)")
    flap_window_s: float = Field(600.0, gt=0,
                                 description="state changes are counted over this much time")
    flap_changes: int = Field(4, ge=2, description="state changes in the window that mean flapping")
    flap_hold_s: float = Field(600.0, ge=0,
                               description="quiet time before a flapping alert resolves")
    group_wait_s: float = Field(30.0, ge=0, description="alerts of one model version firing "
                                                        "within this of each other share a group")
    repeat_interval_s: float = Field(4 * 3600.0, gt=0,
                                     description="notify a firing alert again after this long")
    max_alerts: int = Field(
        10_000, ge=1, description="alert keys kept per model (or pipeline, pool, metric "
        "source); a new key beyond it is refused, logged and counted")
    per_class: dict[AlertClass, ClassRuleSettings] = Field(
        default_factory=_default_class_rules, validate_default=True,
        description="alert classes with their own rule, merged field by field over the "
                    "defaults: metric_anomaly keeps firing 30 min after its last anomalous "
                    "point and fires at most once an hour (keep_firing_for_s 1800, "
                    "cooldown_s 3600)")

    @field_validator("per_class", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = _default_class_rules()
        for name, rule in value.items():
            if isinstance(rule, dict):
                merged[name] = {**merged.get(name, {}), **rule}
            else:
                merged[name] = rule
        return merged


class CanarySettings(_Section):
    """Canary analysis and rollout commands (``detectors/canary.py``, ``alerting/rollout.py``)."""

    enabled: bool = Field(True, description="canary analysis and rollout commands")
    min_requests: int = Field(200, ge=1, description="requests per cohort per window for a verdict")
    error_alpha: float = Field(0.01, gt=0, lt=1, description="significance of the error-rate test")
    error_min_diff: float = Field(0.01, ge=0, description="error-rate increase that can fail")
    latency_ratio: float = Field(1.5, gt=1, description="tolerated canary/stable p95 and p99")
    prediction_js: float = Field(0.1, ge=0, le=1,
                                 description="tolerated JS distance of the prediction histograms")
    prediction_alpha: float = Field(0.001, gt=0, lt=1,
                                    description="significance of the prediction chi-square test")
    fail_windows: int = Field(2, ge=1, description="failed windows in a row before rollback")
    pass_windows: int = Field(3, ge=1, description="passing windows in a row before promote")
    ladder: tuple[int, ...] = Field((5, 25, 50, 100), description="canary traffic steps, %")
    approval_above: int = Field(50, ge=0, le=100,
                                description="steps above this share wait for an approval")
    approvers: tuple[str, ...] = Field(
        (), description="who may approve (an approval's approved_by, exactly); empty: anyone. "
                        "An approval from someone else is dead-lettered and does nothing. "
                        "Grant the write on ml.deploy.approvals to one principal too "
                        "(docs/RUNNING.md, \"Security\")")
    cooldown_s: float = Field(300.0, ge=0,
                              description="event time after a command before judging again")
    on_failure: Literal["rollback", "pause"] = Field("rollback",
                                                     description="what a failed canary gets: "
                                                                 "rollback, or pause")
    pause_models: tuple[str, ...] = Field(
        (), description="models whose failed canary is paused, not rolled back")
    severity: Severity = Field("critical", description="severity of canary_regression")
    flagger_models: dict[str, str] = Field(
        default_factory=dict, description="Flagger Canary 'namespace/name' -> model, for the "
                                          "webhooks whose metadata names no model")
    approval_token_env: str | None = Field(
        None, min_length=1,
        description="the environment variable holding the bearer token of POST "
                    "/v1/approvals/{model} on the worker's web port (a person's approval by "
                    "HTTP, published to ml.deploy.approvals by the worker); unset: that page "
                    "is off. The token is never logged")
    announced_ttl_s: float = Field(
        86400.0, gt=0,
        description="keep a model's state this long (wall clock, from the ts of the latest "
                    "ml.deployments record) while a rollout announced there waits for its "
                    "traffic, however quiet the model is")

    @field_validator("ladder")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[0] <= 0 or v[-1] != 100:
            raise ValueError("must be increasing percentages ending at 100")
        return v


class PipelineSettings(_Section):
    """Run tracking (``detectors/pipelines.py``); durations are in seconds."""

    enabled: bool = Field(True, description="pipeline runs: failures, stalls, durations")
    failure_critical_after: int = Field(3, ge=1, description="failures in a row that page")
    failure_severity: Severity = Field("error",
                                       description="severity of pipeline_failure (critical from "
                                                   "failure_critical_after in a row)")
    stall_floor_s: float = Field(300.0, gt=0, description="never call a run stalled sooner")
    stall_ceiling_s: float = Field(6 * 3600.0, gt=0,
                                   description="silence always a stall (and before history)")
    stall_factor: float = Field(1.5, gt=1, description="x the p95 of recent durations")
    stall_min_runs: int = Field(5, ge=1, description="runs known before learning the limit")
    stall_severity: Severity = Field("error", description="severity of pipeline_stalled")
    duration_min_runs: int = Field(10, ge=3, description="warm-up: runs before judging")
    duration_threshold: float = Field(0.999, gt=0.5, lt=1,
                                      description="Gaussian score (2|CDF-0.5|) that is anomalous")
    duration_accept_after: int = Field(3, ge=1,
                                       description="anomalous runs in a row: the new normal")
    duration_severity: Severity = Field("warning",
                                        description="severity of pipeline_duration_anomaly")
    run_ttl_s: float = Field(2 * 86400.0, gt=0, description="forget a run silent this long")
    pipeline_ttl_s: float = Field(30 * 86400.0, gt=0,
                                  description="forget a pipeline quiet this long")
    max_runs: int = Field(1_000, ge=1, description="runs in flight remembered per pipeline")


class QuotaSettings(_Section):
    """Pool quotas (``detectors/quota.py``)."""

    enabled: bool = Field(True, description="quota forecasts per pool")
    window_s: float = Field(6 * 3600.0, gt=0, description="usage rate over this much event time")
    horizon_s: float = Field(24 * 3600.0, gt=0, description="warn when the limit is this close")
    critical_share: float = Field(0.9, gt=0, le=1, description="page at this share of the limit")
    errant_share: float = Field(0.25, gt=0, le=1,
                                description="one run using this share of the limit is flagged")
    min_points: int = Field(3, ge=2, description="usage points needed before forecasting")


class ValidationSettings(_Section):
    """The validation gate (``detectors/pipelines.py:ValidationGate``)."""

    enabled: bool = Field(True, description="the validation gate on validation runs")
    tolerance: float = Field(0.02, ge=0, description="relative worsening tolerated per metric")
    lower_is_better: tuple[str, ...] = Field(
        (r"loss", r"error", r"mae", r"mse", r"rmse", r"mape", r"latency", r"brier"),
        description="metric name patterns where lower is better (regular expressions)")
    ignore: tuple[str, ...] = Field((r"^rows?$", r"count", r"duration", r"seconds", r"^n_"),
                                    description="metric name patterns the gate ignores (regular "
                                                "expressions)")
    pause: bool = Field(True, description="publish a pause command for a regressed version")
    severity: Severity = Field("error", description="severity of validation_gate")


class MetricAnomalySettings(_Section):
    """Metric anomaly detection (``detectors/anomaly.py``)."""

    enabled: bool = Field(True, description="watch ml.metrics series for anomalies")
    warmup_points: int = Field(576, ge=10, description="no alert before (2 days at 5 min)")
    threshold: float = Field(0.9999, gt=0.5, lt=1,
                             description="calibrated anomaly probability that alerts")
    season_s: float = Field(86400.0, gt=0, description="the seasonal period (daily)")
    severity: Severity = Field("warning", description="of the alerts (their cooldown and "
                                                      "resolve delay: alerts.per_class)")
    series_ttl_s: float = Field(7 * 86400.0, gt=0, description="forget a series quiet this long")
    max_metrics_per_source: int = Field(256, ge=1, description="metrics watched per source; "
                                                               "more are dead-lettered")


class PagerDutyRoute(_Section):
    """One routing rule of the PagerDuty bridge: the first rule whose every pattern matches wins."""

    match: dict[Literal["class", "severity", "model"], str] = Field(
        min_length=1, description="shell patterns on the alert's class, severity and model "
                                  "(component), e.g. {class: canary_regression} or "
                                  "{model: 'fraud-*', severity: critical}")
    routing_key_env: str | None = Field(None, min_length=1,
                                        description="environment variable holding the key")
    routing_key_file: Path | None = Field(None, description="file whose first line is the key")

    @model_validator(mode="after")
    def _one_source(self) -> PagerDutyRoute:
        if (self.routing_key_env is None) == (self.routing_key_file is None):
            raise ValueError("give routing_key_env or routing_key_file (one of them)")
        return self


class PagerDutyBridgeSettings(_Section):
    """``sentinelle bridge pagerduty`` (``alerting/pagerduty.py``). Routing keys are never in
    the file: each rule names the variable or the file holding its key."""

    routing_key_env: str = Field("PAGERDUTY_ROUTING_KEY", min_length=1,
                                 description="variable holding the default routing key")
    routing_key_file: Path | None = Field(
        None, description="file whose first line is the default routing key (beats the "
                          "variable)")
    routes: list[PagerDutyRoute] = Field(
        default_factory=list, description="routing keys per class, severity or model pattern, "
                                          "first match wins; else the default key")
    client: str = Field("Sentinelle", min_length=1, description="the event's client name")
    client_url: str | None = Field(None, description="the event's client_url (a template, "
                                                     "like dashboard_url)")
    rate_per_key: float = Field(
        110.0, gt=0, le=120, description="events per minute per routing key at most "
                                         "(PagerDuty takes ~120)")
    change_events: bool = Field(True, description="send rollbacks and promotions from "
                                                  "ml.deploy.commands as Change Events")


class AlertmanagerBridgeSettings(_Section):
    """``sentinelle bridge alertmanager`` (``alerting/alertmanager.py``)."""

    repost_s: float = Field(
        60.0, gt=0, description="re-post every firing alert this often; endsAt is set "
                                "4 x this ahead, as Prometheus does, so keep it under a "
                                "quarter of how long an alert may outlive a dead bridge")


class BridgeSettings(_Section):
    """The alert bridges (``alerting/bridge.py``): links, stuck deliveries, per-tool settings.

    URL templates take ``{model}``, ``{version}``, ``{class}``, ``{severity}`` and
    ``{dedup_key}`` (URL-quoted)."""

    runbooks: dict[AlertClass, str] = Field(
        default_factory=dict, description="a runbook URL template per alert class")
    dashboard_url: str | None = Field(None, description="a dashboard URL template")
    max_age_s: float | None = Field(
        None, gt=0, description="give up on an alert still undelivered this long after it "
                                "was published: dead-lettered (reason expired); null: never")
    metrics_port: int = Field(0, ge=0, le=65535,
                              description="serve the bridge's /metrics, /health and /ready here "
                                          "(on worker.web_host); 0: not served")
    pagerduty: PagerDutyBridgeSettings = Field(
        PagerDutyBridgeSettings(),
        description="sentinelle bridge pagerduty: routing_key_env or routing_key_file (the "
                    "default key), routes (per class, severity or model pattern: match, "
                    "routing_key_env or routing_key_file), client, client_url, rate_per_key "
                    "(events/min per key, 110), change_events (true); docs/RUNNING.md, "
                    "\"Alert bridges\"")
    alertmanager: AlertmanagerBridgeSettings = Field(
        AlertmanagerBridgeSettings(),
        description="sentinelle bridge alertmanager: repost_s (60), how often a firing alert "
                    "is posted again; its endsAt is 4 x that ahead")


class Settings(BaseSettings):
    """Every setting of Sentinelle, frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix="SENTINELLE_", env_nested_delimiter="__", extra="forbid", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    limits: LimitSettings = LimitSettings()
    windows: WindowSettings = WindowSettings()
    latency: LatencySettings = LatencySettings()
    burn_rate: BurnRateSettings = BurnRateSettings()
    error_rate: ErrorRateSettings = ErrorRateSettings()
    outage: OutageSettings = OutageSettings()
    skew: SkewSettings = SkewSettings()
    drift: DriftSettings = DriftSettings()
    quality: QualitySettings = QualitySettings()
    labels: LabelSettings = LabelSettings()
    alerts: AlertSettings = AlertSettings()
    canary: CanarySettings = CanarySettings()
    pipelines: PipelineSettings = PipelineSettings()
    quota: QuotaSettings = QuotaSettings()
    validation: ValidationSettings = ValidationSettings()
    metric_anomaly: MetricAnomalySettings = MetricAnomalySettings()
    bridges: BridgeSettings = BridgeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file (which arrives as init kwargs).
        return env_settings, init_settings

    def with_bootstrap(self, servers: str) -> Settings:
        """These settings with other brokers (checked as the file's are: ValueError)."""
        return self.model_copy(update={"kafka": self.kafka.model_copy(
            update={"bootstrap_servers": check_servers(servers)})})


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


def _describe(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        got = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
        lines.append(f"{origin}: field '{field}': {msg}{got}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None,
                  bootstrap_servers: str | None = None) -> Settings:
    """Read, merge and validate the configuration.

    ``bootstrap_servers`` (the CLI flag) beats ``KAFKA_BOOTSTRAP_SERVERS``, which
    beats the file.
    """
    data: dict[str, Any] = {}
    origin = "configuration"
    if path is not None:
        origin = f"config file {str(path)!r}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read it: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{origin}: the top level must be a mapping of sections")
        data = loaded
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    servers = bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        try:
            settings = settings.with_bootstrap(servers)
        except ValueError as exc:
            env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            source = "KAFKA_BOOTSTRAP_SERVERS" if servers == env else "--bootstrap-servers"
            raise ConfigError(f"{source}: field 'kafka.bootstrap_servers': {exc}") from None
    return settings
