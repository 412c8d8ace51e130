"""CPU cost of Sentinelle's prediction path, without Kafka.

Measures, in one run, what the worker spends per prediction event in the code we
own, between Faust handing over a micro-batch of ``ml.predictions`` messages and
the :class:`~streams.core.predictions.Outbox` coming back. Faust's own per-message cost
(about 200 µs, consuming, batching and committing) is documented separately and
is not part of these figures.

Rows, each for two wire forms of the same events (one event per message, and the
contract's batch form: a JSON array of 100 events per message):

``baseline``
    ``orjson.loads`` of every message's bytes, nothing else: the floor of any
    JSON consumer.
``parse``
    :func:`streams.core.parse.parse_predictions` into a fresh
    :class:`~streams.core.parse.PredictionColumns` per micro-batch (validation,
    timestamp parsing, column building).
``pipeline``
    :meth:`streams.core.predictions.PredictionProcessor.process` with default
    ``Settings()`` and no reference profiles: parse, Polars frame, per-model
    split, event-time windows, detectors, alert book and one state checkpoint
    (``to_dict``) per model per micro-batch, as the worker does it. This is the
    walking skeleton's path; the events' features are parsed and carried along
    but compared with nothing.
``pipeline+skew``
    The same, given a :class:`~streams.core.references.ReferenceStore` holding one
    reference profile per (model, version), with drift and quality turned off
    in a copy of the settings: training/serving skew is the only reference
    check (13 sliding windows per model: 12 features and the prediction).
``pipeline+all``
    The same with the default settings, as the worker runs: every reference
    check they enable (skew, drift and quality by default). This is the row
    the acceptance criterion is about: "with drift, skew and quality on for 12
    features the rate stays at least 50% of the walking skeleton's rate".

All rows run on the same messages: every event carries the 12 features and the
prediction, including in ``baseline``, ``parse`` and ``pipeline``, so each row
pays the same JSON and parsing cost and the ``vs pipe`` column (events/s over
the ``pipeline`` row of the same wire form) isolates what comparing with the
references costs. (The simulator's events carry 2 features; with 12, messages
are about twice as large, so every row here is slower than in runs of this
script before the features were added.) A line per ``pipeline+*`` row and wire
form states that ratio against the 50% criterion, with the skew, drift and
quality alerts it triggered; the data are stationary, so about none are
expected. Every ``pipeline*`` row also runs whatever else ``Settings()``
enables (the label join, for one: it buffers every prediction awaiting its
label); the header says which, and an environment override such as
``SENTINELLE_LABELS__ENABLED=false`` leaves it out of all rows alike.

Speed is given as events per second and µs per event (wall clock; the CPU time
of the whole process, Polars' threads included, is shown too), and as a ratio to
the baseline row of the same wire form measured in the same run: machines are
shared and noisy, so compare ratios between runs, not raw rates. Each row is
timed ``--repeat`` times, rows interleaved, and the fastest run is reported
along with the spread (slowest over fastest, minus one).

Peak memory per row comes from one extra, untimed run under ``tracemalloc``
(tracing slows Python down, so it never overlaps a timed run): the peak of the
Python heap, numpy arrays included, above what was allocated before the run.
Polars allocates its Arrow buffers in Rust, out of tracemalloc's sight; the
process-wide high-water mark (``ru_maxrss``) is printed at the end for that.

Workload choices:

- 3 models (``fraud-scorer``, ``recommender``, ``churn-model``), events made by
  :func:`streams.tools.simulate.make_event` with a seeded ``random.Random`` and no
  incident effects (normal traffic), interleaved in event-time order;
- ``RATE`` = 50 events per model per simulated second, so 60,000 events span
  about 7 simulated minutes: about 6 windows of 60 s close per model, each
  holding about 3,000 events of that model;
- features: 8 numeric (lognormal, normal, uniform and exponential laws, rounded
  as a producer would send them) and 4 categorical (3 to 20 categories with
  skewed, Zipf-like or geometric, shares), plus a numeric ``prediction`` (a
  beta-distributed score), drawn with a seeded ``numpy`` generator in place of
  the simulator's two features;
- reference profiles: :func:`detectors.profile.build_profile` of a training
  frame of ``TRAIN_ROWS`` = 50,000 rows per (model, version), drawn from the
  same laws with its own fixed seed, calibrated into a
  :class:`~streams.core.references.ReferenceStore` as the worker does it; profiles
  and store are built once, before any timing, and shared by the runs (the
  detectors' state lives in the pipeline, made fresh for every run);
- each model keeps to one partition (as keyed by model in production), offsets
  increase per partition;
- single form: 2,000 messages per ``process()`` call (``worker.batch_max``, what
  ``take_events`` hands over under load); batch form: 20 messages of 100 events
  per call, so both forms fold 2,000 events per micro-batch;
- ``now`` passed to ``process()`` is the newest event time of the micro-batch
  plus 0.5 s, as if the worker kept up in real time;
- inputs (message bytes, ``InMessage`` lists, micro-batch cuts) are built before
  any timing; a fresh pipeline is made for every timed run.
- the process is tuned as the worker tunes itself
  (:mod:`streams.runtime.tuning`): numpy's BLAS pool at ``worker.blas_threads``
  threads, and the garbage collector frozen over what was built before the
  timing and run at the worker's thresholds.

Run it with ``make bench`` or ``.venv/bin/python bench/throughput.py``; options:
``--events N`` (default 60,000 per row; the whole run then takes 60 to 90 s on
2 cores), ``--repeat R`` (default 3), ``--no-memory`` (skip the tracemalloc
pass, about half the run time),
``--plot out.png`` (a bar chart of events/s per row, when matplotlib is
installed; it is not a dependency), ``--window`` (also the rows
``pipeline+skew/window`` and ``pipeline+all/window``: the same with
``skew.test`` and ``drift.test`` set to ``window``, the checks the sequential
tests replaced, and a line per row and wire form giving sequential over window
in µs per event, the whole row's and the checks' own, over ``pipeline``).
Nothing is asserted: it is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from detectors.profile import build_profile
from detectors.sequential import loop as sequential_loop
from streams.config import Settings
from streams.core.parse import PredictionColumns, parse_predictions
from streams.core.predictions import InMessage, PredictionProcessor, parse_limits
from streams.core.references import ReferenceStore
from streams.runtime.tuning import limit_threads, tune_gc
from streams.tools.simulate import ModelSpec, make_event

TOPIC = "ml.predictions"
MODELS = (ModelSpec("fraud-scorer", "v7"), ModelSpec("recommender", "v3"),
          ModelSpec("churn-model", "v2"))
RATE = 50.0                # events per model per simulated second
T0 = 1_795_762_800.0       # 2026-11-27T07:00:00Z, aligned on a window boundary
BATCH_EVENTS = 100         # events per message in the batch form
SINGLE_PER_CALL = 2000     # messages per process() call, single form
BATCH_PER_CALL = 20        # messages per process() call, batch form
SEED = 7
TRAIN_ROWS = 50_000        # rows of each (model, version)'s training frame
TRAIN_SEED = 1_000         # training frames use seeds TRAIN_SEED + model index
CREATED_AT = T0 - 86_400.0  # the profiles' created_at: a day before the traffic
SKEW_CHECK = "training_serving_skew"
DRIFT_CHECKS = frozenset({"feature_drift", "prediction_drift"})
QUALITY_CHECK = "data_quality"

Chunk = tuple[list[InMessage], float]  # one micro-batch and the `now` to pass with it


@dataclass(slots=True)
class Workload:
    form: str                          # "single" or "batch"
    events: int
    chunks: list[Chunk]


@dataclass(slots=True)
class Result:
    """What one row's timed runs gave."""

    form: str
    stage: str
    events: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    py_peak: int = 0                   # bytes, tracemalloc
    windows: int | None = None
    alerts: int | None = None
    deadletters: int | None = None
    folded: int | None = None
    skew_alerts: int | None = None     # training_serving_skew triggers (pipeline+skew only)
    drift_alerts: int | None = None    # feature_drift and prediction_drift triggers
    quality_alerts: int | None = None  # data_quality triggers
    compared: int | None = None        # (series, feature) pairs compared with a reference

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def rate(self) -> float:
        return self.events / self.best

    @property
    def us_per_event(self) -> float:
        return self.best / self.events * 1e6

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu[self.wall.index(self.best)] / self.events * 1e6

    @property
    def spread(self) -> float:
        return max(self.wall) / self.best - 1


