"""Quality of Sentinelle's metric anomaly detector against two simple baselines.

Runs, on the same labelled synthetic series (``bench/_series.py``: two weeks
at 5 min of CPU %, latency, request counts, disk writes with a nightly job,
and a wandering temperature; spikes, dips, level shifts, trends and noise
bursts, 2 or 3 per series, after the second day; fixed seeds), three
detectors:

- ``sentinelle``: :class:`detectors.anomaly.MetricAnomalyDetector` with its
  default parameters, fed each series whole through ``update``, its signals
  through the alert manager (:class:`alerting.manager.AlertManager`, whose
  ``metric_anomaly`` class rule makes its alerts);
- ``rolling z>4``: ``|x - mean| / sd`` over the trailing day (288 points,
  the current point excluded) above 4;
- ``static ±4sd``: outside mean ± 4 sd of the warm-up points.

The baselines' per-point flags, after the same warm-up, go through the same
alert manager as Sentinelle's signals (its ``metric_anomaly`` rule: keep firing
30 min after the last anomalous point, at most one alert an hour), so every
detector's alerts are counted alike. Scoring, NAB-like: an anomaly is
*detected* when an alert starts inside its window (from its first point to
the end of the window ``bench/_series.py`` gives each kind); an alert outside
every window is a *false positive*. Reported per detector: precision (alerts in
a window / alerts), recall (windows detected / windows), F1, median detection
delay (points and minutes from the anomaly's first point to the first alert in
its window), false positives per series-day (after the warm-up), a NAB-like
score (NAB's standard profile: a detection earns its scaled sigmoid, 1 at the
window's start and 0 at its end, a miss costs 1, a false positive 0.11;
normalised so that detecting nothing is 0 and detecting everything at once is
100), and the time per point (the detector alone, without the alert manager); then
recall per anomaly kind, and detections and
false positives per profile.

Then, when the labelled real series of ``--nab`` are there (the 21 NAB files of
``/work/shared/anomaly-dev`` by default), the NAB standard-profile score on
them: each file replayed in order, fresh state per file, through
:class:`streams.core.operations.MetricState` (the worker's own path: the
detector built from the settings, its signals through the series' alert
manager) in micro-batches of 12 points; the triggers go to an ``alerts.jsonl``
(``--alerts-out``) and are scored with the folder's ``score.py``. Beside it, in
the same run, a plain River baseline: :class:`river.anomaly.GaussianScorer` on
a day's window behind a :class:`river.anomaly.QuantileFilter` (q 0.999), its
flags after the same warm-up through the same alert manager rule. Last, Sentinelle's
triggers by the signal that fired (point, shift, volatility, record, level): the
windows each detected first with their credit, its false positives with their cost.

Run it::

    .venv/bin/python bench/anomaly_quality.py [--series 40] [--seed 7] [--plot alerts.png]
        [--nab /work/shared/anomaly-dev] [--alerts-out alerts.jsonl]

About 15 s for the default 40 series (160,000 points; Sentinelle takes nearly
all of it). Progress goes to stderr, the report to stdout. ``--plot`` draws one
example series of each profile with its anomaly windows and every detector's
alerts, when matplotlib is installed (it is not a dependency of Sentinelle).
Nothing is asserted: it is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC

import _series as syn
import numpy as np

from alerting.manager import AlertManager, ManagerSettings
from detectors.anomaly import MetricAnomalyDetector
from detectors.base import Signal

T0 = time.perf_counter()
WARMUP = MetricAnomalyDetector("bench", "x").warmup_points
RULE = ManagerSettings().per_class["metric_anomaly"]
COOLDOWN_S = RULE.cooldown_s
RESOLVE_S = RULE.keep_firing_for_s
ROLLING_WINDOW = 288   # the rolling z-score's trailing window (a day at 5 min)
ROLLING_Z = 4.0
STATIC_K = 4.0
A_FP = 0.11            # NAB's standard profile: a false positive costs 0.11 of a detection


def progress(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What one detector did on one series."""

    alerts: list[float] = field(default_factory=list)   # trigger times
    alert_index: list[int] = field(default_factory=list)
    seconds: float = 0.0
    points: int = 0


