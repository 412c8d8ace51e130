"""The shipped Grafana dashboard's panels, drawn from a real Prometheus without Grafana.

Grafana cannot run where Sentinelle is developed (no Docker, no Grafana package),
but Prometheus can (Debian's ``prometheus`` package). So the README's picture of
the dashboard is made the honest way: ``python -m streams.tools.panels`` runs
``sentinelle demo``, points a real Prometheus at the demo worker's ``/metrics``,
and, when the demo ends, asks Prometheus every query of
``deploy/grafana/dashboards/sentinelle.json`` over the run (``$model`` = all),
drawing each panel where its ``gridPos`` puts it, with its title and its legend
format, in Grafana's dark colours (matplotlib: ``pip install matplotlib``; it is
not a dependency of Sentinelle). Time series panels are lines; table panels are
the instant values at the end.

The same :class:`LocalPrometheus` serves ``tests/test_dashboard_prometheus_kafka.py``,
which checks that every query of the dashboard is PromQL that Prometheus accepts and
that the main ones return data from a real worker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from streams.tools.broker import free_port
from streams.tools.processes import stop_process

__all__ = ["LocalPrometheus", "Panel", "panels", "legend", "render"]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sentinelle.json"
LEGEND_MAX = 12  # legend entries drawn per panel
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
           "#FADE2A", "#37872D", "#C4162A", "#1F60C4", "#8F3BB8"]


class LocalPrometheus:
    """A Prometheus server (the ``prometheus`` binary on PATH) scraping ``targets``
    every ``interval_s``, with its data in a temporary folder, on a free loopback port."""

    def __init__(self, targets: list[str], interval_s: float = 2.0,
                 job: str = "sentinelle-worker") -> None:
        self.targets, self.interval_s, self.job = targets, interval_s, job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> LocalPrometheus:
        exe = self.binary()
        if exe is None:
            raise RuntimeError("no `prometheus` on PATH (Debian: apt-get install prometheus)")
        self._dir = Path(tempfile.mkdtemp(prefix="sentinelle-prometheus-"))
        config = {"global": {"scrape_interval": f"{self.interval_s:g}s",
                             "evaluation_interval": f"{self.interval_s:g}s"},
                  "scrape_configs": [{"job_name": self.job,
                                      "static_configs": [{"targets": self.targets}]}]}
        (self._dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self._proc = subprocess.Popen(
            [exe, f"--config.file={self._dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self._dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(self._dir / "prometheus.log").open("wb"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {timeout_s} s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self._dir / "prometheus.log" if self._dir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        stop_process(self._proc, grace_s=20)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._proc, self._dir = None, None

    def api(self, path: str, **params: Any) -> Any:
        """``/api/v1/<path>``'s ``data``; a query Prometheus refuses raises ValueError
        with Prometheus's own error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return list(self.api("query", **params)["result"])

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end,
                             step=step)["result"])

    def scraped(self) -> bool:
        """Every target scraped at least once, and up."""
        try:
            up = self.query(f'up{{job="{self.job}"}}')
        except (OSError, ValueError):
            return False
        return len(up) == len(self.targets) and all(r["value"][1] == "1" for r in up)


@dataclass
class Panel:
    title: str
    kind: str                             # "timeseries", "table" or "row"
    grid: tuple[int, int, int, int]       # x, y, w, h in Grafana's 24-column grid
    targets: list[tuple[str, str]]        # (expr, legend format)


