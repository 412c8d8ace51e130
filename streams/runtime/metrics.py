"""Prometheus metrics of the worker, on an injected registry (tests pass their own).

Two kinds, kept apart:

- what *happens* (messages read, events folded, dead letters, alerts, commands,
  timings, bytes written) is counted by the shell as it happens, on the
  counters and histograms of :class:`Metrics`;
- what *is* (models and series held, what fires now, each version's latest
  window, each feature's latest skew and drift statistic against its
  threshold, canary verdicts, the label join) is read from the monitors when
  Prometheus scrapes, by :class:`StateCollector`: a model or series the worker
  no longer holds (expired, evicted, its partition revoked) leaves the page
  with its state, and cardinality is bounded by ``worker.max_models`` and
  ``worker.max_series``.

The one per-model counter kept by the shell, ``sentinelle_commands_total``,
forgets a model when the processors say it retired (:attr:`Outbox.retired`,
:meth:`Metrics.forget_models`). Every metric is in base units (seconds,
bytes, ratios); docs/RUNNING.md, "Metrics", lists them.
"""

from __future__ import annotations

import math
import platform
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from alerting.manager import AlertManager
from detectors.contract import ALERT_CLASSES, COMMAND_ACTIONS
from detectors.quota import QuotaForecast
from streams.core.monitor import ModelMonitor

__all__ = ["Metrics", "make_metrics", "StateCollector", "LABEL_OUTCOMES"]

