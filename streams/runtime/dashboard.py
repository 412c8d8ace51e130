"""The worker's live dashboard: ``/dashboard`` (one HTML page, no build step), updated
without reloading by the server-sent events of ``/api/events`` (the ``/api/state``
JSON, pushed each second it changes).

What a person watching a worker wants at a glance, from the worker's own memory
(no Prometheus needed): per model, version and cohort, the latest closed
window's latency percentiles, error rate and traffic; per feature, the latest
skew or drift statistic against its calibrated threshold; what fires now, with
its evidence; each rollout's verdict and traffic share; dead letters by
reason; and the worker's own lag. The page is served on the worker's web port
(loopback by default, ``worker.web_host``); it only reads.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from detectors.contract import rfc3339

__all__ = ["snapshot", "History", "PAGE"]

HISTORY_POINTS = 30  # closed windows kept per series for the page's charts
HISTORY_SERIES = 500  # series charted; beyond, the least recently updated is dropped


class History:
    """The last ``HISTORY_POINTS`` closed windows of each series, for the page's charts
    over time: fed with each ``ml.stats`` record the worker publishes, in memory only
    (a restarted worker starts a new chart), and bounded: at most ``points`` per
    series, at most ``series`` series (the least recently updated one goes first:
    about 5 KB each, so 2.5 MB, and as much in each push to the page), and a retired
    model's series go with it (:meth:`forget`).

    >>> h = History(points=2)
    >>> for minute in (1, 2, 3):
    ...     h.add({"model": "m", "version": "v1", "cohort": "stable", "count": 600,
    ...            "window": {"start": f"2026-12-03T10:0{minute - 1}:00Z",
    ...                       "end": f"2026-12-03T10:0{minute}:00Z"}, "error_rate": 0.0,
    ...            "latency_ms": {"p50": 20.0, "p95": 40.0, "p99": 50.0, "max": 60.0}})
    >>> [(p["end"] % 3600, p["rps"]) for p in h.of("m", "v1", "stable")]
    [(120.0, 10.0), (180.0, 10.0)]
    >>> h.forget(["m"]); h.of("m", "v1", "stable")
    []
    >>> h = History(series=1)
    >>> for model in ("a", "b"):
    ...     h.add({"model": model, "version": "v1", "count": 1, "error_rate": 0.0,
    ...            "window": {"start": 0, "end": 60}, "latency_ms": None})
    >>> len(h.of("a", "v1", "")), len(h.of("b", "v1", ""))
    (0, 1)
    """

    def __init__(self, points: int = HISTORY_POINTS, series: int = HISTORY_SERIES) -> None:
        self.points, self.max_series = points, series
        self._series: OrderedDict[tuple[str, str, str], deque[dict[str, Any]]] = OrderedDict()

    def add(self, rec: Mapping[str, Any]) -> None:
        """One ``ml.stats`` record (its window's bounds are RFC 3339 text)."""
        key = (str(rec["model"]), str(rec["version"]), str(rec.get("cohort", "")))
        window, lat = rec["window"], rec.get("latency_ms") or {}
        start, end = _epoch(window["start"]), _epoch(window["end"])
        points = self._series.pop(key, None) or deque(maxlen=self.points)
        self._series[key] = points  # the most recently updated last
        while len(self._series) > self.max_series:
            self._series.popitem(last=False)
        points.append({"end": end, "p50_ms": _num(lat.get("p50")),
                       "p95_ms": _num(lat.get("p95")), "p99_ms": _num(lat.get("p99")),
                       "error_rate": _num(rec.get("error_rate")),
                       "rps": _num(rec["count"] / max(end - start, 1e-9))})

    def of(self, model: str, version: str, cohort: str) -> list[dict[str, Any]]:
        return list(self._series.get((model, version, cohort), ()))

    def forget(self, models: Iterable[str]) -> None:
        gone = set(models)
        for key in [k for k in self._series if k[0] in gone]:
            del self._series[key]


def _epoch(t: str | float) -> float:
    """Seconds since the epoch of an RFC 3339 time (or a number)."""
    if isinstance(t, int | float):
        return float(t)
    return datetime.fromisoformat(t).timestamp()


def _num(x: float | None) -> float | None:
    return round(x, 6) if isinstance(x, (int, float)) and math.isfinite(x) else None


def snapshot(monitors: Mapping[str, Any], verdicts: Any, deadletters: Mapping[str, float],
             lag: Mapping[str, float], books: Iterable[Any] = (),
             now: float | None = None,
             triggers: Mapping[str, dict[str, Any]] | None = None,
             history: History | None = None) -> dict[str, Any]:
    """The dashboard's state: plain JSON, bounded by the worker's caps (models,
    series, features, alerts). ``triggers``: the trigger event of each firing key
    this worker published, whose evidence (the moved bins, the window) is shown
    rather than the latest signal's. ``history``: each series' recent windows, drawn
    over time by the page.

    >>> snapshot({}, None, {"late": 2.0}, {})["deadletters"]
    {'late': 2}
    """
    now = time.time() if now is None else now
    series, features, firing = [], [], []
    for model, mon in sorted(monitors.items()):
        for (version, cohort), w in sorted(mon.latest.items()):
            span = max(w.end - w.start, 1e-9)
            series.append({"model": model, "version": version, "cohort": cohort,
                           "window_end": w.end, "count": w.count,
                           "p50_ms": _num(w.p50), "p95_ms": _num(w.p95), "p99_ms": _num(w.p99),
                           "error_rate": _num(w.error_rate), "rps": _num(w.count / span),
                           "history": history.of(model, version, cohort) if history else []})
        for (version, cohort, feature, check), r in sorted(mon.readings.items()):
            features.append({"model": model, "version": version, "cohort": cohort,
                             "feature": feature, "check": check, "statistic": r.statistic,
                             "value": _num(r.value), "threshold": _num(r.threshold),
                             "over": bool(r.value > r.threshold)})
        books = [*books, mon.book]
    for book in books:
        for key, lc in book.firing.items():
            sig = lc.last
            if sig is None:
                continue
            firing.append({"dedup_key": key, "class": sig.check,
                           "severity": lc.trigger_severity or sig.severity,
                           "summary": lc.trigger_summary or sig.summary,
                           "since": rfc3339(lc.since),
                           "evidence": ((triggers or {}).get(key, {}).get("payload", {})
                                        .get("custom_details") or sig.details)})
    rollouts = []
    if verdicts is not None:
        for model, version in sorted(verdicts._canary.items()):
            view = verdicts.get(model, version)
            if view is not None:
                rollouts.append({"model": model, "version": version, "verdict": view.verdict,
                                 "traffic_percent": view.traffic_percent,
                                 "command": (view.command or {}).get("command_id")})
    return {"at": now, "series": series, "features": features,
            "firing": sorted(firing, key=lambda a: str(a["dedup_key"])), "rollouts": rollouts,
            "deadletters": {k: int(v) for k, v in sorted(deadletters.items())},
            "lag": {k: int(v) for k, v in sorted(lag.items())}}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sentinelle</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40%}