# -- features and reference profiles --------------------------------------------


@dataclass(frozen=True, slots=True)
class Numeric:
    """A numeric feature: ``law`` is a ``numpy.random.Generator`` method and its arguments."""

    name: str
    law: str
    args: tuple[float, ...]
    decimals: int              # values are rounded, as a producer would send them


@dataclass(frozen=True, slots=True)
class Categorical:
    """A categorical feature: categories with skewed probabilities."""

    name: str
    categories: tuple[str, ...]
    weights: tuple[float, ...]  # normalised when drawing


def _zipf(k: int, s: float) -> tuple[float, ...]:
    return tuple(1 / (i + 1) ** s for i in range(k))


def _geometric(k: int, r: float) -> tuple[float, ...]:
    return tuple(r ** i for i in range(k))


NUMERIC = (
    Numeric("amount", "lognormal", (3.5, 1.0), 2),
    Numeric("balance", "lognormal", (7.0, 1.5), 2),
    Numeric("age", "normal", (41.0, 12.0), 1),
    Numeric("credit_score", "normal", (680.0, 60.0), 0),
    Numeric("risk_score", "uniform", (0.0, 1.0), 4),
    Numeric("discount", "uniform", (0.0, 0.3), 4),
    Numeric("session_s", "exponential", (120.0,), 1),
    Numeric("days_since_last", "exponential", (9.0,), 2),
)
COUNTRIES = ("FR", "DE", "US", "GB", "ES", "IT", "NL", "BE", "PL", "SE",
             "PT", "AT", "CH", "IE", "DK", "FI", "NO", "CZ", "RO", "GR")
