"""The Grafana dashboard shipped in deploy/grafana asks only for what Sentinelle exports.

Every ``sentinelle_*`` (and ``process_*``, ``faust_*``) name in a panel's PromQL must be a
sample name of the worker's registry (counters with ``_total``, histograms
with ``_bucket``/``_count``/``_sum``), and every label it groups by or matches
on must be one of that metric's labels (or a label Prometheus adds itself).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from alerting.bridge_service import BridgeMetrics
from streams.config import Settings
from streams.core.predictions import PredictionProcessor
from streams.runtime.faust_sensor import FaustSensor
from streams.runtime.metrics import StateCollector, make_metrics
from streams.tools.controller import ControllerState, ControllerWatch
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sentinelle.json"
TARGET_LABELS = {"instance", "job", "le"}  # added by Prometheus, or a histogram's buckets
NAME = re.compile(r"\b((?:sentinelle|process|faust)_[a-zA-Z0-9_]*)\b")
SELECTOR = re.compile(r"\b((?:sentinelle|process|faust)_[a-zA-Z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, for everything the worker's registry exports."""
    registry = CollectorRegistry()
    metrics = make_metrics(registry)
    p = PredictionProcessor(Settings(), "ml.predictions")
    registry.register(StateCollector(lambda: p.monitors, lambda: []))
    # the worker's Faust sensor (worker.faust_metrics), the bridges' and the controller's
    faust = FaustSensor.create(registry)
    bridges = BridgeMetrics(registry)
    bridges.watch("webhook")
    controller = ControllerWatch(registry)
    controller.state = ControllerState()
    controller.state.start("m", "v1", "v2", 5)
    labelnames: dict[str, tuple[str, ...]] = {}
    for value in [*vars(metrics).values(), *faust._metrics, *vars(bridges).values(),
                  *vars(controller).values()]:
        names = getattr(value, "_labelnames", None)
        if names is not None:
            labelnames[value._name] = tuple(names)
    states = StateCollector._families()
    for fam in states.values():
        labelnames[fam.name] = tuple(getattr(fam, "_labelnames", ()))
    out: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                "info": ["_info"], "gauge": [""], "summary": ["_count", "_sum", ""]}
    for fam in registry.collect():
        labels = set(labelnames.get(fam.name, ()))
        for s in fam.samples:
            labels |= set(s.labels) - {"le", "quantile"} | ({"quantile"} if fam.type != "histogram"
                                                             and "quantile" in s.labels else set())
        for suffix in suffixes.get(fam.type, [""]):
            out[fam.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def queries() -> list[tuple[str, str]]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            out.append((f"${var['name']}", var["definition"]))
    return out


def test_the_dashboard_has_a_query_for_each_issue_topic() -> None:
    text = " ".join(expr for _, expr in queries())
    for name in ("sentinelle_window_requests_per_second", "sentinelle_window_error_ratio",
                 "sentinelle_window_latency_seconds", "sentinelle_alerts_firing",
                 "sentinelle_feature_statistic", "sentinelle_feature_threshold",
                 "sentinelle_canary_verdict", "sentinelle_deadletters_total",
                 "sentinelle_consumer_lag", "sentinelle_quota_used", "sentinelle_quota_limit"):
        assert name in text, name


@pytest.mark.parametrize(("title", "expr"), queries(), ids=[t for t, _ in queries()])
def test_every_query_asks_for_exported_metrics_and_labels(title: str, expr: str) -> None:
    names = exported()
    used = set(NAME.findall(expr))
    assert used, f"{title}: no Sentinelle metric in {expr!r}"
    for name in used:
        assert name in names, f"{title}: {name} is not exported by the worker"
    known = set().union(*(names[n] for n in used)) | TARGET_LABELS
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            assert label in names[name] | TARGET_LABELS, f"{title}: {name} has no label {label}"
    for group in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            assert label in known, f"{title}: no metric of {expr!r} has the label {label}"


def test_the_check_fails_on_a_misspelt_metric() -> None:
    assert "sentinelle_window_latency_ms" not in exported()
    assert "sentinelle_labels_total" in exported()  # a counter: _total on the page
    assert "sentinelle_batch_seconds_bucket" in exported()