def panels(dashboard: dict[str, Any], model: str = ".*") -> list[Panel]:
    """The dashboard's panels, ``$model`` replaced by ``model`` (a regex, "all": ``.*``)."""
    out = []
    for p in dashboard["panels"]:
        g = p.get("gridPos", {})
        targets = [(t["expr"].replace("$model", model), t.get("legendFormat", ""))
                   for t in p.get("targets", []) if t.get("expr")]
        out.append(Panel(p.get("title", ""), p.get("type", ""),
                         (g.get("x", 0), g.get("y", 0), g.get("w", 24), g.get("h", 8)), targets))
    return out


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label value.

    >>> legend("{{model}} {{version}} p{{quantile}}", {"model": "ranker", "version": "r6",
    ...                                                 "quantile": "0.99"})
    'ranker r6 p0.99'
    >>> legend("", {"__name__": "up", "job": "w"})
    '{job="w"}'
    """
    if not fmt:
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"
    return re.sub(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}",
                  lambda m: labels.get(m.group(1), ""), fmt).strip()


def render(dashboard: dict[str, Any], prom: LocalPrometheus, start: float, end: float,
           path: Path, step: float = 2.0) -> dict[str, int]:
    """Draw every panel over ``[start, end]`` into ``path`` (PNG); the number of series
    each panel got, by title."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    all_panels = panels(dashboard)
    rows = max(p.grid[1] + p.grid[3] for p in all_panels)
    unit = 0.34  # inches per grid row
    fig = plt.figure(figsize=(18, rows * unit), facecolor="#111217")
    counts: dict[str, int] = {}
    for p in all_panels:
        x, y, w, h = p.grid
        left, width = x / 24 + 0.03 * w / 24, w / 24 * 0.95
        # a grid row's room for the tick labels below and the title above
        bottom, height = 1 - (y + h - 0.8) / rows, (h - 1.9) / rows
        if p.kind == "row":
            fig.text(left, 1 - (y + 0.7) / rows, p.title, color="#ccccdc", fontsize=11,
                     fontweight="bold")
            continue
        ax = fig.add_axes((left, bottom, width, height), facecolor="#181b1f")
        ax.set_title(p.title, color="#ccccdc", fontsize=9, loc="left")
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        n = 0
        if p.kind == "table":
            n = _table(ax, p, prom, start, end, step)
        else:
            drawn = []
            for expr, fmt in p.targets:
                for series in prom.query_range(expr, start, end, step):
                    ts = mdates.date2num([datetime.fromtimestamp(float(t), tz=UTC)
                                          for t, _ in series["values"]])
                    vs = [float(v) for _, v in series["values"]]
                    line, = ax.plot(ts, vs, lw=1.3, color=PALETTE[n % len(PALETTE)],
                                    label=legend(fmt, series["metric"]))
                    drawn.append((max(vs, default=0.0), line))
                    n += 1
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            ax.grid(color="#2c3235", lw=0.6)
            if n:
                # Grafana scrolls a long legend; a picture names the highest series
                shown = [line for _, line in sorted(drawn, key=lambda d: -d[0])[:LEGEND_MAX]]
                labels = [str(line.get_label()) for line in shown]
                if n > LEGEND_MAX:
                    labels[-1] = f"... and {n - LEGEND_MAX + 1} more"
                ax.legend(shown, labels, fontsize=6, loc="upper left", framealpha=0.5,
                          facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#ccccdc",
                          ncols=2 if len(shown) > 6 else 1)
            else:
                ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
                        transform=ax.transAxes)
        counts[p.title] = n
    fig.savefig(path, dpi=72, facecolor=fig.get_facecolor())
    plt.close(fig)
    return counts


def _table(ax: Any, p: Panel, prom: LocalPrometheus, start: float, end: float,
           step: float) -> int:
    """A table panel: one row per series of its first query (its labels), each query's
    last value over the run as a column (Grafana's "Last" reduction; the worker may be
    gone at ``end``)."""
    ax.set_xticks([])
    ax.set_yticks([])
    columns: list[dict[tuple[tuple[str, str], ...], str]] = []
    for expr, _ in p.targets:
        got = {}
        for r in prom.query_range(expr, start, end, step):
            key = tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__"))
            got[key] = f"{float(r['values'][-1][1]):.3g}"
        columns.append(got)
    keys = list(columns[0]) if columns else []
    if not keys:
        ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
                transform=ax.transAxes)
        return 0
    names = [k for k, _ in keys[0]]
    # a column is named by its legend, unless the legend is a template (Grafana's "Value")
    header = [*names, *[fmt if fmt and "{{" not in fmt else "value"
                        for _, fmt in p.targets][:len(columns)]]
    cells = [[v for _, v in key] + [c.get(key, "") for c in columns] for key in keys[:12]]
    table = ax.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    for cell in table.get_celld().values():
        cell.set_edgecolor("#2c3235")
        cell.set_facecolor("#181b1f")
        cell.get_text().set_color("#ccccdc")
    return len(keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "grafana.png")
    args = parser.parse_args(argv)
    demo = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "120"})
    port: list[int] = []
    found = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for raw in demo.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard", line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not found.wait(timeout=240):
        demo.kill()
        print("the demo never printed its dashboard address", file=sys.stderr)
        return 1
    with LocalPrometheus([f"127.0.0.1:{port[0]}"]) as prom:
        start = time.time()
        print(f"Prometheus on {prom.url} scrapes the demo worker on port {port[0]}")
        status = demo.wait()
        end = time.time()
        reader.join(timeout=10)
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        counts = render(dashboard, prom, start, end, args.out)
    print(f"demo exit status {status}; wrote {args.out}")
    for title, n in counts.items():
        print(f"  {n:3d} series  {title}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
