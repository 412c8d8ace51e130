"""Pipeline runs: failures, stalls, anomalous durations and validation regressions.

One instance of each detector watches one pipeline (``ml.pipeline`` events are
keyed by pipeline). They are pure: the caller feeds them run events in order
and, for stalls, the wall clock.

- :class:`FailureStreak`: ``pipeline_failure`` on a ``failed`` run; severity
  rises with consecutive failures (``error``, then ``critical`` from
  ``critical_after``); the next ``succeeded`` run resolves it.
- :class:`StallWatch`: ``pipeline_stalled`` when a started run has sent neither
  heartbeat nor end for longer than the pipeline's expected duration: ``factor``
  x the p95 of its recent successful durations, clamped to ``[floor_s,
  ceiling_s]`` (``ceiling_s`` until ``min_runs`` runs are known). Wall clock:
  stalls are about silence. A heartbeat or the end resolves it.
- :class:`DurationAnomaly`: ``pipeline_duration_anomaly`` when a finished run's
  duration is anomalous for that pipeline: a Gaussian fitted to the recent
  log-durations (River's ``GaussianScorer``'s score, over the kept runs; run times are
  multiplicative: a 2x slowdown weighs the same for a 5-minute and a 5-hour
  pipeline), learned online, silent during its warm-up (``min_runs``). Score =
  2 |CDF - 0.5|; ``threshold`` 0.999 is 3.3 standard deviations. Anomalous runs
  are not learned, unless ``accept_after`` come in a row: the new level is then
  the normal one, learned afresh from those runs, with a new warm-up (a
  pipeline whose input doubled is not anomalous forever). The next normal run
  resolves it.
- :class:`ValidationGate`: ``validation_gate`` when a validation run's metrics
  for a model version regress, beyond ``tolerance`` (relative), against the
  previous version validated by the same pipeline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.base import Batch, Signal, check_severity
from detectors.contract import Severity, dedup_key

__all__ = ["FailureStreak", "StallWatch", "DurationAnomaly", "ValidationGate", "RunInfo"]

_KEPT_DURATIONS = 50  # recent durations learned, per pipeline (bounded memory)


@dataclass
class RunInfo:
    """What is known of one run in flight."""

    run_id: str
    kind: str
    started_ts: float          # event time of its first event
    last_wall: float           # wall clock of its last sign of life
    model: str | None = None
    version: str | None = None


class FailureStreak:
    """``pipeline_failure``: a failed run, severity rising with the streak.

    Every ended run (``status`` ``succeeded`` or ``failed``) gets a signal:
    active for a failure, ``critical`` from the ``critical_after``-th in a row;
    inactive for a success, which resets the streak. Other rows are ignored.

    Parameters
    ----------
    pipeline
        The pipeline.
    critical_after
        Failures in a row that page.
    severity
        Of a failure before that.

    Examples
    --------
    >>> import numpy as np
    >>> det = FailureStreak("fraud-daily-training")
    >>> status = ["succeeded", "failed", "failed", "failed", "succeeded"]
    >>> for s in det.update({"ts": np.arange(5.0), "run_id": [f"r{i}" for i in range(5)],
    ...                      "status": status, "error": [None, "OOM", "OOM", "OOM", None]}):
    ...     print(f"{s.timestamp:.0f}: {'ALERT' if s.active else 'ok'} {s.severity}: {s.summary}")
    0: ok error: fraud-daily-training: run r0 succeeded
    1: ALERT error: fraud-daily-training: run r1 failed (1 in a row): OOM
    2: ALERT error: fraud-daily-training: run r2 failed (2 in a row): OOM
    3: ALERT critical: fraud-daily-training: run r3 failed (3 in a row): OOM
    4: ok error: fraud-daily-training: run r4 succeeded
    """

    inputs = ("ts", "run_id", "status", "error")

    def __init__(self, pipeline: str, *, critical_after: int = 3,
                 severity: Severity = "error") -> None:
        if not critical_after >= 1:
            raise ValueError("critical_after must be >= 1")
        check_severity(severity)
        self.pipeline = pipeline
        self.critical_after = critical_after
        self.severity = severity
        self.streak = 0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"pipeline": "p"}
        yield {"pipeline": "p", "critical_after": 1, "severity": "warning"}

    @property
    def key(self) -> str:
        return dedup_key("pipeline_failure", self.pipeline)

    def update(self, batch: Batch) -> list[Signal]:
        """A signal per ended run."""
        return [self._end(run_id, status == "failed", ts, error)
                for run_id, status, ts, error in zip(batch["run_id"], batch["status"],
                                                     batch["ts"].tolist(), batch["error"],
                                                     strict=True)
                if status in ("succeeded", "failed")]

    def _end(self, run_id: str, failed: bool, ts: float, error: str | None) -> Signal:
        if not failed:
            self.streak = 0
            return Signal("pipeline_failure", self.key, False, self.severity,
                          f"{self.pipeline}: run {run_id} succeeded", ts, self.pipeline)
        self.streak += 1
        severity: Severity = ("critical" if self.streak >= self.critical_after
                              else self.severity)
        why = f": {error[:300]}" if error else ""
        return Signal("pipeline_failure", self.key, True, severity,
                      f"{self.pipeline}: run {run_id} failed ({self.streak} in a row){why}", ts,
                      self.pipeline, None,
                      {"run_id": run_id, "consecutive_failures": self.streak,
                       "error": (error or "")[:1000], "statistic": "consecutive_failures"})

    def to_dict(self) -> dict[str, Any]:
        return {"streak": self.streak}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.streak = int(d.get("streak", 0))


class StallWatch:
    """``pipeline_stalled``: a run silent for longer than the pipeline's expected duration.

    A stall is silence, which no batch carries: :meth:`check` is called on the
    wall clock (with the runs in flight, which the caller keeps) and raises the
    stalls. :meth:`update` takes the run events: a heartbeat or an end resolves
    its run's stall, and a ``succeeded`` run's ``duration_s`` is learned.

    Parameters
    ----------
    pipeline
        The pipeline.
    floor_s
        Never call a run stalled sooner.
    ceiling_s
        Silence that is always a stall (and the limit before ``min_runs`` runs).
    factor
        The limit is ``factor`` x the p95 of the recent successful durations.
    min_runs
        Successful runs known before the limit is learned.
    severity
        Of the alert.

    Examples
    --------
    Runs of about 100 s; a new run starts at 1,000 s on the wall clock and
    then says nothing. The worker's timer checks every 10 s.

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> det = StallWatch("churn-features", floor_s=60)
    >>> durations = rng.normal(100, 10, 20)
    >>> _ = det.update({"ts": np.arange(20.0), "run_id": [f"r{i}" for i in range(20)],
    ...                 "status": ["succeeded"] * 20, "duration_s": durations.tolist()})
    >>> run = RunInfo("r20", "data", started_ts=1000.0, last_wall=1000.0)
    >>> for now in range(1000, 1400, 10):
    ...     for s in det.check([run], float(now)):
    ...         print(f"{now} s: {s.key}, silent for {s.details['silent_s']:.0f} s > "
    ...               f"{s.details['expected_s']:.0f} s")
    1170 s: pipeline_stalled:churn-features:r20, silent for 170 s > 164 s
    >>> [s.active for s in det.update({"ts": np.array([1400.0]), "run_id": ["r20"],
    ...                                "status": ["heartbeat"], "duration_s": [None]})]
    [False]
    """

    inputs = ("ts", "run_id", "status", "duration_s")

    def __init__(self, pipeline: str, *, floor_s: float = 300.0, ceiling_s: float = 86400.0,
                 factor: float = 1.5, min_runs: int = 5, severity: Severity = "error") -> None:
        if not (floor_s > 0 and ceiling_s >= floor_s):
            raise ValueError("need 0 < floor_s <= ceiling_s")
        if not (factor > 0 and min_runs >= 1):
            raise ValueError("factor must be > 0 and min_runs >= 1")
        check_severity(severity)
        self.pipeline = pipeline
        self.floor_s, self.ceiling_s = floor_s, ceiling_s
        self.factor, self.min_runs = factor, min_runs
        self.severity = severity
        self.durations: list[float] = []
        self.stalled: set[str] = set()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"pipeline": "p"}
        yield {"pipeline": "p", "floor_s": 30.0, "ceiling_s": 3600.0, "factor": 2.0,
               "min_runs": 3, "severity": "warning"}

    @property
    def key(self) -> str:
        return dedup_key("pipeline_stalled", self.pipeline)

    def key_for(self, run_id: str) -> str:
        """The ``dedup_key`` of ``run_id``'s stall."""
        return f"{self.key}:{run_id}"

    def _learn(self, duration_s: float) -> None:
        self.durations = [*self.durations, duration_s][-_KEPT_DURATIONS:]

    def expected_s(self) -> float:
        """How long a run may stay silent.

        >>> w = StallWatch("p", floor_s=10, ceiling_s=1000, min_runs=2)
        >>> w.expected_s()
        1000
        >>> _ = w.update({"ts": np.zeros(2), "run_id": ["a", "b"],
        ...               "status": ["succeeded"] * 2, "duration_s": [100.0, 200.0]})
        >>> round(w.expected_s())
        292
        """
        if len(self.durations) < self.min_runs:
            return self.ceiling_s
        p95 = float(np.percentile(self.durations, 95))
        return min(self.ceiling_s, max(self.floor_s, self.factor * p95))

    def update(self, batch: Batch) -> list[Signal]:
        """Run events: a sign of life (heartbeat or end) resolves its run's stall; a
        succeeded run's positive ``duration_s`` is learned."""
        out: list[Signal] = []
        for run_id, status, ts, duration in zip(batch["run_id"], batch["status"],
                                                batch["ts"].tolist(), batch["duration_s"],
                                                strict=True):
            ended = status in ("succeeded", "failed")
            if run_id in self.stalled:
                self.stalled.discard(run_id)
                said = "ended" if ended else "sent a heartbeat"
                out.append(Signal("pipeline_stalled", self.key_for(run_id), False,
                                  self.severity, f"{self.pipeline}: run {run_id} {said}", ts,
                                  self.pipeline))
            if status == "succeeded" and duration is not None and 0 < duration < math.inf:
                self._learn(float(duration))
        return out

    def check(self, runs: Sequence[RunInfo], now: float) -> list[Signal]:
        """Signals for runs silent too long at wall-clock ``now`` (once per stall)."""
        limit = self.expected_s()
        out = []
        for run in runs:
            silent = now - run.last_wall
            if silent > limit and run.run_id not in self.stalled:
                self.stalled.add(run.run_id)
                out.append(Signal(
                    "pipeline_stalled", self.key_for(run.run_id), True, self.severity,
                    f"{self.pipeline}: run {run.run_id} silent for {silent:.0f} s (expected "
                    f"a heartbeat or its end within {limit:.0f} s)", now, self.pipeline, None,
                    {"run_id": run.run_id, "silent_s": round(silent, 1),
                     "expected_s": round(limit, 1), "statistic": "silence",
                     "learned_from_runs": len(self.durations)}))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"durations": self.durations, "stalled": sorted(self.stalled)}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.durations = [float(x) for x in d.get("durations", [])]
        self.stalled = set(d.get("stalled", []))


