"""Links a responder follows from an alert: a runbook per class, a dashboard, templated.

A template is a URL with ``{model}``, ``{version}``, ``{class}``, ``{severity}``
and ``{dedup_key}`` in it, each replaced by the alert's value, URL-quoted. The
bridges (:mod:`alerting.pagerduty`, :mod:`alerting.alertmanager`) take a
:class:`Links` built from ``bridges.runbooks`` and ``bridges.dashboard_url``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = ["Links", "alert_fields", "render", "check_template", "FIELDS"]

#: What a template may name.
FIELDS = ("model", "version", "class", "severity", "dedup_key")


def alert_fields(alert: Mapping[str, Any]) -> dict[str, str]:
    """The model, version, class, severity and dedup key of an ``ml.alerts`` message.

    The version is the part of ``payload.source`` after ``model@`` (empty when the
    alert is about a whole model, a pipeline or a source).

    >>> alert_fields({"dedup_key": "k", "payload": {"component": "m", "source": "m@v7",
    ...               "class": "feature_drift", "severity": "warning"}})["version"]
    'v7'
    """
    p = alert.get("payload") or {}
    model = str(p.get("component") or "")
    source = str(p.get("source") or "")
    version = source[len(model) + 1:] if model and source.startswith(f"{model}@") else ""
    return {"model": model, "version": version, "class": str(p.get("class") or ""),
            "severity": str(p.get("severity") or ""),
            "dedup_key": str(alert.get("dedup_key") or "")}


def render(template: str, fields: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by the URL-quoted field.

    >>> render("https://wiki/{class}?m={model}", {"class": "outage", "model": "a b"})
    'https://wiki/outage?m=a%20b'
    """
    return template.format_map({k: quote(v, safe="") for k, v in fields.items()})


def check_template(template: str) -> None:
    """Raise :class:`ValueError` naming what a template names that is not a field."""
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in FIELDS:
            raise ValueError(f"URL template {template!r}: unknown field {{{name}}} "
                             f"(known: {', '.join(FIELDS)})")


@dataclass(frozen=True)
class Links:
    """Runbook URL templates per alert class, and one dashboard URL template."""

    runbooks: Mapping[str, str] = field(default_factory=dict)
    dashboard: str | None = None

    def __post_init__(self) -> None:
        for template in [*self.runbooks.values(), *([self.dashboard] if self.dashboard else [])]:
            check_template(template)

    def runbook_for(self, fields: Mapping[str, str]) -> str | None:
        template = self.runbooks.get(fields.get("class", ""))
        return render(template, fields) if template else None

    def dashboard_for(self, fields: Mapping[str, str]) -> str | None:
        return render(self.dashboard, fields) if self.dashboard else None