CATEGORICAL = (
    Categorical("country", COUNTRIES, _zipf(20, 1.1)),
    Categorical("device", ("mobile", "desktop", "tablet"), (0.62, 0.30, 0.08)),
    Categorical("channel", ("organic", "search", "email", "social", "partner", "display",
                            "referral"), _zipf(7, 1.5)),
    Categorical("plan", tuple(f"plan-{i:02d}" for i in range(12)), _geometric(12, 0.6)),
)
FEATURES = len(NUMERIC) + len(CATEGORICAL)
PREDICTION = Numeric("prediction", "beta", (2.0, 5.0), 4)  # a score, skewed low


def draw_columns(rng: np.random.Generator, n: int) -> dict[str, list[Any]]:
    """``n`` values of every feature and of ``prediction``, as plain Python lists."""
    cols: dict[str, list[Any]] = {}
    for f in (*NUMERIC, PREDICTION):
        cols[f.name] = np.round(getattr(rng, f.law)(*f.args, size=n), f.decimals).tolist()
    for c in CATEGORICAL:
        p = np.asarray(c.weights) / sum(c.weights)
        cats = np.asarray(c.categories, dtype=object)
        cols[c.name] = cats[rng.choice(len(p), size=n, p=p)].tolist()
    return cols


def add_features(events: list[dict[str, Any]], seed: int = SEED) -> None:
    """Give every event the 12 features and a ``prediction``, drawn afresh (in place)."""
    cols = draw_columns(np.random.default_rng(seed), len(events))
    names = [f.name for f in NUMERIC] + [c.name for c in CATEGORICAL]
    feats = [cols[name] for name in names]
    for ev, values, pred in zip(events, zip(*feats, strict=True), cols[PREDICTION.name],
                                strict=True):
        ev["features"] = dict(zip(names, values, strict=True))
        ev["prediction"] = pred


def training_profiles(rows: int = TRAIN_ROWS) -> list[dict[str, Any]]:
    """One reference profile per (model, version), each from its own training frame."""
    profiles = []
    for i, spec in enumerate(MODELS):
        frame = pl.DataFrame(draw_columns(np.random.default_rng(TRAIN_SEED + i), rows))
        profiles.append(build_profile(frame.lazy(), spec.model, spec.version,
                                      created_at=CREATED_AT))
    return profiles


def reference_store(settings: Settings, profiles: Sequence[dict[str, Any]]) -> ReferenceStore:
    """The profiles, calibrated as the worker does it (:mod:`streams.runtime.agents`)."""
    store = ReferenceStore(settings.skew, settings.drift.baseline_factor)
    for profile in profiles:
        store.add(profile)
    return store


# -- inputs -------------------------------------------------------------------


