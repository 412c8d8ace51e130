"""Label-free accuracy estimates against the accuracy realized once labels arrive.

A binary classifier that is **overconfident** (its score is ``sigmoid(6x)``
where the truth is ``P(y = 1 | x) = sigmoid(2x)``) serves a population that
**shifts**: for ``--stable-hours`` hours ``x ~ N(0, 1.5)``, as in training,
then over ``--shift-hours`` hours the spread narrows to 0.35, moving mass into
the region where the model knows least (scores near 0.5 are rarer than the
truth warrants, so its confidence stays high). Labels arrive ``--delay-s``
(an hour) after their prediction. What a score means does not change
(covariate shift, no concept shift): the assumption under which an estimate
calibrated on the reference holds.

The reference (training data with the model's score and the label, 20,000
rows) goes through :func:`detectors.profile.build_profile` (as
``sentinelle profile build`` does) and
:meth:`streams.core.references.Reference.from_profile` (as the worker does);
the traffic goes through the worker's :class:`streams.core.labels.LabelTracker`
(one-minute micro-batches of predictions, then of the labels that arrived in
that minute), so the figures are those of the classes the worker runs:
:class:`~detectors.performance.ConfidenceEstimate` with the profile's
:class:`~detectors.performance.ScoreCalibration`, and
:class:`~detectors.performance.PerformanceCheck` on the labels. Estimate and
label windows are both ``--window`` predictions, so window *k* of the estimate
and window *k* of the labels cover the same predictions.

Per window it prints: the realized accuracy (known ``--delay-s`` later), the
calibrated estimate, the raw-confidence estimate (``mean(max(p, 1-p))``, the
same detector's ``raw_value``), their errors, and which alerts fired
(``E``: estimated, ``M``: measured); then the mean absolute error of each
estimate (overall, before and after the shift begins), when each alert first
fired, and a terminal chart (``--plot PATH`` writes a PNG instead, with
matplotlib when it is installed).

Run it::

    .venv/bin/python bench/cbpe.py [--seed 7] [--hours 8] [--rate 2] [--plot cbpe.png]

About 10 s on one core. Nothing is asserted: it prints figures.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from detectors.base import Signal
from detectors.profile import build_profile
from streams.config import Settings
from streams.core.labels import LabelTracker
from streams.core.references import Reference

T0 = 1_795_000_000.0
STEP_S = 60.0  # one micro-batch of predictions, then one of labels, per minute


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Scenario:
    hours: float = 8.0
    rate: float = 2.0             # predictions per second
    delay_s: float = 3600.0       # a label arrives this long after its prediction
    stable_hours: float = 2.0
    shift_hours: float = 4.0
    spread_before: float = 1.5
    spread_after: float = 0.35
    sharpness: float = 3.0        # score = sigmoid(sharpness * 2x): 3 = overconfident
    reference_rows: int = 20_000

    def spread(self, t: np.ndarray) -> np.ndarray:
        """The population's spread at ``t`` seconds into the run."""
        start, span = self.stable_hours * 3600, self.shift_hours * 3600
        w = np.clip((t - start) / span, 0.0, 1.0)
        return self.spread_before + w * (self.spread_after - self.spread_before)

    def draw(self, rng: np.random.Generator, spread: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = rng.normal(0.0, 1.0, spread.size) * spread
        y = (rng.random(x.size) < sigmoid(2 * x)).astype(int)
        return x, sigmoid(self.sharpness * 2 * x), y


@dataclass(frozen=True)
class Row:
    k: int                  # window number
    end_ts: float           # event time of the window's last prediction
    realized: float | None  # accuracy from the labels, once they arrived
    calibrated: float
    raw: float
    estimate_alert: bool
    measured_alert: bool
    labels_at: float | None


def run(sc: Scenario, window: int, seed: int) -> tuple[list[Row], Reference, LabelTracker]:
    rng = np.random.default_rng(seed)
    settings = Settings(
        labels={"window": window, "estimate_window": window,
                "join_ttl_s": sc.delay_s + 3600.0},
    )
    x, p, y = sc.draw(rng, np.full(sc.reference_rows, sc.spread_before))
    profile = build_profile(pl.LazyFrame({"x": x, "prediction": p, "label": y}), "scorer", "v1",
                            created_at=T0)
    ref = Reference.from_profile(profile, settings.skew, settings.drift.baseline_factor)
    tracker = LabelTracker("scorer", settings)

    def lookup(version: str) -> Reference | None:
        return ref if version == "v1" else None

    n = int(sc.hours * 3600 * sc.rate)
    t = np.sort(rng.uniform(0, sc.hours * 3600, n))
    _, p, y = sc.draw(rng, sc.spread(t))
    ts = T0 + t
    ids = [f"e{i}" for i in range(n)]
    estimates: list[Signal] = []
    measured: list[Signal] = []
    step = 0
    end = T0 + sc.hours * 3600 + sc.delay_s + STEP_S
    while T0 + step * STEP_S < end:
        lo, hi = T0 + step * STEP_S, T0 + (step + 1) * STEP_S
        a, b = np.searchsorted(ts, [lo, hi])
        if b > a:
            rows = slice(int(a), int(b))
            estimates += tracker.on_predictions(ids[rows], ts[rows], ["v1"] * (b - a),
                                                ["stable"] * (b - a), p[rows].tolist(), hi,
                                                lookup)
        a, b = np.searchsorted(ts + sc.delay_s, [lo, hi])
        if b > a:
            rows = slice(int(a), int(b))
            measured += tracker.on_labels(ids[rows], (ts[rows] + sc.delay_s).tolist(),
                                          y[rows].tolist(), lookup)
        step += 1
    accuracy = {round(s.timestamp - sc.delay_s, 3): s for s in measured
                if s.key.endswith(":accuracy")}
    out = []
    for k, s in enumerate(e for e in estimates if e.key.endswith("estimated_accuracy")):
        m = accuracy.get(round(s.timestamp, 3))
        out.append(Row(k, s.timestamp, m.details["value"] if m else None, s.details["value"],
                       s.details["raw_value"], s.active, bool(m and m.active),
                       m.timestamp if m else None))
    return out, ref, tracker


def _clock(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = int(round(ts - T0))
    return f"{s // 3600:d}h{s % 3600 // 60:02d}"


def report(rows: list[Row], sc: Scenario, ref: Reference, tracker: LabelTracker,
           window: int) -> dict[str, float]:
    cal = ref.score_calibration
    assert cal is not None
    print(f"reference: {cal.rows:,} labelled rows, accuracy {cal.accuracy:.3f}; expected from "
          f"calibrated scores {cal.expected_accuracy:.3f}, from raw confidence "
          f"{cal.raw_accuracy:.3f} ({len(cal.scores)} knots)")
    print(f"serving: {sc.rate:g} predictions/s for {sc.hours:g} h, labels {sc.delay_s:g} s "
          f"late, windows of {window:,} predictions; shift from {sc.stable_hours:g} h to "
          f"{sc.stable_hours + sc.shift_hours:g} h\n")
    print(f"{'window':>6} {'ends':>6} {'labels':>6} {'realized':>8} {'calibr.':>8} {'raw':>8} "
          f"{'err cal':>8} {'err raw':>8}  alerts")
    for r in rows:
        real = f"{r.realized:8.3f}" if r.realized is not None else f"{'-':>8}"
        ec = f"{r.calibrated - r.realized:+8.3f}" if r.realized is not None else f"{'-':>8}"
        er = f"{r.raw - r.realized:+8.3f}" if r.realized is not None else f"{'-':>8}"
        flags = ("E" if r.estimate_alert else ".") + ("M" if r.measured_alert else ".")
        print(f"{r.k:>6} {_clock(r.end_ts):>6} {_clock(r.labels_at) if r.labels_at else '-':>6} "
              f"{real} {r.calibrated:8.3f} {r.raw:8.3f} {ec} {er}  {flags}")
    shift_at = T0 + sc.stable_hours * 3600
    figures: dict[str, float] = {}
    print(f"\n{'mean absolute error vs realized':<34} {'calibrated':>10} {'raw':>8} {'windows':>8}")
    for name, pick in (("all windows", lambda r: True),
                       ("before the shift", lambda r: r.end_ts <= shift_at),
                       ("from the shift on", lambda r: r.end_ts > shift_at)):
        sel = [r for r in rows if r.realized is not None and pick(r)]
        if not sel:
            continue
        mae_c = float(np.mean([abs(r.calibrated - r.realized) for r in sel]))  # type: ignore[operator]
        mae_r = float(np.mean([abs(r.raw - r.realized) for r in sel]))  # type: ignore[operator]
        figures[f"{name}:calibrated"], figures[f"{name}:raw"] = mae_c, mae_r
        print(f"{name:<34} {mae_c:10.3f} {mae_r:8.3f} {len(sel):8d}")
    first_e = next((r.end_ts for r in rows if r.estimate_alert), None)
    first_m = next((r.labels_at for r in rows if r.measured_alert), None)
    print(f"\nfirst estimated alert (calibrated) at {_clock(first_e)} of event time; first "
          f"measured alert at {_clock(first_m)}, when its labels arrived")
    if first_e is not None and first_m is not None:
        print(f"the estimate warned {(first_m - first_e) / 60:.0f} min before the labels could")
    stats = tracker.stats()
    print(f"label join: {stats['matched']:,.0f} matched, {stats['unmatched']:,.0f} unmatched, "
          f"{stats['expired']:,.0f} expired")
    return figures


def chart(rows: list[Row], width: int = 90, height: int = 20) -> str:
    """Realized, calibrated and raw accuracy per window, as a terminal chart (plain text
    unless stdout is a terminal; plotext's figure is global: cleared after)."""
    import plotext

    hours = [(r.end_ts - T0) / 3600 for r in rows]
    known = [(h, r.realized) for h, r in zip(hours, rows, strict=True) if r.realized is not None]
    series = {"realized (labels)": known,
              "calibrated estimate": [(h, r.calibrated) for h, r in zip(hours, rows, strict=True)],
              "raw confidence": [(h, r.raw) for h, r in zip(hours, rows, strict=True)]}
    fig = plotext.figure
    fig.clear()
    try:
        fig.plot_size(width, height)
        for (label, points), marker in zip(series.items(), ("o", "x", "+"), strict=True):
            if points:
                fig.draw(fig.signal([h for h, _ in points], [v for _, v in points],
                                    marker=marker).lines().label(label))
        fig.legend(False)  # it would hide the first hours: the key is in the title
        fig.title("accuracy per window over hours of event time: o realized (labels), "
                  "x calibrated estimate, + raw confidence")
        text = str(fig.build())
    finally:
        fig.clear()
    return text if sys.stdout.isatty() else re.sub(r"\x1b\[[0-9;]*m", "", text)


def save_png(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [(r.end_ts - T0) / 3600 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    known = [(h, r.realized) for h, r in zip(hours, rows, strict=True) if r.realized is not None]
    ax.plot([h for h, _ in known], [v for _, v in known], "k-o", ms=3, label="realized (labels)")
    ax.plot(hours, [r.calibrated for r in rows], "s-", ms=3, label="calibrated estimate")
    ax.plot(hours, [r.raw for r in rows], "^--", ms=3, label="raw confidence")
    ax.set_xlabel("hours of event time (window end)")
    ax.set_ylabel("accuracy")
    ax.set_title("overconfident model under covariate shift, labels 1 h late", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=2.0, help="predictions per second")
    parser.add_argument("--delay-s", type=float, default=3600.0, help="label delay")
    parser.add_argument("--stable-hours", type=float, default=2.0)
    parser.add_argument("--shift-hours", type=float, default=4.0)
    parser.add_argument("--sharpness", type=float, default=3.0,
                        help="score = sigmoid(sharpness * 2x) with truth sigmoid(2x): "
                             "> 1 overconfident, 1 calibrated, < 1 underconfident")
    parser.add_argument("--window", type=int, default=2000, help="predictions per window")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    sc = Scenario(hours=args.hours, rate=args.rate, delay_s=args.delay_s,
                  stable_hours=args.stable_hours, shift_hours=args.shift_hours,
                  sharpness=args.sharpness)
    started = time.perf_counter()
    rows, ref, tracker = run(sc, args.window, args.seed)
    report(rows, sc, ref, tracker, args.window)
    if args.plot:
        try:
            save_png(rows, args.plot)
        except ImportError:
            print("--plot needs matplotlib, which is not installed", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    else:
        print()
        print(chart(rows))
    print(f"\n({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