def triggers(ts: np.ndarray, signals: list[Signal]) -> tuple[list[float], list[int]]:
    """The alerts (trigger times, and indices) the alert manager makes of ``signals``."""
    manager = AlertManager()
    times, idx = [], []
    for sig in signals:
        if any(e["event_action"] == "trigger" for e in manager.process([sig])):
            times.append(sig.timestamp)
            idx.append(int(np.searchsorted(ts, sig.timestamp)))
    return times, idx


def apply_policy(ts: np.ndarray, flags: np.ndarray) -> tuple[list[float], list[int]]:
    """Triggers of per-point anomaly flags: after the warm-up, through the alert manager."""
    signals = [Signal("metric_anomaly", "metric_anomaly:bench:x", bool(f), "warning", "", t,
                      "bench") for t, f in zip(ts.tolist()[WARMUP:], flags.tolist()[WARMUP:],
                                               strict=True)]
    return triggers(ts, signals)


def run_sentinelle(s: syn.Series) -> Outcome:
    det = MetricAnomalyDetector(s.profile, s.name)
    t = time.perf_counter()
    signals = det.update({"ts": s.ts, "value": s.values})
    seconds = time.perf_counter() - t
    alerts, idx = triggers(s.ts, signals)
    return Outcome(alerts, idx, seconds=seconds, points=s.ts.size)


def run_rolling_z(s: syn.Series) -> Outcome:
    t = time.perf_counter()
    x = s.values
    w = ROLLING_WINDOW
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    i = np.arange(x.size)
    lo = np.maximum(0, i - w)
    cnt = i - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (c1[i] - c1[lo]) / cnt
        var = (c2[i] - c2[lo]) / cnt - mean ** 2
        z = np.abs(x - mean) / np.sqrt(np.maximum(var, 1e-12))
    flags = (cnt >= 30) & (z > ROLLING_Z)
    seconds = time.perf_counter() - t
    alerts, idx = apply_policy(s.ts, flags)
    return Outcome(alerts, idx, seconds, x.size)


def run_static(s: syn.Series) -> Outcome:
    t = time.perf_counter()
    x = s.values
    mu, sd = float(np.mean(x[:WARMUP])), float(np.std(x[:WARMUP]))
    flags = np.abs(x - mu) > STATIC_K * max(sd, 1e-12)
    seconds = time.perf_counter() - t
    alerts, idx = apply_policy(s.ts, flags)
    return Outcome(alerts, idx, seconds, x.size)


DETECTORS: dict[str, Callable[[syn.Series], Outcome]] = {
    "sentinelle": run_sentinelle,
    f"rolling z>{ROLLING_Z:g}": run_rolling_z,
    f"static ±{STATIC_K:g}sd": run_static,
}


@dataclass
class Tally:
    alerts: int = 0
    true_alerts: int = 0
    windows: int = 0
    detected: int = 0
    delays_pts: list[int] = field(default_factory=list)
    delays_min: list[float] = field(default_factory=list)
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [detected, total]
    series_days: float = 0.0
    seconds: float = 0.0
    points: int = 0
    nab: float = 0.0


def nab_weight(t: float, start: float, end: float) -> float:
    """NAB's scaled sigmoid: ~1 for a detection at the window's start, 0 at its end."""
    y = (t - end) / max(end - start, 1.0)
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def tally(series: list[syn.Series], outcomes: list[Outcome]) -> Tally:
    tl = Tally()
    for s, o in zip(series, outcomes, strict=True):
        tl.seconds += o.seconds
        tl.points += o.points
        tl.series_days += (s.ts[-1] - s.ts[min(WARMUP, s.ts.size - 1)]) / 86400.0
        tl.alerts += len(o.alerts)
        inside = [any(a.start <= t <= a.end for a in s.anomalies) for t in o.alerts]
        tl.true_alerts += sum(inside)
        tl.nab -= A_FP * (len(inside) - sum(inside))
        for a in s.anomalies:
            tl.windows += 1
            k = tl.by_kind.setdefault(a.kind, [0, 0])
            k[1] += 1
            hits = [(t, i) for t, i in zip(o.alerts, o.alert_index, strict=True)
                    if a.start <= t <= a.end]
            if hits:
                tl.detected += 1
                k[0] += 1
                t, i = hits[0]
                tl.delays_pts.append(i - a.start_index)
                tl.delays_min.append((t - a.start) / 60.0)
                tl.nab += nab_weight(t, a.start, a.end)
            else:
                tl.nab -= 1.0
    return tl


