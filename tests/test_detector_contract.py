"""Checks every detector must pass, whatever it detects (River's ``test_estimators.py``).

**Discovery.** Every public class defined in a ``detectors/*.py`` module with an
``update`` method is a detector; nothing is listed by hand, so a new detector is
in the suite the moment it exists, and :func:`test_every_detector_is_in_the_suite`
fails until it can be checked: it must follow the :class:`~detectors.base.Detector`
protocol, give its own test parameters (``_unit_test_params``, River's way), read
columns some stream below produces, and, if the wall clock drives it too (a
``check`` method), have its clock here.

**Streams.** One healthy and one shifted stream per kind of input (closed
windows, arrivals, binned values, feature rows, labelled predictions, run
events, validations, pool usage, metric points), built for the detector at
hand (its bins, its specs, its identity) from a seed; a detector is fed the
kind whose columns cover its ``inputs`` with the fewest extra ones.

**Checks**, for every parameter set of every detector: it is a ``Detector``;
parameters are stored by name and not changed by learning; defaults are
immutable; every numeric parameter refuses NaN and -1, a bad severity and the
class's own bad values (:data:`INVALID`) with ``ValueError``; healthy input
raises no active signal; a shift raises one; signals are well formed (their key
extends the detector's ``key``); two runs on one seed agree; and a JSON round
trip of ``to_dict``/``load_dict`` mid-stream changes nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detectors.base import Batch, Detector, Signal
from detectors.contract import ALERT_CLASSES, SEVERITIES
from detectors.pipelines import RunInfo
from detectors.windows import WindowStats

DETECTORS_DIR = Path(__file__).resolve().parents[1] / "detectors"
SEED = 42
SIZE = 60.0
T0 = 1_795_000_000.0


def discover() -> list[type]:
    """Every public class of ``detectors/*.py`` that defines an ``update`` method (not the
    protocol itself, nor a typed dict)."""
    found = []
    for path in sorted(DETECTORS_DIR.glob("*.py")):
        module = importlib.import_module(f"detectors.{path.stem}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and not name.startswith("_") and callable(vars(obj).get("update"))
                    and not getattr(obj, "_is_protocol", False)):
                found.append(obj)
    return found


DETECTORS = discover()


@dataclass(frozen=True)
class Clock:
    """A wall-clock check at ``now``, with the runs in flight (for stalls)."""

    now: float
    runs: tuple[RunInfo, ...] = ()


Step = Any  # a Batch, or a Clock
Stream = list[Step]

#: How the wall clock drives the detectors that watch silence.
CLOCKS: dict[str, Callable[[Any, Clock], list[Signal]]] = {
    "OutageDetector": lambda det, c: det.check(c.now),
    "StallWatch": lambda det, c: det.check(list(c.runs), c.now),
}

#: Bad values of each class's own (beyond NaN, -1 and a bad severity, which every
#: numeric parameter and every severity is checked with).
INVALID: dict[str, list[dict[str, Any]]] = {
    "LatencyThreshold": [{"threshold_ms": 0.0}, {"min_events": 0}],
    "BurnRate": [{"objective": 0.0}, {"objective": 1.0}, {"sli": "throughput"},
                 {"rules": ()}],
    "ErrorRateSpike": [{"threshold": 0.0}, {"threshold": 1.0}, {"factor": 0.5},
                       {"alpha": 0.0}, {"alpha": 1.5}],
    "OutageDetector": [{"k": 0.0}, {"floor_s": 0.0}, {"alpha": 0.0}, {"alpha": 1.5}],
    "SkewDetector": [{"check": "feature_drift"}, {"feature": "another"}],
    "DriftDetector": [{"baseline_factor": 0}, {"feature": "another"}],
    "QualityDetector": [{"window": 0}, {"run_length": 10.0}, {"min_excess": 1.0}],
    "PerformanceCheck": [{"window": 5}, {"run_length": 10.0}],
    "ConfidenceEstimate": [{"window": 5}, {"min_drop": 1.0}],
    "FailureStreak": [{"critical_after": 0}],
    "StallWatch": [{"floor_s": 0.0}, {"ceiling_s": 1.0}, {"factor": 0.0}, {"min_runs": 0}],
    "DurationAnomaly": [{"min_runs": 1}, {"threshold": 1.0}, {"accept_after": 0}],
    "ValidationGate": [{"lower_is_better": ("(",)}, {"ignore": ("[",)}],
    "QuotaForecast": [{"critical_share": 1.5}, {"errant_share": 0.0}, {"min_points": 1},
                      {"window_s": 0.0}],
    "MetricAnomalyDetector": [{"threshold": 1.0}, {"threshold": 0.0}, {"season_s": 0.0}],
}


# -- streams, one kind per input --------------------------------------------------------------


def _window(det: Any, i: int, count: int, errors: int, slow: int, p99: float) -> WindowStats:
    return WindowStats(det.model, det.version, det.cohort, T0 + i * SIZE, T0 + (i + 1) * SIZE,
                       count, errors, slow, p99 / 3, p99 / 1.5, p99, p99 * 1.1)


def _in_batches(windows: list[WindowStats], seed: int) -> Stream:
    """Closed windows, one to three per micro-batch."""
    rng = np.random.default_rng(seed)
    out: Stream = []
    i = 0
    while i < len(windows):
        k = int(rng.integers(1, 4))
        out.append({"windows": windows[i:i + k]})
        i += k
    return out


def windows_healthy(det: Any, seed: int) -> Stream:
    return _in_batches([_window(det, i, 200, 0, 0, 80.0) for i in range(400)], seed)


def windows_shifted(det: Any, seed: int) -> Stream:
    """120 windows: healthy with noise (some under any min_events), then a sustained
    incident (slow and failing) from window 70."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(120):
        count = int(rng.integers(5, 400))
        err_p, slow_p = (0.4, 0.5) if i >= 70 else (0.01, 0.002)
        p99 = float(rng.lognormal(7.0 if i >= 70 else 4.5, 0.2))
        out.append(_window(det, i, count, int(rng.binomial(count, err_p)),
                           int(rng.binomial(count, slow_p)), p99))
    return _in_batches(out, seed)


def _arrive(t: float) -> Batch:
    return {"ts": np.array([t])}


def arrivals_healthy(det: Any, seed: int) -> Stream:
    out: Stream = []
    for i in range(500):
        out += [_arrive(T0 + i), Clock(T0 + i + 0.5), Clock(T0 + i + 0.99)]
    return out


def arrivals_shifted(det: Any, seed: int) -> Stream:
    """Poisson-ish arrivals (some micro-batches hold several), an hour of silence, then
    traffic again; checks every 7 s."""
    rng = np.random.default_rng(seed)
    times = T0 + np.cumsum(rng.exponential(2.0, size=300))
    times[200:] += 3600.0
    out: Stream = []
    check, i = T0, 0
    while i < times.size:
        if check < times[i]:
            out.append(Clock(check))
            check += 7.0
            continue
        k = 1 + int(rng.integers(0, 3)) * (i % 5 == 0)
        out.append({"ts": times[i:i + k]})
        i += k
    return out


def _draw_bins(det: Any, rng: np.random.Generator, shares: np.ndarray, n: int) -> Batch:
    bins = det.bins
    idx = rng.choice(bins.size, size=n, p=shares)
    if bins.kind == "numeric":
        edges = np.concatenate([[bins.lo], bins.inner_edges, [bins.hi]])
        x = edges[idx] + rng.random(n) * (edges[idx + 1] - edges[idx])
        return {"bin": bins.bin_numeric(x), "value": x}
    names = [*bins.labels[:-2], "somewhere-else", "never-seen"]
    cats = [names[i] for i in idx]
    return {"bin": bins.bin_categories(cats), "category": cats}


def _binned(det: Any, seed: int, shifted: bool) -> Stream:
    rng = np.random.default_rng(seed)
    ref = det.bins.reference
    moved = np.roll(ref, max(1, ref.size // 3))
    moved = np.where(moved > 0, moved, 0.0) + (ref == 0) * 0.0
    out: Stream = []
    n = 0
    for part, shares in enumerate((ref, ref, moved if shifted else ref)):
        for _ in range(12):
            size = 333 + 7 * part
            b = _draw_bins(det, rng, shares / shares.sum(), size)
            b["ts"] = T0 + np.arange(n, n + size, dtype=float)
            n += size
            out.append(b)
    return out


def binned_healthy(det: Any, seed: int) -> Stream:
    return _binned(det, seed, False)


def binned_shifted(det: Any, seed: int) -> Stream:
    return _binned(det, seed, True)


def _feature_rows(det: Any, seed: int, shifted: bool) -> Stream:
    rng = np.random.default_rng(seed)
    out: Stream = []
    n = 0
    for part in range(3):
        extra = 0.2 if shifted and part == 2 else 0.0
        for _ in range(8):
            size = 401
            rows: list[dict[str, Any] | None] = []
            for _ in range(size):
                row: dict[str, Any] = {}
                for spec in det.specs:
                    if rng.random() < spec.missing_rate + extra:
                        continue
                    if spec.kind == "numeric":
                        lo = spec.lo if math.isfinite(spec.lo) else 0.0
                        hi = spec.hi if math.isfinite(spec.hi) else 1.0
                        row[spec.name] = float(lo + rng.random() * (hi - lo))
                    else:
                        row[spec.name] = str(rng.choice(["FR", "DE"]))
                rows.append(row or None)
            out.append({"ts": T0 + np.arange(n, n + size, dtype=float), "features": rows})
            n += size
    return out


def rows_healthy(det: Any, seed: int) -> Stream:
    return _feature_rows(det, seed, False)


def rows_shifted(det: Any, seed: int) -> Stream:
    return _feature_rows(det, seed, True)


def _labelled(det: Any, seed: int, shifted: bool) -> Stream:
    """A classifier right 90 % of the time with confident scores; shifted, its last third
    is right 60 % of the time with hesitant scores."""
    rng = np.random.default_rng(seed)
    out: Stream = []
    n = 0
    for part in range(3):
        bad = shifted and part == 2
        for _ in range(6):
            size = 317
            y = (rng.random(size) < 0.3).astype(int)
            right = rng.random(size) < (0.6 if bad else 0.9)
            conf = rng.uniform(0.5, 0.7, size) if bad else rng.uniform(0.8, 1.0, size)
            p = np.where(right == (y == 1), conf, 1 - conf)
            out.append({"ts": T0 + np.arange(n, n + size, dtype=float),
                        "prediction": p.tolist(), "label": y.tolist()})
            n += size
    return out


def labelled_healthy(det: Any, seed: int) -> Stream:
    return _labelled(det, seed, False)


def labelled_shifted(det: Any, seed: int) -> Stream:
    return _labelled(det, seed, True)


def _run(t: float, run_id: str, status: str, duration: float | None = None,
         error: str | None = None) -> Batch:
    return {"ts": np.array([t]), "run_id": [run_id], "status": [status], "error": [error],
            "duration_s": [duration]}


def _runs(det: Any, seed: int, shifted: bool) -> Stream:
    """Runs of about 100 s, one every 200 s, checked every 10 s; shifted, three failures, a
    run ten times slower and a run that goes silent (then speaks again)."""
    rng = np.random.default_rng(seed)
    out: Stream = []
    t = T0
    for i in range(40):
        run_id = f"r{i}"
        duration = float(rng.lognormal(math.log(100), 0.05))
        status = "succeeded"
        if shifted and i >= 25:
            if i in (25, 26, 27):
                status = "failed"
            elif i == 30:
                duration *= 10
        out.append(_run(t, run_id, "started"))
        info = RunInfo(run_id, "training", t, t)
        if shifted and i == 33:  # silent for an hour, then a heartbeat
            out += [Clock(t + s, (info,)) for s in range(10, 3600, 60)]
            out.append(_run(t + 3600, run_id, "heartbeat"))
            t += 3600
            info = RunInfo(run_id, "training", info.started_ts, t)
        out += [Clock(t + s, (info,)) for s in range(10, int(duration), 10)]
        out.append(_run(t + duration, run_id, status, duration,
                        "CUDA out of memory" if status == "failed" else None))
        t += 200.0
    return out


def runs_healthy(det: Any, seed: int) -> Stream:
    return _runs(det, seed, False)


def runs_shifted(det: Any, seed: int) -> Stream:
    return _runs(det, seed, True)


def _validations(det: Any, seed: int, shifted: bool) -> Stream:
    rng = np.random.default_rng(seed)
    out: Stream = []
    for i in range(12):
        auc = 0.9 + float(rng.normal(0, 0.001))
        if shifted and i == 9:
            auc = 0.8
        metrics = {"auc": auc, "logloss": 0.3 + float(rng.normal(0, 0.0005)),
                   "rows": float(rng.integers(1000, 100_000))}
        out.append({"ts": np.array([T0 + i * 3600.0]), "model": ["m"], "version": [f"v{i}"],
                    "metrics": [metrics]})
    return out


def validations_healthy(det: Any, seed: int) -> Stream:
    return _validations(det, seed, False)


def validations_shifted(det: Any, seed: int) -> Stream:
    return _validations(det, seed, True)


def _usage(det: Any, seed: int, shifted: bool) -> Stream:
    """Points every 15 min for a day and a half; a pool of 1,000 used at 1 an hour; shifted,
    a run that uses 40 an hour from hour 22.5 on."""
    rng = np.random.default_rng(seed)
    out: Stream = []
    used = 100.0
    run_used = 0.0
    for i in range(144):
        t = T0 + i * 900.0
        greedy = shifted and i >= 90
        step = 0.25 + (10.0 if greedy else 0.0)
        run_used += 10.0 if greedy else float(rng.uniform(0, 0.01))
        used += step
        rows = [("nightly", "n1", 0.25 * i), ("hyperopt", "h1", run_used)]
        out.append({"ts": np.array([t, t + 1.0]), "pipeline": [p for p, _, _ in rows],
                    "run_id": [r for _, r, _ in rows], "status": ["heartbeat"] * 2,
                    "run_used": [u for _, _, u in rows], "used": [None, used],
                    "limit": [None, 1000.0]})
    return out


def usage_healthy(det: Any, seed: int) -> Stream:
    return _usage(det, seed, False)


def usage_shifted(det: Any, seed: int) -> Stream:
    return _usage(det, seed, True)


def _metric(det: Any, seed: int, shifted: bool) -> Stream:
    """Four days of a daily cycle every 5 min, in micro-batches; shifted, a spike on day 3.5."""
    rng = np.random.default_rng(seed)
    n = 4 * 288
    ts = T0 + 300.0 * np.arange(n)
    x = 50 + 20 * np.sin(2 * np.pi * ts / 86400) + rng.normal(0, 2, n)
    if shifted:
        x[int(3.5 * 288)] += 60.0
    return [{"ts": ts[i:i + 37], "value": x[i:i + 37]} for i in range(0, n, 37)]


def metric_healthy(det: Any, seed: int) -> Stream:
    return _metric(det, seed, False)


def metric_shifted(det: Any, seed: int) -> Stream:
    return _metric(det, seed, True)


@dataclass(frozen=True)
class Kind:
    name: str
    columns: frozenset[str]
    healthy: Callable[[Any, int], Stream]
    shifted: Callable[[Any, int], Stream]


KINDS = [
    Kind("windows", frozenset({"windows"}), windows_healthy, windows_shifted),
    Kind("arrivals", frozenset({"ts"}), arrivals_healthy, arrivals_shifted),
    Kind("binned values", frozenset({"ts", "bin", "value", "category"}), binned_healthy,
         binned_shifted),
    Kind("feature rows", frozenset({"ts", "features"}), rows_healthy, rows_shifted),
    Kind("labelled predictions", frozenset({"ts", "prediction", "label"}), labelled_healthy,
         labelled_shifted),
    Kind("run events", frozenset({"ts", "run_id", "status", "error", "duration_s"}),
         runs_healthy, runs_shifted),
    Kind("validations", frozenset({"ts", "model", "version", "metrics"}), validations_healthy,
         validations_shifted),
    Kind("pool usage", frozenset({"ts", "pipeline", "run_id", "status", "run_used", "used",
                                  "limit"}), usage_healthy, usage_shifted),
    Kind("metric points", frozenset({"ts", "value"}), metric_healthy, metric_shifted),
]


def kind_of(cls: type) -> Kind | None:
    """The stream kind that covers the class's inputs with the fewest extra columns."""
    inputs = set(getattr(cls, "inputs", ()))
    fits = [k for k in KINDS if inputs <= k.columns]
    return min(fits, key=lambda k: len(k.columns)) if fits else None


# -- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    cls: type
    params: dict[str, Any]
    index: int

    def __str__(self) -> str:
        return f"{self.cls.__name__}-{self.index}"

    def make(self, **override: Any) -> Any:
        return self.cls(**{**self.params, **override})

    @property
    def kind(self) -> Kind:
        kind = kind_of(self.cls)
        assert kind is not None
        return kind

    def feed(self, det: Any, stream: Stream) -> list[Signal]:
        out: list[Signal] = []
        clock = CLOCKS.get(self.cls.__name__)
        for step in stream:
            if isinstance(step, Clock):
                if clock is None:
                    continue  # the clock drives only the detectors of silence
                said = clock(det, step)
            else:
                said = det.update(step)
            assert isinstance(said, list)
            out.extend(said)
        return out


def _cases() -> Iterator[Case]:
    for cls in DETECTORS:
        make_params = getattr(cls, "_unit_test_params", None)
        for i, params in enumerate(make_params() if make_params else ()):
            yield Case(cls, params, i)


CASES = list(_cases())
cases = pytest.mark.parametrize("case", CASES, ids=str)
classes = pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)


def _canonical(value: Any) -> Any:
    """A comparable form of a parameter (frozen dataclasses may hold numpy arrays)."""
    if isinstance(value, np.ndarray):
        return ("array", value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,
                tuple(_canonical(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    return value


def _immutable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, frozenset)):
        return True
    if isinstance(value, tuple):
        return all(_immutable(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(type(value), "__dataclass_params__", None)
        return bool(params is not None and params.frozen)
    return False


# -- the checks -------------------------------------------------------------------------------


def test_discovery_finds_the_detectors() -> None:
    names = {c.__name__ for c in DETECTORS}
    assert {"LatencyThreshold", "BurnRate", "ErrorRateSpike", "OutageDetector",
            "SkewDetector", "DriftDetector", "QualityDetector", "PerformanceCheck",
            "ConfidenceEstimate", "FailureStreak", "StallWatch", "DurationAnomaly",
            "ValidationGate", "QuotaForecast", "MetricAnomalyDetector"} <= names


@classes
def test_every_detector_is_in_the_suite(cls: type) -> None:
    name = cls.__name__
    assert hasattr(cls, "_unit_test_params"), f"{name} gives no _unit_test_params()"
    params = list(cls._unit_test_params())  # type: ignore[attr-defined]
    assert params, f"{name}._unit_test_params() gives no parameters"
    assert kind_of(cls) is not None, f"no stream in this suite feeds {name}'s inputs"
    if callable(getattr(cls, "check", None)):
        assert name in CLOCKS, f"{name} is driven by the clock too: give it a CLOCKS entry"
    assert name in INVALID, f"{name}: list its own bad parameter values in INVALID"
    assert cls.__doc__ and ">>>" in cls.__doc__, f"{name} has no doctest example"


@cases
def test_follows_the_protocol(case: Case) -> None:
    det = case.make()
    assert isinstance(det, Detector)
    assert isinstance(det.inputs, tuple) and det.inputs
    assert set(det.inputs) <= set(Batch.__annotations__), "inputs must be Batch columns"
    assert isinstance(det.key, str) and det.key.split(":")[0] in ALERT_CLASSES
    orjson.dumps(det.to_dict())  # plain JSON from the start


@cases
def test_parameters_are_stored_by_name_and_learning_leaves_them(case: Case) -> None:
    det = case.make()
    names = [p for p in inspect.signature(case.cls).parameters if p != "self"]
    before = {n: _canonical(getattr(det, n)) for n in names}
    for n in names:
        if n in case.params:
            assert before[n] == _canonical(case.params[n]), f"{n} is not stored as given"
    case.feed(det, case.kind.shifted(det, SEED))
    assert {n: _canonical(getattr(det, n)) for n in names} == before


@classes
def test_defaults_are_immutable(cls: type) -> None:
    for p in inspect.signature(cls).parameters.values():
        if p.default is not inspect.Parameter.empty:
            assert _immutable(p.default), f"{cls.__name__}.{p.name} has a mutable default"


@cases
def test_bad_parameters_raise_value_error(case: Case) -> None:
    case.make()  # the test parameters are valid
    sig = inspect.signature(case.cls)
    for name, p in sig.parameters.items():
        value = case.params.get(name, p.default)
        if name == "severity":
            with pytest.raises(ValueError):
                case.make(severity="loud")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            for bad in (math.nan, -1):
                with pytest.raises(ValueError):
                    case.make(**{name: bad})
    for bad in INVALID.get(case.cls.__name__, []):
        with pytest.raises(ValueError):
            case.make(**bad)


#: Detectors that say nothing at all while all is well (a stall only speaks of stalls).
QUIET_WHEN_HEALTHY = frozenset({"StallWatch"})


@cases
def test_healthy_input_raises_nothing(case: Case) -> None:
    det = case.make()
    out = case.feed(det, case.kind.healthy(det, SEED))
    if case.cls.__name__ not in QUIET_WHEN_HEALTHY:
        assert out  # it did speak...
    assert not [s for s in out if s.active]  # ...and said "fine" every time


@cases
def test_a_shift_raises_a_signal(case: Case) -> None:
    det = case.make()
    assert any(s.active for s in case.feed(det, case.kind.shifted(det, SEED)))


@cases
def test_signals_are_well_formed(case: Case) -> None:
    det = case.make()
    for s in case.feed(det, case.kind.shifted(det, SEED)):
        assert isinstance(s, Signal)
        assert s.check in ALERT_CLASSES
        assert s.severity in SEVERITIES
        assert s.key == det.key or s.key.startswith(det.key + ":"), (s.key, det.key)
        assert isinstance(s.model, str) and isinstance(s.timestamp, float)
        orjson.dumps(s.details)


@cases
def test_deterministic_given_the_seed(case: Case) -> None:
    first = case.feed(case.make(), case.kind.shifted(case.make(), SEED))
    second = case.feed(case.make(), case.kind.shifted(case.make(), SEED))
    assert first == second
    # The stream exercises both states, so equality is about something.
    assert any(s.active for s in first) and any(not s.active for s in first)


@cases
@pytest.mark.parametrize("at", [1 / 3, 2 / 3])
def test_json_round_trip_mid_stream_gives_the_same_next_signals(case: Case, at: float) -> None:
    stream = case.kind.shifted(case.make(), SEED + 1)
    reference = case.feed(case.make(), stream)
    cut = int(len(stream) * at)
    det = case.make()
    out = case.feed(det, stream[:cut])
    state = orjson.loads(orjson.dumps(det.to_dict()))
    restored = case.make()
    restored.load_dict(state)
    assert orjson.dumps(restored.to_dict()) == orjson.dumps(det.to_dict())
    out += case.feed(restored, stream[cut:])
    assert out == reference