#: The label join's cumulative outcomes (``sentinelle_labels_total{outcome}``).
LABEL_OUTCOMES = ("matched", "unmatched", "unsampled", "expired", "dropped")

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0)
_BYTES = tuple(float(4 ** i * 256) for i in range(10))  # 256 B .. 64 MiB


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events: Counter
    messages: Counter
    deadletters: Counter
    alerts: Counter
    windows: Counter
    commands: Counter
    guards: Counter
    state_writes: Counter
    state_largest: Gauge
    outputs_dropped: Counter
    changelog_bytes: Counter
    batch_seconds: Histogram
    last_fold: Gauge
    publish_seconds: Histogram
    checkpoint_bytes: Histogram
    consumer_lag: Gauge
    build: Info

    def forget_models(self, models: Iterable[str]) -> None:
        """Remove the per-model series of models whose state the worker dropped."""
        for model in models:
            for action in COMMAND_ACTIONS:
                try:
                    self.commands.remove(action, model)
                except KeyError:
                    pass

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The consumer lag of each assigned partition; partitions no longer assigned
        leave the page."""
        self.consumer_lag.clear()
        for (topic, partition), n in lags.items():
            self.consumer_lag.labels(topic, str(partition)).set(n)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def make_metrics(registry: CollectorRegistry, process: bool = True,
                 inputs: Iterable[str] = ()) -> Metrics:
    """The worker's metrics on ``registry``; with ``process``, the default process,
    platform and garbage-collector collectors too (memory, CPU, file descriptors).

    The counters whose label values are known in advance start at 0 (events and
    messages of each topic of ``inputs``; alerts of each class and action; the
    timings of both agents and the writes of both state tables), as
    Prometheus advises: a series that first appears at 91 has no increase that
    ``rate()`` or ``increase()`` can see, so the first burst, or the first alert of a
    class, would never show on the dashboard.
    """
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    build = Info("sentinelle_build", "The running Sentinelle: versions of it, Faust and Python",
                 registry=registry)
    build.info({"version": _version("sentinelle"), "faust": _version("faust-streaming"),
                "python": platform.python_version()})
    metrics = Metrics(
        registry=registry,
        events=Counter("sentinelle_events_total", "Valid events folded, per input topic",
                       ["topic"], registry=registry),
        messages=Counter("sentinelle_messages_total", "Kafka messages read, per input topic",
                         ["topic"], registry=registry),
        deadletters=Counter("sentinelle_deadletters_total", "Inputs sent to the dead-letter topic",
                            ["topic", "reason"], registry=registry),
        alerts=Counter("sentinelle_alerts_total", "Alert events published",
                       ["class", "action"], registry=registry),
        windows=Counter("sentinelle_windows_total", "Windows closed and published",
                        registry=registry),
        commands=Counter("sentinelle_commands_total", "Deployment commands published",
                         ["action", "model"], registry=registry),
        guards=Counter("sentinelle_guard_total", "Errors isolated and caps applied: fold_errors, "
                       "slice_errors, tick_errors, follower_errors, state_reset, input_reordered, "
                       "input_refetched, input_gap_unfilled, evicted_* and refused_* "
                       "(models, series, metrics, operations, silences)", ["event"],
                       registry=registry),
        state_writes=Counter("sentinelle_state_writes_total", "Changelog records written "
                             "(written: sent; unchanged: skipped; chunked: split in parts)",
                             ["table", "outcome"], registry=registry),
        state_largest=Gauge("sentinelle_state_record_bytes_max", "The largest changelog record "
                            "written since the worker started, in bytes", registry=registry),
        outputs_dropped=Counter("sentinelle_outputs_dropped_total", "Outputs not published: "
                                "too large for limits.max_record_bytes, or not encodable",
                                ["kind", "reason"], registry=registry),
        changelog_bytes=Counter("sentinelle_changelog_bytes_total", "Bytes of state records "
                                "written to the changelog", ["table"], registry=registry),
        last_fold=Gauge("sentinelle_last_fold_timestamp_seconds", "Unix time an agent last "
                        "finished folding a slice of its inputs (appears with its first one)",
                        ["agent"], registry=registry),
        batch_seconds=Histogram("sentinelle_batch_seconds", "Processing time of one micro-batch "
                                "slice (parse, fold, detect), per agent", ["agent"],
                                buckets=_SECONDS, registry=registry),
        publish_seconds=Histogram("sentinelle_publish_seconds", "Time to publish one slice's "
                                  "outputs and state, acknowledged by the broker, per agent",
                                  ["agent"], buckets=_SECONDS, registry=registry),
        checkpoint_bytes=Histogram("sentinelle_checkpoint_bytes", "Bytes of state written to "
                                   "the changelog per micro-batch slice", ["table"],
                                   buckets=_BYTES, registry=registry),
        consumer_lag=Gauge("sentinelle_consumer_lag", "Messages not yet read, per assigned input "
                           "partition (high watermark minus position)", ["topic", "partition"],
                           registry=registry),
        build=build,
    )
    for topic in inputs:
        metrics.events.labels(topic)
        metrics.messages.labels(topic)
    for agent in ("predictions", "operations"):
        metrics.batch_seconds.labels(agent)
        metrics.publish_seconds.labels(agent)
    for table in ("model-state", "ops-state"):
        metrics.checkpoint_bytes.labels(table)
        metrics.changelog_bytes.labels(table)
    for cls in ALERT_CLASSES:
        for action in ("trigger", "resolve"):
            metrics.alerts.labels(cls, action)
    return metrics


class StateCollector(Collector):
    """Gauges read from the monitors at scrape time (on the event loop, between slices).

    ``models``: the prediction processor's monitors; ``books``: the alert managers
    of the operations' states (pipelines, metric sources, pools); ``pools``: the
    quota forecasts of the pools this worker owns (use against the limit).
    """

    def __init__(self, models: Callable[[], Mapping[str, ModelMonitor]],
                 books: Callable[[], Iterable[AlertManager]],
                 clock: Callable[[], float] = time.time,
                 pools: Callable[[], Iterable[QuotaForecast]] = tuple) -> None:
        self.models, self.books, self.clock, self.pools = models, books, clock, pools

    def describe(self) -> Iterable[Metric]:
        return self._families().values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        series = ["model", "version", "cohort"]
        feature = [*series, "feature", "check", "statistic"]
        return {
            "models": GaugeMetricFamily("sentinelle_models", "Models whose state this worker "
                                        "holds"),
            "series": GaugeMetricFamily("sentinelle_series", "(model, version, cohort) series "
                                        "held"),
            "waiting": GaugeMetricFamily("sentinelle_label_join_entries", "Predictions waiting "
                                         "in the label join for their label"),
            "labels": CounterMetricFamily("sentinelle_labels", "Label join outcomes since the "
                                          "model's state began (restored on takeover)",
                                          labels=["model", "outcome"]),
            "firing": GaugeMetricFamily("sentinelle_alerts_firing", "Alerts firing now",
                                        labels=["class", "severity"]),
            "delay": GaugeMetricFamily("sentinelle_event_time_delay_seconds", "Wall clock minus "
                                       "the model's watermark (event time reached)",
                                       labels=["model"]),
            "latency": GaugeMetricFamily("sentinelle_window_latency_seconds", "Latency "
                                         "quantiles of the series' latest closed window",
                                         labels=[*series, "quantile"]),
            "errors": GaugeMetricFamily("sentinelle_window_error_ratio", "Error rate of the "
                                        "series' latest closed window", labels=series),
            "rate": GaugeMetricFamily("sentinelle_window_requests_per_second", "Requests per "
                                      "second (event time) in the series' latest closed window",
                                      labels=series),
            "window_end": GaugeMetricFamily("sentinelle_window_end_timestamp_seconds", "End "
                                            "(event time) of the series' latest closed window",
                                            labels=series),
            "statistic": GaugeMetricFamily("sentinelle_feature_statistic", "Latest skew or drift "
                                           "statistic of a feature (check: "
                                           "training_serving_skew, feature_drift, "
                                           "prediction_drift)", labels=feature),
            "threshold": GaugeMetricFamily("sentinelle_feature_threshold", "The calibrated "
                                           "threshold of that statistic", labels=feature),
            "verdict": GaugeMetricFamily("sentinelle_canary_verdict", "The rollout's latest "
                                         "canary verdict: 1 for its outcome (pass, fail, "
                                         "inconclusive), 0 for the others",
                                         labels=["model", "stable", "canary", "outcome"]),
            "traffic": GaugeMetricFamily("sentinelle_canary_traffic_ratio", "Share of traffic "
                                         "the rollout gives its canary",
                                         labels=["model", "stable", "canary"]),
            "quota_used": GaugeMetricFamily("sentinelle_quota_used", "A pool resource's use, "
                                            "as its pipelines last reported it (their unit)",
                                            labels=["pool", "resource"]),
            "quota_limit": GaugeMetricFamily("sentinelle_quota_limit", "The pool resource's "
                                             "limit", labels=["pool", "resource"]),
            "quota_hours": GaugeMetricFamily("sentinelle_quota_hours_to_limit", "Hours until "
                                             "the limit at the current rate of use (absent "
                                             "while the use does not grow)",
                                             labels=["pool", "resource"]),
        }

    def collect(self) -> Iterator[Metric]:
        f = self._families()
        now = self.clock()
        monitors = self.models()
        firing: Tally[tuple[str, str]] = Tally()
        n_series = waiting = 0
        for model, mon in monitors.items():
            n_series += len(mon.series)
            stats = mon.labels.stats()
            waiting += int(stats.get("waiting", 0))
            for outcome in LABEL_OUTCOMES:
                f["labels"].add_metric([model, outcome], float(stats.get(outcome, 0)))
            _tally_firing(mon.book, firing)
            wm = mon.windows.watermark
            if math.isfinite(wm):
                f["delay"].add_metric([model], now - wm)
            for (version, cohort), w in mon.latest.items():
                key = [model, version, cohort]
                for q, v in (("0.5", w.p50), ("0.95", w.p95), ("0.99", w.p99)):
                    if v == v:  # NaN: an empty window has no quantiles
                        f["latency"].add_metric([*key, q], v / 1000.0)
                f["errors"].add_metric(key, w.error_rate)
                f["rate"].add_metric(key, w.count / max(w.end - w.start, 1e-9))
                f["window_end"].add_metric(key, w.end)
            for (version, cohort, feat, check), r in mon.readings.items():
                key = [model, version, cohort, feat, check, r.statistic]
                f["statistic"].add_metric(key, r.value)
                f["threshold"].add_metric(key, r.threshold)
            rollout = mon.canary.tracker.active if mon.canary is not None else None
            if rollout is not None and not rollout.finished:
                f["traffic"].add_metric([model, rollout.stable, rollout.canary],
                                        rollout.traffic_percent / 100.0)
                latest = mon.verdicts.get(rollout.canary)
                if latest is not None:
                    for outcome in ("pass", "fail", "inconclusive"):
                        f["verdict"].add_metric([model, rollout.stable, rollout.canary, outcome],
                                                1.0 if outcome == latest else 0.0)
        for book in self.books():
            _tally_firing(book, firing)
        for fc in self.pools():
            if not fc.levels:
                continue
            _, used, limit = fc.levels[-1]
            key = [fc.pool, fc.resource]
            f["quota_used"].add_metric(key, used)
            f["quota_limit"].add_metric(key, limit)
            rate = fc.rate()
            if rate is not None and rate > 0:
                f["quota_hours"].add_metric(key, max(0.0, limit - used) / rate / 3600.0)
        for (cls, severity), n in sorted(firing.items()):
            f["firing"].add_metric([cls, severity], n)
        f["models"].add_metric([], len(monitors))
        f["series"].add_metric([], n_series)
        f["waiting"].add_metric([], waiting)
        yield from f.values()


def _tally_firing(book: AlertManager, firing: Tally[tuple[str, str]]) -> None:
    for lc in book.firing.values():
        if lc.last is not None:
            firing[(lc.last.check, lc.last.severity)] += 1