class DurationAnomaly:
    """``pipeline_duration_anomaly``: River's Gaussian scorer on log-durations.

    Rows whose ``duration_s`` is a positive number (finished runs) are judged,
    then learned unless anomalous; a signal per judged run once the warm-up
    (``min_runs``) is over.

    Parameters
    ----------
    pipeline
        The pipeline.
    min_runs
        Runs learned before judging (the warm-up).
    threshold
        Gaussian score (``2 |CDF - 0.5|``) that is anomalous.
    accept_after
        Anomalous runs in a row that become the new normal.
    severity
        Of the alert.

    Examples
    --------
    Runs of about 10 minutes; run 30 takes half an hour.

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> det = DurationAnomaly("fraud-daily-training")
    >>> durations = rng.lognormal(np.log(600), 0.1, 40)
    >>> durations[30] = 1800.0
    >>> for s in det.update({"ts": np.arange(40.0), "run_id": [f"r{i}" for i in range(40)],
    ...                      "duration_s": durations.tolist()}):
    ...     if s.active:
    ...         print(f"run {s.timestamp:.0f}: {s.summary}")
    run 30: fraud-daily-training: run r30 took 1800 s, typical 606 s (expected 467-773 s)
    """

    inputs = ("ts", "run_id", "duration_s")

    def __init__(self, pipeline: str, *, min_runs: int = 10, threshold: float = 0.999,
                 accept_after: int = 3, severity: Severity = "warning") -> None:
        if not min_runs >= 2:
            raise ValueError("min_runs must be >= 2")
        if not 0 < threshold < 1:
            raise ValueError("threshold must be in (0, 1)")
        if not accept_after >= 1:
            raise ValueError("accept_after must be >= 1")
        check_severity(severity)
        self.pipeline = pipeline
        self.min_runs, self.threshold = min_runs, threshold
        self.accept_after = accept_after
        self.severity = severity
        self.learned: list[float] = []   # log-durations, the scorer's window
        self.pending: list[float] = []   # anomalous ones in a row, not learned yet

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"pipeline": "p"}
        yield {"pipeline": "p", "min_runs": 5, "threshold": 0.9999, "accept_after": 2,
               "severity": "error"}

    @property
    def key(self) -> str:
        return dedup_key("pipeline_duration_anomaly", self.pipeline)

    def _learn(self, y: float) -> None:
        self.learned = [*self.learned, y][-_KEPT_DURATIONS:]

    def _score(self, y: float) -> float:
        """2 |CDF(y) - 0.5| of the Gaussian fitted to the learned runs (mean, sample
        standard deviation), in [0, 1]: River's ``anomaly.GaussianScorer`` score over a
        window of the same runs, without the ``river.anomaly`` package, whose import
        loads ``scipy.stats`` (45 MB a worker; :mod:`detectors._river`). 1 when the
        learned runs all took the same time and y differs."""
        mu, sigma = float(np.mean(self.learned)), float(np.std(self.learned, ddof=1))
        if sigma == 0:
            return 0.0 if y == mu else 1.0
        return 2 * abs(0.5 * math.erfc(-(y - mu) / (sigma * math.sqrt(2))) - 0.5)

    def update(self, batch: Batch) -> list[Signal]:
        """Judge each finished run (a positive ``duration_s``), then learn it unless
        anomalous."""
        out = []
        for run_id, duration, ts in zip(batch["run_id"], batch["duration_s"],
                                        batch["ts"].tolist(), strict=True):
            if duration is None or not 0 < duration < math.inf:
                continue
            signal = self._judge(run_id, float(duration), ts)
            if signal is not None:
                out.append(signal)
        return out

    def _judge(self, run_id: str, duration_s: float, ts: float) -> Signal | None:
        y = math.log(duration_s)
        warm = len(self.learned) >= self.min_runs
        score = self._score(y) if warm else 0.0
        if not warm or score < self.threshold:
            self.pending = []
            self._learn(y)
            return Signal("pipeline_duration_anomaly", self.key, False, self.severity,
                          f"{self.pipeline}: run {run_id} took {duration_s:.0f} s, as usual",
                          ts, self.pipeline) if warm else None
        self.pending.append(y)
        if len(self.pending) >= self.accept_after:  # a new normal: learn it afresh
            self.learned = []
            for p in self.pending:
                self._learn(p)
            self.pending = []
        typical = math.exp(float(np.median(self.learned)))
        lo, hi = self._range()
        return Signal(
            "pipeline_duration_anomaly", self.key, True, self.severity,
            f"{self.pipeline}: run {run_id} took {duration_s:.0f} s, typical {typical:.0f} s "
            f"(expected {lo:.0f}-{hi:.0f} s)", ts, self.pipeline, None,
            {"run_id": run_id, "duration_s": round(duration_s, 3),
             "typical_s": round(typical, 3), "expected": {"low": round(lo, 3),
                                                          "high": round(hi, 3)},
             "score": round(score, 6), "score_threshold": self.threshold,
             "statistic": "gaussian_log_duration", "runs_learned": len(self.learned)})

    def _range(self) -> tuple[float, float]:
        mu, sd = float(np.mean(self.learned)), float(np.std(self.learned))
        z = 3.29  # the threshold's two-sided quantile
        return math.exp(mu - z * sd), math.exp(mu + z * sd)

    def to_dict(self) -> dict[str, Any]:
        return {"learned": self.learned, "pending": self.pending}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.learned = [float(y) for y in d.get("learned", [])][-_KEPT_DURATIONS:]
        self.pending = [float(y) for y in d.get("pending", [])]