def report(args: argparse.Namespace, series: list[syn.Series], tallies: dict[str, Tally]) -> None:
    n_pts = sum(s.ts.size for s in series)
    print(f"{len(series)} series (seed {args.seed}), {n_pts:,} points, "
          f"{sum(len(s.anomalies) for s in series)} anomalies; "
          f"alert policy for all: warm-up {WARMUP} points, cooldown {COOLDOWN_S:g} s, "
          f"resolve after {RESOLVE_S:g} s normal")
    print()
    head = ["detector", "precision", "recall", "F1", "delay (pts)", "delay (min)",
            "FP/series-day", "NAB-like", "µs/point"]
    rows = []
    perfect = sum(nab_weight(a.start, a.start, a.end) for s in series for a in s.anomalies)
    null = -float(sum(len(s.anomalies) for s in series))
    for name, tl in tallies.items():
        prec = tl.true_alerts / tl.alerts if tl.alerts else float("nan")
        rec = tl.detected / tl.windows if tl.windows else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if tl.alerts and prec + rec > 0 else float("nan")
        dp = statistics.median(tl.delays_pts) if tl.delays_pts else float("nan")
        dm = statistics.median(tl.delays_min) if tl.delays_min else float("nan")
        fp = (tl.alerts - tl.true_alerts) / tl.series_days
        nab = 100.0 * (tl.nab - null) / (perfect - null)
        rows.append([name, f"{prec:.3f}", f"{rec:.3f}", f"{f1:.3f}", f"{dp:g}", f"{dm:.0f}",
                     f"{fp:.3f}", f"{nab:.1f}", f"{1e6 * tl.seconds / tl.points:.1f}"])
    print_table(head, rows)
    print()
    kinds = sorted({k for tl in tallies.values() for k in tl.by_kind})
    rows = []
    for name, tl in tallies.items():
        rows.append([name, *(f"{tl.by_kind[k][0] / tl.by_kind[k][1]:.2f} "
                             f"({tl.by_kind[k][0]}/{tl.by_kind[k][1]})"
                             if k in tl.by_kind else "-" for k in kinds)])
    print("recall per anomaly kind")
    print_table(["detector", *kinds], rows)
    print()
    rows = []
    for prof in syn.PROFILES:
        idx = [i for i, s in enumerate(series) if s.profile == prof]
        cells = []
        for name in tallies:
            out = OUTCOMES[name]
            sub = tally([series[i] for i in idx], [out[i] for i in idx])
            fp = sub.alerts - sub.true_alerts
            cells.append(f"{sub.detected}/{sub.windows} det, {fp} FP")
        rows.append([prof, *cells])
    print("per profile")
    print_table(["profile", *tallies], rows)


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


OUTCOMES: dict[str, list[Outcome]] = {}