def make_events(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``n`` events of the three models, round robin, in event-time order, 12 features each."""
    rng = random.Random(seed)
    k = len(MODELS)
    events = [make_event(MODELS[i % k], T0 + (i // k) / RATE, rng, set(), i // k + 1)
              for i in range(n)]
    add_features(events, seed)
    return events


def _wire(doc: Any) -> bytes:
    # A compact copy: each buffer orjson.dumps returns keeps a few KiB of slack
    # (about 80 MiB per 20,000 small events), which Kafka's message values don't.
    return bytes(memoryview(orjson.dumps(doc)))


def _cut(messages: list[InMessage], times: list[float], per_call: int) -> list[Chunk]:
    return [(messages[i:i + per_call], max(times[i:i + per_call]) + 0.5)
            for i in range(0, len(messages), per_call)]


def single_form(events: list[dict[str, Any]], partitions: int) -> Workload:
    part = {spec.model: i % partitions for i, spec in enumerate(MODELS)}
    offsets = dict.fromkeys(range(partitions), 0)
    messages, times = [], []
    for ev in events:
        p = part[ev["model"]]
        messages.append(InMessage(_wire(ev), p, offsets[p]))
        offsets[p] += 1
        times.append(ev["ts"])
    return Workload("single", len(events), _cut(messages, times, SINGLE_PER_CALL))


def batch_form(events: list[dict[str, Any]], partitions: int) -> Workload:
    """Per model, consecutive runs of ``BATCH_EVENTS`` events, in order of first event."""
    part = {spec.model: i % partitions for i, spec in enumerate(MODELS)}
    per_model: dict[str, list[dict[str, Any]]] = {spec.model: [] for spec in MODELS}
    for ev in events:
        per_model[ev["model"]].append(ev)
    batches = [evs[i:i + BATCH_EVENTS] for evs in per_model.values()
               for i in range(0, len(evs), BATCH_EVENTS)]
    batches.sort(key=lambda b: (b[0]["ts"], b[0]["model"]))
    offsets = dict.fromkeys(range(partitions), 0)
    messages, times = [], []
    for b in batches:
        p = part[b[0]["model"]]
        messages.append(InMessage(_wire(b), p, offsets[p]))
        offsets[p] += 1
        times.append(b[-1]["ts"])
    return Workload("batch", len(events), _cut(messages, times, BATCH_PER_CALL))


# -- the rows -----------------------------------------------------------------


def run_baseline(work: Workload, settings: Settings) -> dict[str, int]:
    loads = orjson.loads
    for messages, _ in work.chunks:
        for msg in messages:
            loads(msg.value)  # type: ignore[arg-type]
    return {}


def run_parse(work: Workload, settings: Settings) -> dict[str, int]:
    dead = 0
    for messages, now in work.chunks:
        cols = PredictionColumns()
        limits = parse_limits(settings, now)
        for i, msg in enumerate(messages):
            dead += len(parse_predictions(msg.value, cols, i, limits, msg.key))
    return {"deadletters": dead}


def run_pipeline(work: Workload, settings: Settings,
                 references: ReferenceStore | None = None) -> dict[str, int]:
    pipeline = PredictionProcessor(settings, TOPIC, references)
    windows = alerts = dead = folded = 0
    triggers: dict[str, int] = {}
    for messages, now in work.chunks:
        box = pipeline.process(messages, now)
        windows += len(box.stats)
        alerts += len(box.alerts)
        dead += len(box.deadletters)
        folded += box.events
        for _, a in box.alerts:
            if a["event_action"] == "trigger":
                cls = a["payload"]["class"]
                triggers[cls] = triggers.get(cls, 0) + 1
    info = {"windows": windows, "alerts": alerts, "deadletters": dead, "folded": folded}
    if references is not None:
        info["skew_alerts"] = triggers.get(SKEW_CHECK, 0)
        info["drift_alerts"] = sum(triggers.get(c, 0) for c in DRIFT_CHECKS)
        info["quality_alerts"] = triggers.get(QUALITY_CHECK, 0)
        # (series, feature) pairs compared with a reference, at the end of the run
        # (private layout of streams.core.monitor: read defensively, a sanity figure only)
        info["compared"] = sum(len(getattr(s, "skew", ())) for mon in pipeline.monitors.values()
                               for s in getattr(mon, "series", {}).values())
    return info


Runner = Callable[[Workload, Settings], dict[str, int]]
Stages = tuple[tuple[str, Runner], ...]


def skew_only(settings: Settings) -> Settings:
    """``settings`` with drift and quality off: skew is the only reference check."""
    return settings.model_copy(update={
        "drift": settings.drift.model_copy(update={"enabled": False}),
        "quality": settings.quality.model_copy(update={"enabled": False})})


def windowed(settings: Settings) -> Settings:
    """``settings`` with skew and drift on their windowed test (``test="window"``)."""
    return settings.model_copy(update={
        "skew": settings.skew.model_copy(update={"test": "window"}),
        "drift": settings.drift.model_copy(update={"test": "window"})})


WINDOW_ROWS = {"pipeline+skew/window": "pipeline+skew", "pipeline+all/window": "pipeline+all"}


def stages(settings: Settings, references: ReferenceStore, window: bool = False) -> Stages:
    """The rows, in order; the last ones are ``pipeline`` given the reference profiles
    (``window``: also ``pipeline+skew`` and ``pipeline+all`` with the windowed tests)."""
    skew_settings = skew_only(settings)

    def run_skew(work: Workload, settings: Settings) -> dict[str, int]:
        return run_pipeline(work, skew_settings, references)

    def run_all(work: Workload, settings: Settings) -> dict[str, int]:
        return run_pipeline(work, settings, references)

    skew_window, all_window = windowed(skew_settings), windowed(settings)

    def run_skew_window(work: Workload, settings: Settings) -> dict[str, int]:
        return run_pipeline(work, skew_window, references)

    def run_all_window(work: Workload, settings: Settings) -> dict[str, int]:
        return run_pipeline(work, all_window, references)

    labelled = settings.model_copy(update={
        "labels": settings.labels.model_copy(update={"enabled": True})})

    def run_labels(work: Workload, settings: Settings) -> dict[str, int]:
        return run_pipeline(work, labelled, references)

    rows: Stages = (("baseline", run_baseline), ("parse", run_parse),
                    ("pipeline", run_pipeline), ("pipeline+skew", run_skew))
    if window:
        rows += (("pipeline+skew/window", run_skew_window),)
    rows += (("pipeline+all", run_all),)
    if window:
        rows += (("pipeline+all/window", run_all_window),)
    return rows + (("pipeline+all+labels", run_labels),)


def timed(run: Runner, work: Workload, settings: Settings) -> tuple[float, float, dict[str, int]]:
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    info = run(work, settings)
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0, info


def traced_peak(run: Runner, work: Workload, settings: Settings) -> int:
    """Peak Python-heap bytes allocated during one (untimed) run."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run(work, settings)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def measure(works: Sequence[Workload], settings: Settings, rows: Stages, repeat: int,
            memory: bool) -> list[Result]:
    results = {(w.form, stage): Result(w.form, stage, w.events)
               for w in works for stage, _ in rows}
    # Warm-up: imports, Polars' thread pool, first-call caches.
    for w in works:
        for _, run in rows:
            run(Workload(w.form, 0, w.chunks[:2]), settings)
    for _ in range(repeat):  # rows interleaved, so slow spells of the machine hit all of them
        for w in works:
            for stage, run in rows:
                wall, cpu, info = timed(run, w, settings)
                res = results[(w.form, stage)]
                res.wall.append(wall)
                res.cpu.append(cpu)
                for key, value in info.items():
                    setattr(res, key, value)
    if memory:
        for w in works:
            for stage, run in rows:
                results[(w.form, stage)].py_peak = traced_peak(run, w, settings)
    return list(results.values())


