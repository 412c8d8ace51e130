"""Quality of Sentinelle's skew and drift checks: false alarms and detection delays.

Prints, for 12 synthetic features (8 numeric, 4 categorical), in one run:

- **false alarms per million events** on stationary streams, against the
  configured target (``1e6 / run_length``);
- **median detection delay** (events after the change until the first alert)
  for mean shifts of 0.25, 0.5 and 1 standard deviation (numeric features) and
  for the most frequent category's share moving up by 10 points (categorical);
- the same figures for Alibi Detect's ``CVMDriftOnline`` configured to the same
  expected run time (ERT), side by side, when Alibi Detect is available;
- events per second processed by each detector, with the ratio to Sentinelle's;
- next to each delay, the **information bound** ``ln(L) / KL(shifted ||
  reference)``, both laws binned on the profile's bins (1,000,000 draws each):
  the least mean delay any test with that false-alarm rate can have, per
  feature and as the median over the features.

Detectors measured, with their default (sequential) test: ``sentinelle skew``
(:class:`detectors.skew.SkewDetector`, CUSUMs against the training profile,
its 50,000 rows as the reference size) and ``sentinelle drift``
(:class:`detectors.drift.DriftDetector`, CUSUMs against a trailing baseline of
serving data, plus ADWIN on chunk means for numeric features), each fed as the
worker feeds them (values binned on the profile's bins with
:meth:`~detectors.profile.FeatureBins.bin_numeric` /
:meth:`~detectors.profile.FeatureBins.bin_categories`, then ``update``).

Run it::

    .venv/bin/python bench/drift_quality.py [--quick] [--plot delays.png]
        [--alibi-python PATH | --no-alibi]

About 2.5 minutes on 2 cores by default, 1.5 with ``--quick`` (shorter
streams, fewer repetitions: noisier figures). Alibi Detect's part sets the
pace (a minute of threshold configuration, then about 4,000 events/s); it runs
in a child process alongside Sentinelle's, which takes about 30 s (5 s with
``--quick``). Progress goes to stderr, one line per stage, the report to
stdout. Nothing is asserted: it is a script that prints figures, not a test.

**A false alarm** is an alert that starts on a stationary stream: a transition
of the detector's signals from inactive to active, which is what the alert
lifecycle (:class:`alerting.manager.AlertManager`) turns into one ``trigger``,
once per excursion however many windows it lasts. The raw share of active tests
is reported too. The target is the configured run length L: one false alarm
every L events per feature, so ``1e6 / L`` per million events. Sentinelle sets
each test's false-alarm probability to ``hop / L`` (a union bound: overlapping
windows make alerts rarer than tests), so active tests per million should be
close to the target and alerts at or below it. Events are counted from the
moment the detector can first test (2,000 events for skew, 10,000 for drift).

**Two configurations**, both with the default windows (2,000 events tested
every 500):

- ``default``: the configured run length, 60,480,000 events (one false alarm
  per feature per week at 100 events/s). That rate cannot be observed in a
  short run: the report gives the alarms observed (expected: about none) and
  the number of events simulated.
- ``short``: a run length of 20,000 events, where false alarms are frequent
  enough to count, and the one where Alibi Detect is compared. 20,000 rather
  than more because Alibi's ``CVMDriftOnline`` configures its thresholds by
  simulating at least ERT bootstrap streams (its ``quantile`` refuses fewer):
  about a minute here for ERT 20,000; the default 60,480,000 would need as many
  streams (the report prints the estimated time and memory), so Alibi is not
  configurable at Sentinelle's default and is marked n/a there.

**Detection delay.** Each run feeds a fresh detector stationary events until it
can test (its arming: 2,000 events for skew, 10,000 for drift, twice the
largest window for Alibi), then ``PRE_EVENTS`` = 2,000 more stationary events
(plus a random 0..499 for Sentinelle, so the change does not always fall on a
test boundary), then shifted events until the first active signal or ``CAP`` =
20,000 events. The delay is the number of events from the change to the event
whose test alerted (signals carry the event index as timestamp). A run that
alerts before the change had a false alarm: it is counted in the "alarms before
the change" row and left out of the median (2,000 pre-change events rather
than more keep such runs rare at the short run length). A run not detected
within the cap counts as longer than the cap (a median beyond it prints as
"> cap"). Each cell shows the median and (detected / runs left). Sentinelle's
default and short configurations see the same streams; skew and drift see
different ones.

**Alibi Detect** (``alibi_detect.cd.CVMDriftOnline``, univariate, one detector
per numeric feature): ``x_ref`` = the first ``ALIBI_REF`` = 500 rows of the same
training data Sentinelle's profile is built from, ``window_sizes=[200]``, ``ert``
= the short run length, ``n_bootstraps`` = just over the ERT (the least its
configuration accepts; Alibi's docs advise ten times more, which would be ten
times slower). These are smaller than Sentinelle's 2,000-event window because
the configuration cost grows as ``n_bootstraps * (x_ref + 2 * window)**2``
(about 0.6 s per bootstrap stream with 2,000 and 2,000). The thresholds do not
depend on the reference values (the statistic is rank based; Alibi simulates
Gaussian streams), so they are configured once and shared by the 8 detectors.
``predict`` takes one instance at a time, so Alibi runs on shorter stationary
streams and fewer repetitions (printed), one feature per task on a pool of
worker processes once the thresholds are configured. A detection is a false
alarm on stationary data; the detector is then reset (``reset_state``), as one
would after acting on it, and its events are counted from ``t =
min(window_sizes)``, where its ERT starts. Categorical features: not applicable
(CVM assumes continuous data; ``FETDriftOnline`` is for binary data, and these
features have 3 to 20 categories).

Alibi Detect 0.13 pins ``numpy<2`` and ``numba<0.60`` while River (Sentinelle's
drift detector) needs ``numpy>=2.2.5``: installing it into Sentinelle's
environment would break Sentinelle. Install it in an environment of its own and
point the bench at that interpreter (``--alibi-python``, or the
``SENTINELLE_ALIBI_PYTHON`` variable); the Alibi side (``bench/_alibi.py``)
runs there and reports back over pipes::

    python3.11 -m venv ~/alibi-venv
    ~/alibi-venv/bin/pip install alibi-detect     # about 1.1 GB with its dependencies
    .venv/bin/python bench/drift_quality.py --alibi-python ~/alibi-venv/bin/python

Without it the report says "Alibi Detect: not installed here" and why.

**Events per second**, measured after the other stages, with the machine
otherwise idle: Sentinelle on micro-batches of 2,000 events (the worker's
``batch_max``), binning included; Alibi one ``predict`` per event (its API);
both on the 8 numeric features, detectors already armed. Machines are noisy:
compare the ratio, not the raw rates.

Other choices: training data of ``TRAIN_ROWS`` = 50,000 rows drawn from the
laws in ``bench/_synthetic.py``, profiled by
:func:`detectors.profile.build_profile` (20 quantile bins) and calibrated by
:meth:`streams.core.references.Reference.from_profile` as the worker does it; the
streams are fresh draws from the same laws (so the reference's own sampling
error is part of what is measured); every stream is seeded. Values are binned
as the worker bins them, following the profile: the integer ``items`` feature
(Poisson(4), 16 distinct values in training) is profiled as categorical by
:func:`~detectors.profile.build_profile` (integers with at most 20 distinct
values are codes), so Sentinelle compares it category by category while it
still counts, and is shifted, as a numeric feature here. Sentinelle runs on
3,000,000 stationary events per feature and 30 delay runs per feature, shift
and detector by default (400,000 and 8 with ``--quick``); Alibi on 40,000 and
5 (8,000 and 2). Counts of false alarms come with an exact 95 % Poisson
interval on their rate.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import _synthetic as syn
import numpy as np
import polars as pl
from scipy import stats

from detectors.base import Batch, Signal
from detectors.drift import DriftDetector
from detectors.profile import FeatureBins, build_profile, category_key
from detectors.sequential import information_bound
from detectors.sequential import loop as sequential_loop
from detectors.skew import SkewDetector
from streams.config import DriftSettings, SkewSettings
from streams.core.references import FeatureRef, Reference

TRAIN_ROWS = 50_000
SHORT_RUN_LENGTH = 20_000
PRE_EVENTS = 2_000        # stationary events after arming, before the change
CAP = 20_000              # shifted events fed before a run counts as missed
CHUNK = 100_000           # events per update() call on the stationary streams
FEED = 2_000              # events per update() call in delay runs and timing
SHIFTS_SD = (0.25, 0.5, 1.0)
CATEGORY_POINTS = 0.10
ALIBI_REF = 500
ALIBI_WINDOWS = (200,)
ALIBI_TIMEOUT_S = 1_200
KINDS = ("skew", "drift")
CONFIGS = ("default", "short")
LABELS = {"skew": "sentinelle skew", "drift": "sentinelle drift", "alibi": "alibi CVM"}


@dataclass(frozen=True)
class Plan:
    stationary_events: int       # per feature, Sentinelle
    reps: int                    # delay runs per (feature, shift, detector), Sentinelle
    alibi_stationary_events: int  # per numeric feature, Alibi
    alibi_reps: int
    speed_events: int            # per numeric feature, Sentinelle timing
    alibi_speed_events: int      # per numeric feature, Alibi timing


PLANS = {
    "default": Plan(3_000_000, 30, 40_000, 5, 200_000, 2_000),
    "quick": Plan(400_000, 8, 8_000, 2, 50_000, 1_000),
}

T0 = time.perf_counter()


def progress(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Sentinelle


def training_frame() -> tuple[pl.LazyFrame, dict[str, np.ndarray]]:
    """Training rows of the 12 features; also the raw numeric columns (Alibi's x_ref)."""
    cols: dict[str, Any] = {}
    raw: dict[str, np.ndarray] = {}
    for fi, feat in enumerate(syn.FEATURES):
        x = feat.draw(syn.rng_for(0, fi), TRAIN_ROWS)
        if feat.kind == "numeric":
            raw[feat.name] = x
            cols[feat.name] = x.astype(np.int64) if feat.law == "poisson" else x
        else:
            cols[feat.name] = pl.Series(feat.name, feat.labels(x), dtype=pl.Utf8)
    return pl.LazyFrame(cols), raw


def arm_events(kind: str, skew: SkewSettings, baseline_factor: int) -> int:
    """Events a fresh detector needs before its first test."""
    return skew.window_events * (1 if kind == "skew" else 1 + baseline_factor)


def make_detector(kind: str, fr: FeatureRef, baseline_factor: int
                  ) -> SkewDetector | DriftDetector:
    if kind == "skew":  # the profile's rows are the reference's size, as the worker passes it
        return SkewDetector("bench", "v1", fr.bins.name, bins=fr.bins, calibration=fr.skew,
                            reference_size=TRAIN_ROWS)
    return DriftDetector("bench", "v1", fr.bins.name, bins=fr.bins, calibration=fr.drift,
                         baseline_factor=baseline_factor)


def batch(idx: np.ndarray, ts: np.ndarray, values: np.ndarray | None) -> Batch:
    """The detectors' batch: bin indices, times and (numeric features) the raw values."""
    out: Batch = {"ts": ts, "bin": idx}
    if values is not None:
        out["value"] = values
    return out


def bin_values(feat: syn.Feature, bins: FeatureBins, x: np.ndarray) -> np.ndarray:
    """Bin indices, as the worker computes them (``streams.core.monitor._compare``).

    The profile decides: an integer feature with few distinct values is profiled
    as categorical, and its JSON integers then count as categories ("3").
    """
    if bins.kind == "numeric":
        return bins.bin_numeric(x)
    if feat.kind == "categorical":
        return bins.bin_categories(feat.labels(x))
    return bins.bin_categories([category_key(v) for v in x.astype(np.int64).tolist()])


BOUND_DRAWS = 1_000_000


def information_bounds(refs: dict[str, Reference], run_lengths: dict[str, float]
                       ) -> dict[tuple[str, str, float], float]:
    """``ln(L) / KL(shifted || reference)`` per (configuration, feature, shift), both laws
    binned on the profile's bins (``BOUND_DRAWS`` draws each, seeded)."""
    out: dict[tuple[str, str, float], float] = {}
    for fi, feat in enumerate(syn.FEATURES):
        bins = refs["default"].features[feat.name].bins
        rng = syn.rng_for(6, fi)
        base = np.bincount(bin_values(feat, bins, feat.draw(rng, BOUND_DRAWS)),
                           minlength=bins.size).astype(float)
        for shift in (SHIFTS_SD if feat.kind == "numeric" else (CATEGORY_POINTS,)):
            moved = np.bincount(bin_values(feat, bins, feat.draw(rng, BOUND_DRAWS, shift)),
                                minlength=bins.size).astype(float)
            for c, length in run_lengths.items():
                out[(c, feat.name, shift)] = information_bound(moved, base, length)
    return out


@dataclass
class AlarmCount:
    events: int = 0       # events monitored (from the first test on)
    alarms: int = 0       # inactive -> active transitions (alert triggers)
    active: int = 0       # active tests
    tests: int = 0
    _on: bool = False

    def add(self, signals: list[Signal]) -> None:
        for s in signals:
            self.tests += 1
            if s.active:
                self.active += 1
                if not self._on:
                    self.alarms += 1
            self._on = s.active


def stationary_sentinelle(refs: dict[str, Reference], n: int, skew: SkewSettings,
                          bf: int) -> dict[tuple[str, str, str], AlarmCount]:
    """Both configurations, both detectors, on one stationary stream per feature."""
    out: dict[tuple[str, str, str], AlarmCount] = {}
    for fi, feat in enumerate(syn.FEATURES):
        bins = refs["default"].features[feat.name].bins
        dets = {(c, k): make_detector(k, refs[c].features[feat.name], bf)
                for c in CONFIGS for k in KINDS}
        counts = {key: AlarmCount() for key in dets}
        rng = syn.rng_for(1, fi, 1)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = feat.draw(rng, m)
            idx = bin_values(feat, bins, x)
            ts = np.arange(start, start + m, dtype=float)
            values = x if bins.kind == "numeric" else None
            for key, det in dets.items():
                counts[key].add(det.update(batch(idx, ts, values)))
        for (c, k), count in counts.items():
            count.events = max(0, n - arm_events(k, skew, bf))
            out[(c, k, feat.name)] = count
        progress(f"  stationary: {feat.name} ({fi + 1}/{len(syn.FEATURES)}) done")
    return out


Outcome = int | None   # delay in events; -1: alarm before the change; None: missed


def delays_sentinelle(refs: dict[str, Reference], reps: int, skew: SkewSettings,
                      bf: int) -> dict[tuple[str, str, str, float], list[Outcome]]:
    """Delay runs; each stream is fed to the default and the short configuration alike."""
    out: dict[tuple[str, str, str, float], list[Outcome]] = {}
    for fi, feat in enumerate(syn.FEATURES):
        bins = refs["default"].features[feat.name].bins
        shifts = SHIFTS_SD if feat.kind == "numeric" else (CATEGORY_POINTS,)
        for si, shift in enumerate(shifts):
            for ki, kind in enumerate(KINDS):
                arm = arm_events(kind, skew, bf)
                for r in range(reps):
                    rng = syn.rng_for(4, fi, si, ki, r)
                    change = arm + PRE_EVENTS + int(rng.integers(0, skew.hop_events))
                    x = np.concatenate([feat.draw(rng, change), feat.draw(rng, CAP, shift)])
                    res = _delay_run(refs, feat, bins, kind, bf, x, change)
                    for c in CONFIGS:
                        out.setdefault((c, kind, feat.name, shift), []).append(res[c])
        progress(f"  delays: {feat.name} ({fi + 1}/{len(syn.FEATURES)}) done")
    return out


def _delay_run(refs: dict[str, Reference], feat: syn.Feature, bins: FeatureBins, kind: str,
               bf: int, x: np.ndarray, change: int) -> dict[str, Outcome]:
    idx = bin_values(feat, bins, x)
    ts = np.arange(x.size, dtype=float)
    values = x if bins.kind == "numeric" else None
    dets = {c: make_detector(kind, refs[c].features[feat.name], bf) for c in CONFIGS}
    res: dict[str, Outcome] = dict.fromkeys(CONFIGS)
    pending = set(CONFIGS)
    for start in range(0, x.size, FEED):
        sl = slice(start, start + FEED)
        for c in list(pending):
            for s in dets[c].update(batch(idx[sl], ts[sl],
                                          None if values is None else values[sl])):
                if s.active:
                    at = int(s.timestamp)
                    res[c] = -1 if at < change else at - change + 1
                    pending.discard(c)
                    break
        if not pending:
            break
    return res


def speed_sentinelle(refs: dict[str, Reference], n: int, skew: SkewSettings,
                     bf: int) -> dict[str, tuple[int, float]]:
    """Events and seconds (binning + update, micro-batches of FEED) per detector kind."""
    out: dict[str, tuple[int, float]] = {}
    for kind in KINDS:
        arm = arm_events(kind, skew, bf)
        total, secs = 0, 0.0
        for fi, feat in enumerate(syn.NUMERIC):
            fr = refs["default"].features[feat.name]
            det = make_detector(kind, fr, bf)
            x = feat.draw(syn.rng_for(5, fi), arm + n)
            numeric = fr.bins.kind == "numeric"
            det.update(batch(bin_values(feat, fr.bins, x[:arm]), np.arange(arm, dtype=float),
                             x[:arm] if numeric else None))
            ts = np.arange(x.size, dtype=float)
            t0 = time.perf_counter()
            for start in range(arm, x.size, FEED):
                xs = x[start:start + FEED]
                det.update(batch(bin_values(feat, fr.bins, xs), ts[start:start + FEED],
                                 xs if numeric else None))
            secs += time.perf_counter() - t0
            total += n
        out[kind] = (total, secs)
    return out


# --------------------------------------------------------------------------- Alibi


def alibi_bootstraps(ert: int, windows: Sequence[int]) -> int:
    """The fewest bootstrap streams Alibi's threshold configuration accepts, with a margin.

    Its ``quantile`` needs at least ``ert`` streams at every step, and each of the
    ``2 * max - min`` steps drops the streams that crossed (about 1 in ``ert``).
    """
    steps = 2 * max(windows) - min(windows)
    return math.ceil(1.02 * ert) + 2 * steps


class AlibiChild:
    """``bench/_alibi.py`` in Alibi's interpreter; see that file for the protocol."""

    def __init__(self, python: str, job: dict[str, Any]) -> None:
        script = Path(__file__).with_name("_alibi.py")
        self.python = python
        self.proc = subprocess.Popen([python, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.tail: deque[str] = deque(maxlen=15)
        self.out: list[str] = []
        assert self.proc.stdout and self.proc.stderr and self.proc.stdin
        self._threads = [threading.Thread(target=self._errors, args=(self.proc.stderr,),
                                          daemon=True),
                         threading.Thread(target=self._output, args=(self.proc.stdout,),
                                          daemon=True)]
        for t in self._threads:
            t.start()
        self._send(json.dumps(job) + "\n")

    def _send(self, text: str) -> None:
        try:
            assert self.proc.stdin
            self.proc.stdin.write(text)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child died: finish() reports its last words

    def _errors(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.rstrip()
            self.tail.append(line)
            if line.startswith("[alibi]"):
                progress(line)

    def _output(self, stream: IO[str]) -> None:
        self.out.append(stream.read())

    def finish(self, timeout: float) -> tuple[dict[str, Any] | None, str]:
        """Let the child time predict() alone; its results, or None and why not."""
        self._send("speed\n")
        try:
            assert self.proc.stdin
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, f"gave up after {timeout:.0f} s"
        for t in self._threads:
            t.join(timeout=5)
        if code != 0 or not self.out or not self.out[0].strip():
            last = [ln for ln in self.tail if ln.strip()][-3:]
            return None, f"{self.python} exited with {code}: " + " | ".join(last)
        return json.loads(self.out[0]), ""


def find_alibi(arg: str | None) -> tuple[str | None, str]:
    """The interpreter to run Alibi's side with, or None and the reason."""
    if arg:
        if not Path(arg).exists():
            return None, f"--alibi-python {arg}: no such file"
        return arg, ""
    if importlib.util.find_spec("alibi_detect") is not None:
        return sys.executable, ""
    why = ("no alibi_detect module in this interpreter, and no --alibi-python or "
           "SENTINELLE_ALIBI_PYTHON given. alibi-detect 0.13 pins numpy<2 and numba<0.60 "
           f"while River needs numpy>=2.2.5 (this environment has numpy {np.__version__}), so "
           "it cannot go into Sentinelle's environment: install it in a venv of its own and "
           "pass --alibi-python (see the module docstring)")
    return None, why


# --------------------------------------------------------------------------- report


def per_million(count: float, events: int) -> float:
    return 1e6 * count / events if events else math.nan


def poisson_interval(count: int, events: int) -> str:
    """Exact (Garwood) 95 % interval of a rate per million events, from a count."""
    lo = stats.chi2.ppf(0.025, 2 * count) / 2 if count else 0.0
    hi = stats.chi2.ppf(0.975, 2 * count + 2) / 2
    return f"{fmt_rate(per_million(lo, events))} - {fmt_rate(per_million(hi, events))}"


def fmt_rate(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.3g}" if x < 10 else f"{x:,.1f}"


def fmt_events(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]],
          notes: Sequence[str] = ()) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    print(f"\n{title}")
    print("  " + line(header))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + line(r))
    for n in notes:
        print(f"  {n}")


def summarise(outcomes: Sequence[Outcome]) -> tuple[float, int, int, int]:
    """Median delay (inf: beyond the cap), detected, runs without an early alarm, early alarms."""
    early = sum(1 for o in outcomes if o == -1)
    valid = [o for o in outcomes if o != -1]
    if not valid:
        return math.nan, 0, 0, early
    arr = np.array([math.inf if o is None else o for o in valid], dtype=float)
    return float(np.median(arr)), sum(o is not None for o in valid), len(valid), early


def delay_cell(outcomes: Sequence[Outcome]) -> str:
    if not outcomes:
        return "-"
    med, detected, valid, _ = summarise(outcomes)
    if valid == 0:
        return "- (0/0)"
    m = f"> {CAP:,}" if math.isinf(med) else f"{med:,.0f}"
    return f"{m} ({detected}/{valid})"


def header_lines(mode: str, plan: Plan, skew: SkewSettings, bf: int) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = ", ".join(f"{p} {metadata.version(p)}"
                     for p in ("sentinelle", "numpy", "polars", "scipy", "river"))
    return [
        "Sentinelle drift quality: false alarms and detection delays on synthetic streams",
        f"machine: {platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}",
        f"libraries: {libs}",
        f"mode: {mode}" + (" (smaller and noisier; drop --quick for the full run)"
                           if mode == "quick" else ""),
        f"features: 8 numeric ({', '.join(f'{f.name}: {f.shape}' for f in syn.NUMERIC)})",
        f"          4 categorical ({', '.join(f'{f.name}: {f.shape}' for f in syn.CATEGORICAL)})",
        f"reference: build_profile of {TRAIN_ROWS:,} training rows (20 quantile bins), "
        f"Reference.from_profile; windows {skew.window_events:,} events, hop "
        f"{skew.hop_events}, drift baseline {bf} windows",
        f"run lengths: default {skew.run_length_events:,.0f} events "
        f"(target {per_million(1, int(skew.run_length_events)):.4f} per million), "
        f"short {SHORT_RUN_LENGTH:,} (target {per_million(1, SHORT_RUN_LENGTH):.0f} per million)",
        f"Sentinelle: {plan.stationary_events:,} stationary events per feature and "
        f"configuration; {plan.reps} delay runs per feature, shift and detector "
        f"({PRE_EVENTS:,} stationary events after arming, + 0..{skew.hop_events - 1}, "
        f"then up to {CAP:,} shifted)",
    ]


def report(args: argparse.Namespace, plan: Plan, skew: SkewSettings, bf: int,
           stat: dict[tuple[str, str, str], AlarmCount],
           delays: dict[tuple[str, str, str, float], list[Outcome]],
           speed: dict[str, tuple[int, float]], alibi: dict[str, Any] | None,
           alibi_why: str, alibi_python: str | None, ert_b: int,
           kinds: dict[str, str], bounds: dict[tuple[str, str, float], float]) -> None:
    for ln in header_lines("quick" if args.quick else "default", plan, skew, bf):
        print(ln)
    numeric = [f.name for f in syn.NUMERIC]
    categorical = [f.name for f in syn.CATEGORICAL]
    if alibi is not None:
        cfg = alibi["config"]
        sec_per = cfg["seconds"] / ert_b
        need = skew.run_length_events
        print(f"alibi: alibi-detect {alibi['version']} (python {alibi['python']}, numpy "
              f"{alibi['numpy']}, numba {alibi['numba']}; {alibi_python})")
        print(f"       CVMDriftOnline per numeric feature: x_ref {ALIBI_REF} training rows, "
              f"window_sizes {list(ALIBI_WINDOWS)}, ert {SHORT_RUN_LENGTH:,}, n_bootstraps "
              f"{ert_b:,}: thresholds configured in {cfg['seconds']:.0f} s (once, shared), "
              f"final threshold {cfg['threshold']:.3f}")
        ds = alibi["delay_setup"]
        print(f"       {plan.alibi_stationary_events:,} stationary events per feature; "
              f"{ds['reps']} delay runs per feature and shift ({ds['arm']} events to arm, "
              f"{ds['pre']:,} stationary, then up to {ds['cap']:,} shifted)")
        alibi_na = (f"n/a: ert {need:,.0f} needs >= {need:,.0f} bootstrap streams, about "
                    f"{need * sec_per / 3600:,.0f} h here and "
                    f"{need * cfg['t_max'] * 8 / 1e9:,.0f} GB for their statistics")
    else:
        if alibi_why.startswith(("it failed", "skipped")):
            print(f"Alibi Detect: {alibi_why}")
        else:
            print(f"Alibi Detect: not installed here ({alibi_why})")
        alibi_na = "n/a: not installed"

    # ---- false alarms
    def group_cells(config: str, names: list[str]) -> list[str]:
        cells = []
        for k in KINDS:
            cs = [stat[(config, k, n)] for n in names]
            ev, al = sum(c.events for c in cs), sum(c.alarms for c in cs)
            cells.append(f"{fmt_rate(per_million(al, ev))} ({al} in {fmt_events(ev)})")
        return cells

    def alibi_group(names: list[str]) -> str:
        if alibi is None or not all(n in alibi["stationary"] for n in names):
            return "n/a"
        ev = sum(alibi["stationary"][n]["events"] for n in names)
        al = sum(alibi["stationary"][n]["alarms"] for n in names)
        return f"{fmt_rate(per_million(al, ev))} ({al} in {fmt_events(ev)})"

    cols = ["features", LABELS["skew"], LABELS["drift"], LABELS["alibi"]]
    for config, run_length in (("short", SHORT_RUN_LENGTH), ("default", skew.run_length_events)):
        target = per_million(1, int(run_length))
        rows = []
        for group, names in (("numeric (8)", numeric), ("categorical (4)", categorical),
                             ("all (12)", numeric + categorical)):
            if group.startswith("numeric"):
                a = alibi_group(names) if config == "short" else "n/a (1)"
            else:
                a = "n/a (categorical)" if group.startswith("cat") else "n/a (numeric only)"
            rows.append([group, *group_cells(config, names), a])
        interval = []
        for k in KINDS:
            cs = [stat[(config, k, n)] for n in numeric + categorical]
            interval.append(poisson_interval(sum(c.alarms for c in cs),
                                             sum(c.events for c in cs)))
        if config == "short" and alibi is not None:
            interval.append(poisson_interval(
                sum(alibi["stationary"][n]["alarms"] for n in numeric),
                sum(alibi["stationary"][n]["events"] for n in numeric)) + " (numeric)")
        else:
            interval.append("-")
        rows.append(["95% interval, all", *interval])
        tests = []
        for k in KINDS:
            cs = [stat[(config, k, n)] for n in numeric + categorical]
            ev, act = sum(c.events for c in cs), sum(c.active for c in cs)
            tests.append(f"{fmt_rate(per_million(act, ev))}")
        rows.append(["active tests, all", *tests, "-"])
        ratio = []
        for k in KINDS:
            cs = [stat[(config, k, n)] for n in numeric + categorical]
            ev, al = sum(c.events for c in cs), sum(c.alarms for c in cs)
            ratio.append(f"{per_million(al, ev) / target:.2f}" if al else
                         f"0 (expected <= {ev / run_length:.2f})")
        if config == "short" and alibi is not None:
            ev = sum(alibi["stationary"][n]["events"] for n in numeric)
            al = sum(alibi["stationary"][n]["alarms"] for n in numeric)
            ratio.append(f"{per_million(al, ev) / target:.2f}")
        else:
            ratio.append("-")
        rows.append(["alerts / target, all", *ratio])
        notes = ["cells: alerts (inactive -> active) per million events (alerts in events "
                 "monitored); 'active tests': raw tests above the threshold per million"]
        if config == "default":
            notes.append(f"(1) alibi {alibi_na}")
        table(f"False alarms per million events, stationary data, run length {run_length:,.0f} "
              f"(target {fmt_rate(target)} per million)", cols, rows, notes)

    # ---- delays
    def alibi_delays(shift: float) -> list[Outcome]:
        if alibi is None:
            return []
        return [o for n in numeric for o in alibi["delays"][n][str(shift)]]

    for config in ("short", "default"):
        rows = []
        early = {k: 0 for k in (*KINDS, "alibi")}
        runs = {k: 0 for k in (*KINDS, "alibi")}
        for shift in (*SHIFTS_SD, CATEGORY_POINTS):
            names = categorical if shift == CATEGORY_POINTS else numeric
            label = ("top category +10 points" if shift == CATEGORY_POINTS
                     else f"mean +{shift:g} SD")
            cells = []
            for k in KINDS:
                outs = [o for n in names for o in delays[(config, k, n, shift)]]
                early[k] += sum(o == -1 for o in outs)
                runs[k] += len(outs)
                cells.append(delay_cell(outs))
            if shift == CATEGORY_POINTS:
                cells.append("n/a (categorical)")
            elif config == "default" or alibi is None:
                cells.append("n/a" + (" (1)" if config == "default" else ""))
            else:
                outs = alibi_delays(shift)
                early["alibi"] += sum(o == -1 for o in outs)
                runs["alibi"] += len(outs)
                cells.append(delay_cell(outs))
            bound = float(np.median([bounds[(config, n, shift)] for n in names]))
            cells.append(f"{bound:,.0f}")
            rows.append([label, *cells])
        rows.append(["alarms before the change",
                     *[f"{early[k]} of {runs[k]} runs" if runs[k] else "-"
                       for k in (*KINDS, "alibi")], "-"])
        run_length = SHORT_RUN_LENGTH if config == "short" else skew.run_length_events
        notes = ["cells: median events from the change to the alerting event (detected within "
                 f"{CAP:,} / runs without an alarm before the change)",
                 "bound: ln(run length) / KL(shifted || reference) on the profile's bins, the "
                 "least mean delay of any test with this false-alarm rate (median over the "
                 "features; by feature below)"]
        if config == "default":
            notes.append(f"(1) alibi {alibi_na}")
        table(f"Median detection delay (events), run length {run_length:,.0f}",
              ["shift", LABELS["skew"], LABELS["drift"], LABELS["alibi"], "bound"], rows, notes)

    for config in ("default", "short"):
        rows = []
        worst = {k: 0.0 for k in KINDS}
        for f in syn.FEATURES:
            cells = []
            for shift in (SHIFTS_SD if f.kind == "numeric" else (CATEGORY_POINTS,)):
                b = bounds[(config, f.name, shift)]
                part = [f"{b:,.0f}"]
                for k in KINDS:
                    med = summarise(delays[(config, k, f.name, shift)])[0]
                    if not math.isnan(med):
                        worst[k] = max(worst[k], med / b)
                    part.append(f"{_med(med)} ({med / b:.2f}x)" if math.isfinite(med)
                                else _med(med))
                cells.append(" | ".join(part))
            cells += [""] * (len(SHIFTS_SD) - len(cells))
            rows.append([f.name, *cells])
        run_length = SHORT_RUN_LENGTH if config == "short" else skew.run_length_events
        table(f"Delay against the information bound by feature, run length {run_length:,.0f}: "
              "bound | skew (ratio) | drift (ratio)",
              ["feature", *[f"+{s:g} SD (categorical: +10 points)" if s == SHIFTS_SD[0]
                            else f"+{s:g} SD" for s in SHIFTS_SD]], rows,
              [f"largest ratio: skew {worst['skew']:.2f}, drift {worst['drift']:.2f}"])

    # ---- per feature (short run length)
    def feature_label(f: syn.Feature) -> str:
        note = " [profiled as categorical]" if kinds[f.name] != f.kind else ""
        return f"{f.name}{note}"

    rows = []
    for f in syn.FEATURES:
        cells = []
        for config in CONFIGS[::-1]:
            for k in KINDS:
                c = stat[(config, k, f.name)]
                cells.append(f"{fmt_rate(per_million(c.alarms, c.events))} / "
                             f"{fmt_rate(per_million(c.active, c.events))}")
        if alibi is not None and f.name in alibi["stationary"]:
            a = alibi["stationary"][f.name]
            cells.append(f"{fmt_rate(per_million(a['alarms'], a['events']))} "
                         f"({a['alarms']} in {fmt_events(a['events'])})")
        else:
            cells.append("n/a")
        rows.append([feature_label(f), *cells])
    table("False alarms by feature, per million events: alerts / active tests",
          ["feature", "skew, L 20k", "drift, L 20k", "skew, default L", "drift, default L",
           "alibi CVM, ERT 20k"], rows,
          [f"targets: {per_million(1, SHORT_RUN_LENGTH):.0f} per million for L = "
           f"{SHORT_RUN_LENGTH:,}, {per_million(1, int(skew.run_length_events)):.4f} for the "
           "default L; alibi: alerts (alerts in events monitored)"])

    rows = []
    for f in syn.FEATURES:
        cells = []
        for shift in (SHIFTS_SD if f.kind == "numeric" else (CATEGORY_POINTS,)):
            for k in KINDS:
                cells.append(_med(summarise(delays[("short", k, f.name, shift)])[0]))
            if alibi is not None and f.name in alibi["delays"]:
                cells.append(_med(summarise(alibi["delays"][f.name][str(shift)])[0]))
            else:
                cells.append("n/a")
        cells += [""] * (3 * len(SHIFTS_SD) - len(cells))
        rows.append([feature_label(f), *cells])
    hdr = ["feature"]
    for s in SHIFTS_SD:
        hdr += [f"{s:g} SD skew", "drift", "alibi"]
    table(f"Median detection delay by feature (events), run length {SHORT_RUN_LENGTH:,}",
          hdr, rows, ["categorical features: +10 points of the top category, in the first "
                      "three columns; '-': every run alerted before the change"])

    # ---- speed
    base = speed["skew"][0] / speed["skew"][1]
    rows = []
    for k in KINDS:
        n, s = speed[k]
        rows.append([LABELS[k], f"{n / s:,.0f}", f"{1e6 * s / n:.2f}", f"{n / s / base:.3f}"])
    if alibi is not None and "speed" in alibi:
        n, s = alibi["speed"]["events"], alibi["speed"]["seconds"]
        rows.append([LABELS["alibi"], f"{n / s:,.0f}", f"{1e6 * s / n:.1f}",
                     f"{n / s / base:.4f}"])
    else:
        rows.append([LABELS["alibi"], "n/a", "n/a", "n/a"])
    table("Events per second per feature (8 numeric features, detectors armed, machine "
          "otherwise idle)", ["detector", "events/s", "us/event", "vs sentinelle skew"], rows,
          [f"Sentinelle: {speed['skew'][0]:,} events in micro-batches of {FEED:,}, binning "
           "included; Alibi: one predict() per event"
           + (f", {alibi['speed']['events']:,} events" if alibi and "speed" in alibi else ""),
           "Sentinelle folds every event into its CUSUMs (blocks of 4 or 32 events, "
           f"{sequential_loop()}), Alibi tests once per event"])


def _med(med: float) -> str:
    return "-" if math.isnan(med) else f">{CAP // 1000}k" if math.isinf(med) else f"{med:,.0f}"


def plot(path: str, delays: dict[tuple[str, str, str, float], list[Outcome]],
         alibi: dict[str, Any] | None) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        print(f"\nmatplotlib is not installed here; not drawing {path}")
        return
    from _plot import plot_delays

    numeric = [f.name for f in syn.NUMERIC]
    series: dict[str, list[tuple[float, float]]] = {}
    for config in ("short", "default"):
        for k in KINDS:
            series[f"{LABELS[k]}, run length {'20k' if config == 'short' else '60.48M'}"] = [
                (s, summarise([o for n in numeric for o in delays[(config, k, n, s)]])[0])
                for s in SHIFTS_SD]
        if config == "short" and alibi is not None:
            series[f"{LABELS['alibi']}, ERT 20k"] = [
                (s, summarise([o for n in numeric for o in alibi["delays"][n][str(s)]])[0])
                for s in SHIFTS_SD]
    plot_delays(series, CAP, "median detection delay, 8 numeric features", path)
    print(f"\nwrote {path}")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter streams, fewer runs")
    parser.add_argument("--plot", metavar="PNG", help="detection delay vs shift, per detector")
    parser.add_argument("--alibi-python", metavar="PATH",
                        default=os.environ.get("SENTINELLE_ALIBI_PYTHON"),
                        help="interpreter of an environment with alibi-detect installed")
    parser.add_argument("--no-alibi", action="store_true", help="skip Alibi Detect")
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "default"]
    skew_default = SkewSettings()
    bf = DriftSettings().baseline_factor

    progress(f"training data: {TRAIN_ROWS:,} rows x {len(syn.FEATURES)} features ...")
    frame, raw = training_frame()

    alibi_python, alibi_why = (None, "skipped (--no-alibi)") if args.no_alibi else find_alibi(
        args.alibi_python)
    ert_b = alibi_bootstraps(SHORT_RUN_LENGTH, ALIBI_WINDOWS)
    child = None
    if alibi_python is not None:
        job = {"features": [f.name for f in syn.NUMERIC],
               "x_ref": {n: raw[n][:ALIBI_REF].tolist() for n in raw},
               "ert": SHORT_RUN_LENGTH, "window_sizes": list(ALIBI_WINDOWS),
               "n_bootstraps": ert_b, "batch_size": 256,
               "stationary_events": plan.alibi_stationary_events,
               "shifts": list(SHIFTS_SD), "reps": plan.alibi_reps, "pre_events": PRE_EVENTS,
               "cap": CAP, "speed_events": plan.alibi_speed_events,
               "workers": os.cpu_count() or 2}
        progress(f"starting Alibi Detect's side in {alibi_python} (runs alongside)")
        child = AlibiChild(alibi_python, job)

    progress("profile and calibration (default and short run length) ...")
    profile = build_profile(frame, "bench", "v1", created_at=0.0)
    refs = {"default": Reference.from_profile(profile, skew_default, bf),
            "short": Reference.from_profile(
                profile, skew_default.model_copy(update={"run_length_events": SHORT_RUN_LENGTH}),
                bf)}

    progress(f"stationary streams: {len(syn.FEATURES)} features x {plan.stationary_events:,} "
             "events, 2 configurations x 2 detectors ...")
    t0 = time.perf_counter()
    stat = stationary_sentinelle(refs, plan.stationary_events, skew_default, bf)
    progress(f"stationary streams done in {time.perf_counter() - t0:.1f} s")

    progress(f"detection delays: {plan.reps} runs per feature, shift and detector ...")
    t0 = time.perf_counter()
    delays = delays_sentinelle(refs, plan.reps, skew_default, bf)
    progress(f"detection delays done in {time.perf_counter() - t0:.1f} s")

    alibi: dict[str, Any] | None = None
    if child is not None:
        progress("waiting for Alibi Detect's side ...")
        alibi, alibi_why = child.finish(ALIBI_TIMEOUT_S)
        if alibi is None:
            alibi_why = f"it failed: {alibi_why}"
            progress(f"Alibi Detect: {alibi_why}")

    progress("timing Sentinelle alone ...")
    speed = speed_sentinelle(refs, plan.speed_events, skew_default, bf)
    progress("done; report follows on stdout")

    progress("information bounds ...")
    bounds = information_bounds(refs, {"default": skew_default.run_length_events,
                                       "short": SHORT_RUN_LENGTH})
    kinds = {n: fr.bins.kind for n, fr in refs["default"].features.items()}
    report(args, plan, skew_default, bf, stat, delays, speed, alibi, alibi_why,
           alibi_python, ert_b, kinds, bounds)
    if args.plot:
        plot(args.plot, delays, alibi)
    print(f"\ntotal time {time.perf_counter() - T0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