def plot_alerts(series: list[syn.Series], path: str) -> None:
    """One example series per profile: values, anomaly windows, each detector's alerts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [next(i for i, s in enumerate(series) if s.profile == p)
             for p in syn.PROFILES if any(s.profile == p for s in series)]
    fig, axes = plt.subplots(len(picks), 1, figsize=(14, 2.6 * len(picks)), squeeze=False)
    markers = ("v", "o", "s")
    for ax, i in zip(axes[:, 0], picks, strict=True):
        s = series[i]
        days = (s.ts - s.ts[0]) / 86400.0
        ax.plot(days, s.values, lw=0.5, color="0.3")
        for a in s.anomalies:
            ax.axvspan((a.start - s.ts[0]) / 86400.0, (a.end - s.ts[0]) / 86400.0,
                       color="red", alpha=0.2)
            ax.text((a.start - s.ts[0]) / 86400.0, ax.get_ylim()[1], a.kind, fontsize=7,
                    va="top")
        top = float(np.quantile(s.values, 0.999))
        for k, (name, outs) in enumerate(OUTCOMES.items()):
            xs = [(t - s.ts[0]) / 86400.0 for t in outs[i].alerts]
            ax.plot(xs, [top * (1.02 + 0.04 * k)] * len(xs), markers[k % 3], ms=4,
                    label=name, linestyle="none")
        ax.set_title(s.name, fontsize=9)
        ax.axvline(days[min(WARMUP, days.size - 1)], color="grey", lw=0.8, ls=":")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("days")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NAB_DIR = "/work/shared/anomaly-dev"
NAB_CHUNK = 12          # points per micro-batch in the replay (an hour at 5 min)
RIVER_Q = 0.999         # the River baseline's quantile filter


def _nab_file(root: str, rel: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    from datetime import datetime

    stamps, ts, xs = [], [], []
    with open(os.path.join(root, "data", rel), newline="") as f:
        rows = csv.reader(f)
        next(rows)
        for t, v in rows:
            stamps.append(t)
            ts.append(datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                      .timestamp())
            xs.append(float(v))
    return stamps, np.asarray(ts), np.asarray(xs)


def nab_sentinelle(rel: str, ts: np.ndarray, xs: np.ndarray) -> tuple[list[int], float]:
    """Trigger rows of the worker's path (MetricState: detector + alert manager), seconds."""
    from datetime import datetime

    from streams.config import Settings
    from streams.core.operations import MetricState

    st = MetricState("nab", Settings(), 0, rel)
    rows, seconds = [], 0.0
    by = NAB_SIGNALS.setdefault(rel, {})
    for i in range(0, ts.size, NAB_CHUNK):
        t = time.perf_counter()
        out = st.ingest(ts[i:i + NAB_CHUNK], xs[i:i + NAB_CHUNK], float(ts[i]))
        seconds += time.perf_counter() - t
        for a in out:
            if a["event_action"] == "trigger":
                at = datetime.fromisoformat(a["payload"]["timestamp"].replace("Z", "+00:00"))
                rows.append(int(np.searchsorted(ts, at.timestamp())))
                by[rows[-1]] = a["payload"]["custom_details"]["detected_by"]
    return rows, seconds


def nab_river(rel: str, ts: np.ndarray, xs: np.ndarray) -> tuple[list[int], float]:
    """Trigger rows of River's GaussianScorer behind a QuantileFilter, same alert rule."""
    from river import anomaly

    t = time.perf_counter()
    det = anomaly.QuantileFilter(anomaly.GaussianScorer(window_size=ROLLING_WINDOW,
                                                        grace_period=100), q=RIVER_Q)
    flags = np.zeros(xs.size, dtype=bool)
    for i, x in enumerate(xs.tolist()):
        score = det.score_one(None, x)
        flags[i] = bool(det.classify(score))
        det.learn_one(None, x)
    seconds = time.perf_counter() - t
    _, idx = apply_policy(ts, flags)
    return idx, seconds


NAB_SIGNALS: dict[str, dict[int, str]] = {}   # file -> trigger row -> the signal that fired


def signal_table(layouts: list, dets: dict[str, list[int]], cost: dict[str, float]) -> None:
    """Per signal: the windows it detected first (and their credit), its false positives
    (and their cost), as NAB counts them (after the probation, first detection per window)."""
    tally: dict[str, list[float]] = {}
    for lay in layouts:
        best: dict[int, tuple[float, str]] = {}
        for i in sorted(set(dets[lay.rel])):
            if not lay.probation <= i < lay.n:
                continue
            sig = NAB_SIGNALS.get(lay.rel, {}).get(i, "?")
            k, v = lay.credit(i, cost)
            if k < 0:
                t = tally.setdefault(sig, [0, 0.0, 0, 0.0])
                t[2] += 1
                t[3] += v
            elif k not in best or v > best[k][0]:
                best[k] = (v, sig)
        for v, sig in best.values():
            t = tally.setdefault(sig, [0, 0.0, 0, 0.0])
            t[0] += 1
            t[1] += v
    rows = [[sig, f"{int(t[0])}", f"{t[1]:+.2f}", f"{int(t[2])}", f"{t[3]:+.2f}"]
            for sig, t in sorted(tally.items())]
    print("sentinelle's triggers by the signal that fired (detected_by)")
    print_table(["signal", "windows first", "credit", "false positives", "cost"], rows)


