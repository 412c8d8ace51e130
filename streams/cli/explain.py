"""``sentinelle explain DEDUP_KEY``: one alert's evidence, with the bins that moved drawn.

Reads ``ml.alerts`` from its start, takes the latest ``trigger`` of the key (or,
if it never triggered, its latest event), and prints its summary, severity and
time, its evidence, and, for a distribution check (skew, drift, data quality:
the evidence's ``largest_moves``), the reference against the serving share of
each bin that moved most, as bars in the terminal; ``--html F`` writes the same
as a small HTML page.
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path
from typing import Any

import click
import orjson

from streams.cli.base import fail, with_settings
from streams.config import Settings

__all__ = ["explain", "find_alert", "render_text", "render_html"]


def find_alert(values: list[bytes | None], key: str) -> dict[str, Any] | None:
    """The latest trigger of ``key`` among ``ml.alerts`` values (else its latest event)."""
    latest = trigger = None
    for value in values:
        try:
            rec = orjson.loads(value or b"null")
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("dedup_key") == key:
            latest = rec
            if rec.get("event_action") == "trigger":
                trigger = rec
    return trigger or latest


def moves(alert: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(bin, reference share, serving share) of the bins that moved most, if any (for
    drift: the baseline's share and the recent window's)."""
    details = alert.get("payload", {}).get("custom_details") or {}
    out = []
    for m in details.get("largest_moves") or []:
        if not isinstance(m, dict) or "bin" not in m:
            continue
        ref, now = m.get("reference", m.get("baseline")), m.get("serving", m.get("recent"))
        if isinstance(ref, (int, float)) and isinstance(now, (int, float)):  # skew, or drift
            out.append((str(m["bin"]), float(ref), float(now)))
    return out


def render_text(alert: dict[str, Any], width: int = 80) -> str:
    """The alert as text, with a chart of the moved bins when it has them.

    >>> a = {"event_action": "trigger", "dedup_key": "training_serving_skew:m:v1:amount",
    ...      "payload": {"summary": "m v1: skew on 'amount'", "severity": "warning",
    ...                  "timestamp": "2026-12-02T10:00:00.000Z", "custom_details": {
    ...                  "largest_moves": [{"bin": "[10, 20)", "reference": 0.1,
    ...                                     "serving": 0.4}]}}}
    >>> print(render_text(a).splitlines()[0])
    trigger training_serving_skew:m:v1:amount (warning) at 2026-12-02T10:00:00.000Z
    """
    p = alert.get("payload", {})
    lines = [f"{alert.get('event_action')} {alert.get('dedup_key')} ({p.get('severity')}) at "
             f"{p.get('timestamp')}", p.get("summary", ""), "", "evidence:",
             orjson.dumps(p.get("custom_details"), option=orjson.OPT_INDENT_2).decode()]
    bins = moves(alert)
    if bins:
        label = max(len(b) for b, _, _ in bins)
        scale = max(0.01, max(max(r, s) for _, r, s in bins))
        room = max(10, width - label - 22)
        lines += ["", "share of values per bin, reference (░) vs serving (█):"]
        for b, r, s in bins:
            lines.append(f"  {b:>{label}}  reference {'░' * round(room * r / scale):<{room}} "
                         f"{r:6.1%}")
            lines.append(f"  {'':>{label}}  serving   {'█' * round(room * s / scale):<{room}} "
                         f"{s:6.1%}")
    return "\n".join(lines)


def render_html(alert: dict[str, Any]) -> str:
    """The alert as a small standalone HTML page (bars drawn with plain CSS)."""
    p = alert.get("payload", {})
    rows = "".join(
        f"<tr><td>{html.escape(b)}</td><td><span style='display:inline-block;height:.8em;"
        f"width:{300 * r:.0f}px;background:#999'></span> {r:.1%}</td><td><span style='display:"
        f"inline-block;height:.8em;width:{300 * s:.0f}px;background:#d9534f'></span> {s:.1%}"
        f"</td></tr>" for b, r, s in moves(alert))
    evidence = html.escape(orjson.dumps(p.get("custom_details"),
                                        option=orjson.OPT_INDENT_2).decode())
    title = html.escape(str(alert.get("dedup_key")))
    return (f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
            f"<body style='font:14px system-ui'><h1>{html.escape(str(p.get('summary')))}"
            f"</h1><p>{html.escape(str(alert.get('event_action')))} · "
            f"{html.escape(str(p.get('severity')))} · {html.escape(str(p.get('timestamp')))}</p>"
            + (f"<h2>Reference vs serving</h2><table><tr><th>bin</th><th>reference</th>"
               f"<th>serving</th></tr>{rows}</table>" if rows else "")
            + f"<h2>Evidence</h2><pre>{evidence}</pre></body>")


@click.command()
@click.argument("dedup_key")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="also write the explanation as an HTML page")
@with_settings
def explain(dedup_key: str, html_path: str | None, settings: Settings) -> None:
    """Explain one alert (its DEDUP_KEY): summary, evidence, and the bins that moved."""
    from streams.runtime.follow import read_all
    from streams.runtime.kafka import client_options

    records = asyncio.run(read_all(settings.kafka.servers, settings.topics.alerts,
                                   client_options(settings)))
    alert = find_alert([v for _, v in records], dedup_key)
    if alert is None:
        fail(f"no alert {dedup_key!r} on {settings.topics.alerts}")
    click.echo(render_text(alert))
    if html_path:
        Path(html_path).write_text(render_html(alert), encoding="utf-8")
        click.echo(f"written to {html_path}")