# -- report -------------------------------------------------------------------


def maxrss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes vs KiB


def header(settings: Settings, events: int, repeat: int) -> str:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = f"{os.cpu_count()}" + (f" ({affinity} usable)" if affinity is not None else "")
    return "\n".join([
        "Sentinelle prediction path, no Kafka (Faust's ~200 µs/message not included)",
        f"python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.machine()}, {cpus} CPUs, "
        f"polars {pl.__version__} ({pl.thread_pool_size()} threads), "
        f"orjson {orjson.__version__}, numpy {np.__version__}",
        f"{events:,} events per row, {len(MODELS)} models at {RATE:g} events/s each "
        f"(event time), windows of {settings.windows.size_s:g} s; "
        f"micro-batches: {SINGLE_PER_CALL} single messages or {BATCH_PER_CALL} batch "
        f"messages of {BATCH_EVENTS} events; best of {repeat} run{'s' if repeat > 1 else ''}",
        f"every event carries {FEATURES} features ({len(NUMERIC)} numeric, "
        f"{len(CATEGORICAL)} categorical) and a numeric prediction; pipeline+skew and "
        f"pipeline+all compare them with one reference profile per (model, version)",
        f"every pipeline row runs the other capabilities as Settings() has them: "
        f"{other_capabilities(settings)}",
        f"the sequential tests' CUSUMs run in the {sequential_loop()}",
    ])