LOWER_IS_BETTER = (r"loss", r"error", r"mae", r"mse", r"rmse", r"mape", r"latency", r"brier")
NOT_QUALITY = (r"^rows?$", r"count", r"duration", r"seconds", r"^n_")


class ValidationGate:
    """``validation_gate``: a version's validation metrics against the previous version's.

    Each row is a succeeded validation run of ``model`` ``version`` with its
    ``metrics``; a signal per row once a previous version of the model was
    validated by this pipeline.

    Parameters
    ----------
    pipeline
        The validation pipeline.
    tolerance
        Relative worsening tolerated per metric (0.02: 2 %).
    lower_is_better
        Regular expressions of metric names where lower is better (losses, errors).
    ignore
        Regular expressions of metric names that are not quality (row counts, time).
    severity
        Of the alert.

    Examples
    --------
    >>> import numpy as np
    >>> det = ValidationGate("fraud-validation")
    >>> for s in det.update({"ts": np.arange(3.0), "model": ["fraud-scorer"] * 3,
    ...                      "version": ["v7", "v8", "v8"],
    ...                      "metrics": [{"auc": 0.91, "logloss": 0.30, "rows": 1e5},
    ...                                  {"auc": 0.86, "logloss": 0.33, "rows": 1e5},
    ...                                  {"auc": 0.915, "logloss": 0.29, "rows": 2e5}]}):
    ...     print(f"{s.timestamp:.0f}: {s.key} {'ALERT' if s.active else 'ok'}",
    ...           sorted(s.details.get("regressions", [])))
    1: validation_gate:fraud-scorer:v8 ALERT ['auc', 'logloss']
    2: validation_gate:fraud-scorer:v8 ok []
    """

    inputs = ("ts", "model", "version", "metrics")

    def __init__(self, pipeline: str, *, tolerance: float = 0.02,
                 lower_is_better: tuple[str, ...] = LOWER_IS_BETTER,
                 ignore: tuple[str, ...] = NOT_QUALITY, severity: Severity = "error") -> None:
        if not 0 <= tolerance < math.inf:
            raise ValueError("tolerance must be >= 0")
        for pattern in (*lower_is_better, *ignore):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad metric name pattern {pattern!r}: {exc}") from None
        check_severity(severity)
        self.pipeline = pipeline
        self.tolerance = tolerance
        self.lower_is_better = tuple(lower_is_better)
        self.ignore = tuple(ignore)
        self.severity = severity
        # model -> list of (version, metrics), oldest first, bounded
        self._history: dict[str, list[tuple[str, dict[str, float]]]] = {}

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"pipeline": "p"}
        yield {"pipeline": "p", "tolerance": 0.05, "lower_is_better": ("loss",),
               "ignore": ("^rows$",), "severity": "critical"}

    @property
    def key(self) -> str:
        """The prefix of its keys (``validation_gate:M:V``, per validated model version)."""
        return "validation_gate"

    def key_for(self, model: str, version: str) -> str:
        return dedup_key("validation_gate", model, version)

    def update(self, batch: Batch) -> list[Signal]:
        """Compare each validated version with the model's previous one; remember it."""
        out: list[Signal] = []
        for model, version, metrics, ts in zip(batch["model"], batch["version"],
                                               batch["metrics"], batch["ts"].tolist(),
                                               strict=True):
            if model and version:
                out.extend(self._observe(model, version, metrics, ts))
        return out

    def _observe(self, model: str, version: str, metrics: dict[str, float],
                 ts: float) -> list[Signal]:
        hist = self._history.setdefault(model, [])
        previous = next((m for v, m in reversed(hist) if v != version), None)
        prev_version = next((v for v, _ in reversed(hist) if v != version), None)
        hist[:] = [(v, m) for v, m in hist if v != version][-9:] + [(version, dict(metrics))]
        if previous is None:
            return []
        worse = self.regressions(previous, metrics)
        key = self.key_for(model, version)
        if not worse:
            return [Signal("validation_gate", key, False, self.severity,
                           f"{model} {version} validated as well as {prev_version}", ts, model,
                           version)]
        what = "; ".join(f"{n} {w['value']:.4g} vs {w['previous']:.4g}" for n, w in worse.items())
        return [Signal("validation_gate", key, True, self.severity,
                       f"{model} {version} validates worse than {prev_version}: {what}",
                       ts, model, version,
                       {"previous_version": prev_version, "regressions": worse,
                        "tolerance": self.tolerance, "statistic": "relative_regression",
                        "pipeline": self.pipeline})]

    def regressions(self, previous: dict[str, float],
                    current: dict[str, float]) -> dict[str, dict[str, float]]:
        """Metrics worse than before by more than the tolerance.

        >>> g = ValidationGate("p")
        >>> sorted(g.regressions({"auc": 0.90, "logloss": 0.30, "rows": 10},
        ...                      {"auc": 0.85, "logloss": 0.30, "rows": 5}))
        ['auc']
        """
        out = {}
        for name, now in current.items():
            before = previous.get(name)
            if before is None or any(re.search(p, name) for p in self.ignore):
                continue
            lower = any(re.search(p, name, re.IGNORECASE) for p in self.lower_is_better)
            change = (now - before) if lower else (before - now)  # > 0: worse
            if change > self.tolerance * max(abs(before), 1e-12):
                out[name] = {"value": now, "previous": before,
                             "relative_change": round(change / max(abs(before), 1e-12), 6),
                             "lower_is_better": lower}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {m: [[v, ms] for v, ms in h] for m, h in self._history.items()}

    def load_dict(self, d: dict[str, Any]) -> None:
        self._history = {m: [(str(v), dict(ms)) for v, ms in h] for m, h in d.items()}