def run_nab(root: str, alerts_out: str | None) -> None:
    """NAB standard score of Sentinelle and of the River baseline on ``root``'s files."""
    sys.path.insert(0, root)
    import score as nab  # the folder's own scorer (standard library only)

    windows = nab.load_windows(os.path.join(root, "labels", "combined_windows.json"))
    cost = nab.load_profiles(root)["standard"]
    runs: dict[str, tuple[dict[str, list[int]], float, int]] = {}
    layouts = []
    files = {rel: _nab_file(root, rel) for rel in sorted(windows)}
    for rel, (stamps, _, _) in files.items():
        layouts.append(nab.FileLayout.build(rel, [nab.parse_timestamp(t) for t in stamps],
                                            windows[rel]))
    for name, run in (("sentinelle", nab_sentinelle), (f"river gauss q{RIVER_Q:g}", nab_river)):
        dets, seconds, points = {}, 0.0, 0
        for rel, (_, ts, xs) in files.items():
            dets[rel], sec = run(rel, ts, xs)
            seconds += sec
            points += ts.size
        runs[name] = (dets, seconds, points)
        progress(f"NAB replay: {name} done")
    if alerts_out:
        with open(alerts_out, "w") as f:
            for rel, rows in runs["sentinelle"][0].items():
                for r in rows:
                    f.write(json.dumps({"file": rel, "timestamp": files[rel][0][r]}) + "\n")
    scored = {name: nab.score_set(layouts, d, "standard", cost) for name, (d, _, _) in
              runs.items()}
    print()
    print(f"NAB standard profile on {root} ({len(layouts)} files, "
          f"{sum(lay.counted_windows for lay in layouts)} windows)")
    rows = []
    names = list(scored)
    for k, lay in enumerate(layouts):
        rows.append([lay.rel, *(f"{scored[n].files[k].raw:+.2f} "
                                f"({scored[n].files[k].tp_windows}/{scored[n].files[k].windows}"
                                f", {scored[n].files[k].fp_detections} FP)" for n in names)])
    print_table(["file", *(f"{n}: raw (windows, FP)" for n in names)], rows)
    print()
    rows = [[n, f"{scored[n].normalized:.1f}", str(sum(len(v) for v in runs[n][0].values())),
             f"{1e6 * runs[n][1] / runs[n][2]:.1f}"] for n in names]
    print_table(["detector", "NAB standard", "alerts", "µs/point"], rows)
    print()
    signal_table(layouts, runs["sentinelle"][0], cost)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--series", type=int, default=40, help="number of synthetic series")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic set")
    parser.add_argument("--plot", metavar="PNG", help="example series with alerts")
    parser.add_argument("--nab", metavar="DIR", default=NAB_DIR,
                        help="labelled NAB series (anomaly-dev layout); '' to skip")
    parser.add_argument("--alerts-out", metavar="JSONL",
                        help="write Sentinelle's NAB triggers here (score.py alerts input)")
    args = parser.parse_args(argv)
    progress(f"generating {args.series} series ...")
    series = syn.make_set(args.series, args.seed)
    tallies = {}
    for name, run in DETECTORS.items():
        outs = []
        for i, s in enumerate(series):
            outs.append(run(s))
            if (i + 1) % 10 == 0 or i + 1 == len(series):
                progress(f"{name}: {i + 1}/{len(series)} series")
        OUTCOMES[name] = outs
        tallies[name] = tally(series, outs)
    report(args, series, tallies)
    if args.nab and os.path.exists(os.path.join(args.nab, "score.py")):
        run_nab(args.nab, args.alerts_out)
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            print("plot skipped: matplotlib is not installed")
        else:
            plot_alerts(series, args.plot)
            print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