def vs_pipeline(results: Sequence[Result], r: Result) -> float | None:
    """Events/s of a ``pipeline*`` row over those of ``pipeline`` in the same wire form."""
    plain = [p.rate for p in results if p.stage == "pipeline" and p.form == r.form]
    return r.rate / plain[0] if plain and r.stage.startswith("pipeline") else None


def table(results: Sequence[Result], memory: bool) -> str:
    cols = ["form", "stage", "events/s", "µs/event", "cpu µs/ev", "vs base", "vs pipe",
            "spread", "py peak MiB", "windows", "alerts", "skew alerts"]
    base = {r.form: r.rate for r in results if r.stage == "baseline"}
    rows = []
    for r in results:
        def opt(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"
        ratio = vs_pipeline(results, r)
        vs_pipe = "-" if ratio is None else f"{ratio:.3f}"
        rows.append([
            r.form, r.stage, f"{r.rate:,.0f}", f"{r.us_per_event:.2f}",
            f"{r.cpu_us_per_event:.2f}", f"{r.rate / base[r.form]:.3f}", vs_pipe,
            f"{r.spread:.0%}", f"{r.py_peak / 2**20:.1f}" if memory else "-",
            opt(r.windows), opt(r.alerts), opt(r.skew_alerts),
        ])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    left = {0, 1}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(cols), line(["-" * w for w in widths])]
    form = None
    for r, row in zip(results, rows, strict=True):
        if form is not None and r.form != form:
            out.append("")
        form = r.form
        out.append(line(row))
    return "\n".join(out)


def other_capabilities(settings: Settings) -> str:
    """Settings sections, besides the reference checks, that add work to every pipeline row."""
    labels = getattr(settings, "labels", None)
    if labels is None:
        return "none besides the skeleton's"
    return (f"label join {'on' if labels.enabled else 'off'} "
            f"(SENTINELLE_LABELS__ENABLED=false leaves it out)")


def reference_checks(settings: Settings) -> str:
    """The checks a reference profile turns on, as configured."""
    on = [name for name, section in (("skew", settings.skew), ("drift", settings.drift),
                                     ("quality", settings.quality)) if section.enabled]
    return ", ".join(on) or "none"