td,th{padding:.25em .6em;border-bottom:1px solid #e4e4e4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:.7em;background:#4a90d9;vertical-align:middle}
.over .bar{background:#d9534f} .critical,.error{color:#b00} .warning{color:#a60}
.bar.ref{background:#999} .bar.srv{background:#d9534f} table.hist{min-width:0;margin:.2em 0} .muted{color:#888} pre{margin:0;font-size:12px;white-space:pre-wrap;word-break:break-all;max-width:60em}
</style></head><body>
<h1>Sentinelle</h1><div id="at" class="muted">connecting...</div>
<h2>Firing now</h2><div id="firing"></div>
<h2>Serving: latest window per model version</h2><div id="series"></div>
<h2>Drift and skew, per feature, against the calibrated threshold</h2><div id="features"></div>
<h2>Canary rollouts</h2><div id="rollouts"></div>
<h2>Dead letters by reason</h2><div id="deadletters"></div>
<h2>This worker's consumer lag (messages)</h2><div id="lag"></div>
<script>
"use strict";
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const num = (x, d = 1) => x == null ? "-" : Number(x).toFixed(d);
function table(rows, cols) {
  if (!rows.length) return '<span class="muted">none</span>';
  return "<table><tr>" + cols.map(c => "<th>" + esc(c[0]) + "</th>").join("") + "</tr>" +
    rows.map(r => "<tr" + (r.over ? ' class="over"' : "") + ">" +
      cols.map(c => "<td" + (c[2] ? ' class="n"' : "") + ">" + c[1](r) + "</td>").join("") +
      "</tr>").join("") + "</table>";
}
function hist(ev) {
  // reference vs serving share of the bins that moved most (skew, drift, data quality)
  // skew compares serving with the training reference; drift, recent with its baseline
  const moves = ((ev && ev.largest_moves) || []).map(m => ({bin: m.bin,
    reference: m.reference ?? m.baseline, serving: m.serving ?? m.recent,
    names: m.reference === undefined ? ["baseline", "recent"] : ["reference", "serving"]}));
  if (!moves.length) return "";
  const top = Math.max(...moves.map(m => Math.max(m.reference, m.serving)), 0.01);
  return '<table class="hist">' + moves.map(m =>
    "<tr><td>" + esc(m.bin) + '</td><td><span class="bar ref" style="width:' + (150 * m.reference / top) +
    'px"></span> ' + num(100 * m.reference) + " % " + m.names[0] + '<br><span class="bar srv" style="width:' +
    (150 * m.serving / top) + 'px"></span> ' + num(100 * m.serving) + " % " + m.names[1] + "</td></tr>").join("") + "</table>";
}
function spark(points, keys, colors) {
  // the series' recent windows as lines (one per key), oldest left; the top value labelled
  if (!points || points.length < 2) return '<span class="muted">-</span>';
  const w = 160, h = 34, vals = points.flatMap(p => keys.map(k => p[k]).filter(v => v != null));
  const top = Math.max(...vals, 1e-9), x = i => (i * (w - 2) / (points.length - 1) + 1).toFixed(1);
  const lines = keys.map((k, j) => '<polyline fill="none" stroke-width="1.4" stroke="' + colors[j] + '" points="' +
    points.map((p, i) => p[k] == null ? "" : x(i) + "," + (h - 2 - (h - 4) * p[k] / top).toFixed(1)).join(" ") + '"/>');
  return '<svg class="spark" width="' + w + '" height="' + h + '">' + lines.join("") +
    '</svg> <span class="muted">' + num(top, top < 1 ? 3 : 0) + "</span>";
}
function render(s) {
  // the page is redrawn at each push: what a person opened stays open
  const opened = new Set([...document.querySelectorAll("details[open]")].map(d => d.dataset.k));
  document.getElementById("at").textContent = "updated " + new Date(s.at * 1000).toLocaleTimeString();
  document.getElementById("firing").innerHTML = table(s.firing, [
    ["alert", a => esc(a.dedup_key)], ["severity", a => '<span class="' + esc(a.severity) + '">' + esc(a.severity) + "</span>"],
    ["summary", a => esc(a.summary)], ["since", a => esc(a.since)],
    ["evidence", a => hist(a.evidence) + '<details data-k="' + esc(a.dedup_key) + '"><summary>all of it</summary><pre>' +
      esc(JSON.stringify(a.evidence, null, 1)) + "</pre></details>"]]);
  document.getElementById("series").innerHTML = table(s.series, [
    ["model", r => esc(r.model)], ["version", r => esc(r.version)], ["cohort", r => esc(r.cohort)],
    ["events", r => r.count, 1], ["req/s", r => num(r.rps), 1], ["errors", r => num(100 * r.error_rate) + " %", 1],
    ["p50 ms", r => num(r.p50_ms), 1], ["p95 ms", r => num(r.p95_ms), 1], ["p99 ms", r => num(r.p99_ms), 1],
    ["latency p50 / p95 / p99 over time", r => spark(r.history, ["p50_ms", "p95_ms", "p99_ms"], ["#9bc", "#48c", "#d9534f"])],
    ["errors over time", r => spark(r.history, ["error_rate"], ["#b00"])],
    ["req/s over time", r => spark(r.history, ["rps"], ["#4a90d9"])]]);
  document.getElementById("features").innerHTML = table(s.features, [
    ["model", r => esc(r.model + " " + r.version)], ["feature", r => esc(r.feature)], ["check", r => esc(r.check)],
    ["statistic", r => esc(r.statistic) + " " + num(r.value, 3), 1], ["threshold", r => num(r.threshold, 3), 1],
    ["", r => '<span class="bar" style="width:' + Math.min(200, 100 * (r.value || 0) / (r.threshold || 1)) + 'px"></span>']]);
  document.getElementById("rollouts").innerHTML = table(s.rollouts, [
    ["model", r => esc(r.model)], ["canary", r => esc(r.version)], ["verdict", r => esc(r.verdict)],
    ["traffic %", r => num(r.traffic_percent, 0), 1], ["latest command", r => esc(r.command)]]);
  const kv = o => table(Object.entries(o).map(([k, v]) => ({k, v})), [["", r => esc(r.k)], ["", r => r.v, 1]]);
  document.getElementById("deadletters").innerHTML = kv(s.deadletters);
  document.getElementById("lag").innerHTML = kv(s.lag);
  document.querySelectorAll("details").forEach(d => { d.open = opened.has(d.dataset.k); });
}
// Server-sent events: the worker pushes the state each second it changes; the
// browser reconnects by itself when the worker restarts.
const events = new EventSource("api/events");
events.onmessage = e => render(JSON.parse(e.data));
events.onerror = () => {
  document.getElementById("at").textContent = "worker unreachable; reconnecting ...";
};
</script></body></html>
"""
