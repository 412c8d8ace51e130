"""Prometheus metrics of the worker, on an injected registry (tests pass their own)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Metrics", "make_metrics"]


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events: Counter
    messages: Counter
    deadletters: Counter
    alerts: Counter
    windows: Counter
    models: Gauge
    labels: Gauge
    commands: Counter
    guards: Counter
    state_writes: Counter
    state_largest: Gauge
    outputs_dropped: Counter


def make_metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(
        registry=registry,
        events=Counter("sentinelle_events_total", "Valid events folded into windows",
                       ["topic"], registry=registry),
        messages=Counter("sentinelle_messages_total", "Kafka messages read", ["topic"],
                         registry=registry),
        deadletters=Counter("sentinelle_deadletters_total", "Inputs sent to the dead-letter topic",
                            ["topic", "reason"], registry=registry),
        alerts=Counter("sentinelle_alerts_total", "Alert events published",
                       ["class", "action"], registry=registry),
        windows=Counter("sentinelle_windows_total", "Windows closed and published",
                        registry=registry),
        models=Gauge("sentinelle_models", "Models whose state this worker holds",
                     registry=registry),
        labels=Gauge("sentinelle_labels", "Feedback join, since the worker started: labels "
                     "matched or unmatched, predictions expired or dropped unlabelled, waiting",
                     ["model", "outcome"], registry=registry),
        commands=Counter("sentinelle_commands_total", "Deployment commands published",
                         ["action"], registry=registry),
        guards=Counter("sentinelle_guard_total", "Errors isolated and caps applied: fold_errors, "
                       "tick_errors, follower_errors, state_reset, evicted_* and refused_* "
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
    )