def skew_summary(results: Sequence[Result], settings: Settings) -> list[str]:
    """The acceptance figure per wire form, and what the reference checks raised."""
    sk = settings.skew
    per_model = -(-results[0].events // len(MODELS)) if results else 0
    tests = max(0, per_model // sk.hop_events - sk.window_events // sk.hop_events + 1)
    checks_of = {"pipeline+skew": reference_checks(skew_only(settings)),
                 "pipeline+all": reference_checks(settings)}
    checks_of.update({w: checks_of[s] + ", windowed tests" for w, s in WINDOW_ROWS.items()})
    lines = []
    for r in results:
        ratio = vs_pipeline(results, r)
        if r.stage not in checks_of or ratio is None:
            continue
        verdict = "meets" if ratio >= 0.5 else "MISSES"
        lines.append(f"{r.form}/{r.stage} ({checks_of[r.stage]} on, {FEATURES} features + "
                     f"prediction): {ratio:.0%} of the skeleton pipeline rate ({verdict} "
                     f">= 50%); triggered: skew {r.skew_alerts}, drift {r.drift_alerts}, "
                     f"quality {r.quality_alerts}")
    lines.append(f"skew windows of {sk.window_events:,} values tested every "
                 f"{sk.hop_events:,}: about {tests:,} tests per (model, feature) per run, "
                 f"{len(MODELS) * (FEATURES + 1) * tests:,} in all; stationary data, so "
                 f"about no alert is expected")
    return lines


def test_comparison(results: Sequence[Result]) -> list[str]:
    """Per wire form, the sequential rows against their windowed twins (``--window``): the
    rows' µs per event, and the reference checks' own (the row's over ``pipeline``'s)."""
    by = {(r.form, r.stage): r for r in results}
    lines = []
    for r in results:
        if r.stage not in WINDOW_ROWS.values():
            continue
        w = next((by[(r.form, k)] for k, v in WINDOW_ROWS.items()
                  if v == r.stage and (r.form, k) in by), None)
        plain = by.get((r.form, "pipeline"))
        if w is None or plain is None:
            continue
        seq_cost = r.us_per_event - plain.us_per_event
        win_cost = w.us_per_event - plain.us_per_event
        own = f"{seq_cost / win_cost:.2f}" if win_cost > 0 else "n/a"
        lines.append(f"{r.form}/{r.stage}: sequential {r.us_per_event:.2f} vs window "
                     f"{w.us_per_event:.2f} µs/event "
                     f"(ratio {r.us_per_event / w.us_per_event:.2f}); "
                     f"the checks alone, over the pipeline row: {seq_cost:.2f} vs "
                     f"{win_cost:.2f} µs/event (ratio {own})")
    return lines


DETECTOR_CALLS = (667, 2_000, 10_000)   # values per feature per update() call


def detector_costs(references: ReferenceStore, settings: Settings, repeat: int
                   ) -> list[str]:
    """The skew and drift detectors alone, sequential against windowed: µs per event for
    a model's 13 features (12 and the prediction) fed stationary values of the training
    distribution, at :data:`DETECTOR_CALLS` values per call (the pipeline rows' micro-
    batch gives 667 per model), each call followed by the detector's checkpoint
    (``to_dict``, as the worker writes its state after each micro-batch), best of
    ``repeat`` runs after a warm-up that fills the windows, the two tests' runs
    alternated."""
    from detectors.drift import DriftDetector
    from detectors.skew import SkewDetector
    from streams.core.series import categories, numbers

    spec = MODELS[0]
    ref = references.get(spec.model, spec.version)
    assert ref is not None
    cols = draw_columns(np.random.default_rng(SEED + 7), 60_000)  # features, prediction
    data = {}
    for name, fr in ref.features.items():
        values = cols.get(name)
        if values is None:
            continue
        ts = np.arange(len(values), dtype=float)
        if fr.bins.kind == "numeric":   # binned as streams.core.series.compare does it
            x = numbers(values)
            ok = np.isfinite(x)
            data[name] = {"ts": ts[ok], "bin": fr.bins.bin_numeric(x[ok]), "value": x[ok]}
        else:
            present, cats = categories(values)
            data[name] = {"ts": ts[present], "bin": fr.bins.bin_categories(cats),
                          "category": np.array(cats, dtype=object)}

    def make(kind: str, test: str) -> list[Any]:
        out: list[Any] = []
        for name in data:
            fr = ref.features[name]
            out.append(SkewDetector(spec.model, spec.version, name, bins=fr.bins,
                                    calibration=fr.skew, test=test, reference_size=ref.rows,
                                    bank=fr.bank) if kind == "skew" else
                       DriftDetector(spec.model, spec.version, name, bins=fr.bins,
                                     calibration=fr.drift,
                                     baseline_factor=settings.drift.baseline_factor,
                                     test=test))
        return out

    def costs(kind: str, per_call: int) -> dict[str, float]:
        """µs per event, sequential and windowed, their timed runs alternated (so that a
        slow spell of the machine hits both)."""
        tests = ("sequential", "window")
        n = min(len(batch["bin"]) for batch in data.values())

        def feed(dets: list[Any], lo: int) -> None:   # a micro-batch, then its checkpoint
            for det, batch in zip(dets, data.values(), strict=True):
                det.update({key: v[lo:lo + per_call] for key, v in batch.items()})
                det.to_dict()

        best = dict.fromkeys(tests, math.inf)
        for r in range(repeat):
            for test in (tests if r % 2 == 0 else tests[::-1]):
                dets = make(kind, test)   # afresh each run: the same values as the other's
                for lo in range(0, 20_000, per_call):   # warm-up: windows and baseline full
                    feed(dets, lo)
                start = time.perf_counter()
                calls = 0
                for lo in range(20_000, n - per_call + 1, per_call):
                    feed(dets, lo)
                    calls += 1
                best[test] = min(best[test],
                                 (time.perf_counter() - start) / (calls * per_call) * 1e6)
        return best

    lines = [f"the detectors alone ({len(data)} features of {spec.model}, stationary "
             f"values, each call and its checkpoint, best of {repeat} runs alternated with the "
             f"other test's; µs per event for all of them): sequential vs window"]
    for per_call in DETECTOR_CALLS:
        parts = []
        for kind in ("skew", "drift"):
            best = costs(kind, per_call)
            seq, win = best["sequential"], best["window"]
            parts.append(f"{kind} {seq:.2f} vs {win:.2f} (ratio {seq / win:.2f})")
        lines.append(f"  {per_call:>6,} values per call: " + "; ".join(parts))
    return lines


def checks(results: Sequence[Result]) -> list[str]:
    """Sanity notes: every event folded, windows closed, nothing dead-lettered, skew ran."""
    notes = []
    for r in results:
        if r.deadletters:
            notes.append(f"warning: {r.form}/{r.stage} dead-lettered {r.deadletters:,} events")
        if not r.stage.startswith("pipeline"):
            continue
        if r.folded != r.events:
            notes.append(f"warning: {r.form}/{r.stage} folded {r.folded:,} of {r.events:,} "
                         f"events")
        if not r.windows:
            notes.append(f"warning: {r.form}/{r.stage} closed no window")
        want = len(MODELS) * (FEATURES + 1)
        if r.stage != "pipeline" and r.compared != want:
            notes.append(f"warning: {r.form}/{r.stage} compared {r.compared} (series, feature) "
                         f"pairs with a reference, not {want} ({len(MODELS)} models x "
                         f"{FEATURES + 1})")
    return notes


def plot(results: Sequence[Result], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; not drawing {path}")
        return
    labels = [f"{r.form}\n{r.stage}" for r in results]
    colours = {"baseline": "#999999", "parse": "#4c72b0", "pipeline": "#dd8452",
               "pipeline+skew": "#c44e52", "pipeline+all": "#8172b3",
               "pipeline+all+labels": "#937860", "pipeline+skew/window": "#e8a0a2",
               "pipeline+all/window": "#b7addb"}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    bars = ax.bar(labels, [r.rate for r in results], color=[colours[r.stage] for r in results])
    ax.bar_label(bars, labels=[f"{r.rate:,.0f}" for r in results], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    ax.set_title(f"Sentinelle prediction path, {results[0].events:,} events per row "
                 f"(python {platform.python_version()}, {os.cpu_count()} CPUs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=60_000, metavar="N",
                        help="events per row (default 60,000)")
    parser.add_argument("--repeat", type=int, default=3, metavar="R",
                        help="timed runs per row; the fastest is reported (default 3)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the tracemalloc pass (it takes about half of the run)")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of events/s per row")
    parser.add_argument("--window", action="store_true",
                        help="also run pipeline+skew and pipeline+all with skew.test and "
                             "drift.test = window, and print sequential over window")
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be at least 1")

    # The skeleton: no label join (the +labels row adds it, with the reference checks).
    settings = Settings(labels={"enabled": False})  # type: ignore[arg-type]
    limit_threads(settings.worker.blas_threads)  # as the worker does
    started = time.perf_counter()
    rss_before = maxrss_mib()
    events = make_events(args.events)
    works = [single_form(events, settings.kafka.partitions),
             batch_form(events, settings.kafka.partitions)]
    del events
    gc.collect()
    rss_inputs = maxrss_mib()
    built = time.perf_counter() - started
    t0 = time.perf_counter()
    profiles = training_profiles()
    t1 = time.perf_counter()
    references = reference_store(settings, profiles)
    t2 = time.perf_counter()
    tune_gc()  # as the worker does once its first micro-batch arrives

    print(header(settings, args.events, args.repeat))
    print()
    results = measure(works, settings, stages(settings, references, args.window),
                      args.repeat, not args.no_memory)
    print(table(results, not args.no_memory))
    print()
    for line in skew_summary(results, settings):
        print(line)
    for line in test_comparison(results):
        print(line)
    if args.window:
        for line in detector_costs(references, settings, args.repeat):
            print(line)
    for note in checks(results):
        print(note)
    print(f"inputs built in {built:.1f} s; {len(profiles)} reference profiles of "
          f"{TRAIN_ROWS:,} training rows built in {t1 - t0:.1f} s (build_profile), "
          f"calibrated in {t2 - t1:.1f} s (ReferenceStore.add); process peak RSS "
          f"(ru_maxrss) {maxrss_mib():.0f} MiB, building the inputs took it up "
          f"{rss_inputs - rss_before:.0f} MiB; total {time.perf_counter() - started:.1f} s")
    print("vs base: events/s over the baseline (orjson.loads) of the same wire form; "
          "vs pipe: over the plain pipeline row of the same wire form; "
          "spread: slowest run over fastest, minus one; py peak: tracemalloc, "
          "Polars' Rust buffers not included; skew alerts: training_serving_skew triggers")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
