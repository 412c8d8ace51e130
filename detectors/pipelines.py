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
  duration is anomalous for that pipeline: River's
  :class:`~river.anomaly.GaussianScorer` on log-durations (run times are
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import anomaly

from detectors.base import Signal
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
    """``pipeline_failure``: a failed run, severity rising with the streak."""

    def __init__(self, pipeline: str, critical_after: int = 3,
                 severity: Severity = "error") -> None:
        self.pipeline = pipeline
        self.critical_after = critical_after
        self.severity = severity
        self.streak = 0

    @property
    def key(self) -> str:
        return dedup_key("pipeline_failure", self.pipeline)

    def on_end(self, run_id: str, failed: bool, ts: float, error: str | None) -> Signal:
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
    """``pipeline_stalled``: a run silent for longer than the pipeline's expected duration."""

    def __init__(self, pipeline: str, floor_s: float = 300.0, ceiling_s: float = 86400.0,
                 factor: float = 1.5, min_runs: int = 5, severity: Severity = "error") -> None:
        self.pipeline = pipeline
        self.floor_s, self.ceiling_s = floor_s, ceiling_s
        self.factor, self.min_runs = factor, min_runs
        self.severity = severity
        self.durations: list[float] = []
        self.stalled: set[str] = set()

    def learn(self, duration_s: float) -> None:
        self.durations = [*self.durations, duration_s][-_KEPT_DURATIONS:]

    def expected_s(self) -> float:
        """How long a run may stay silent.

        >>> w = StallWatch("p", floor_s=10, ceiling_s=1000, min_runs=2)
        >>> w.expected_s()
        1000
        >>> w.learn(100); w.learn(200); round(w.expected_s())
        292
        """
        if len(self.durations) < self.min_runs:
            return self.ceiling_s
        p95 = float(np.percentile(self.durations, 95))
        return min(self.ceiling_s, max(self.floor_s, self.factor * p95))

    def key(self, run_id: str) -> str:
        return dedup_key("pipeline_stalled", self.pipeline, None, "stable", run_id)

    def check(self, runs: Sequence[RunInfo], now: float) -> list[Signal]:
        """Signals for runs that went silent (and for stalled runs that spoke again)."""
        limit = self.expected_s()
        out = []
        for run in runs:
            silent = now - run.last_wall
            if silent > limit and run.run_id not in self.stalled:
                self.stalled.add(run.run_id)
                out.append(Signal(
                    "pipeline_stalled", self.key(run.run_id), True, self.severity,
                    f"{self.pipeline}: run {run.run_id} silent for {silent:.0f} s (expected "
                    f"a heartbeat or its end within {limit:.0f} s)", now, self.pipeline, None,
                    {"run_id": run.run_id, "silent_s": round(silent, 1),
                     "expected_s": round(limit, 1), "statistic": "silence",
                     "learned_from_runs": len(self.durations)}))
        return out

    def alive(self, run_id: str, now: float, ended: bool = False) -> Signal | None:
        """A sign of life (heartbeat or end) of ``run_id``: resolves its stall."""
        if run_id not in self.stalled:
            return None
        self.stalled.discard(run_id)
        said = "ended" if ended else "sent a heartbeat"
        return Signal("pipeline_stalled", self.key(run_id), False, self.severity,
                      f"{self.pipeline}: run {run_id} {said}", now, self.pipeline)

    def to_dict(self) -> dict[str, Any]:
        return {"durations": self.durations, "stalled": sorted(self.stalled)}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.durations = [float(x) for x in d.get("durations", [])]
        self.stalled = set(d.get("stalled", []))


class DurationAnomaly:
    """``pipeline_duration_anomaly``: River's Gaussian scorer on log-durations."""

    def __init__(self, pipeline: str, min_runs: int = 10, threshold: float = 0.999,
                 accept_after: int = 3, severity: Severity = "warning") -> None:
        self.pipeline = pipeline
        self.min_runs, self.threshold = min_runs, threshold
        self.accept_after = accept_after
        self.severity = severity
        self.learned: list[float] = []   # log-durations, the scorer's window
        self.pending: list[float] = []   # anomalous ones in a row, not learned yet
        self._scorer = self._fresh()

    @property
    def key(self) -> str:
        return dedup_key("pipeline_duration_anomaly", self.pipeline)

    def _fresh(self) -> anomaly.GaussianScorer:
        return anomaly.GaussianScorer(window_size=_KEPT_DURATIONS, grace_period=self.min_runs)

    def _learn(self, y: float) -> None:
        self.learned = [*self.learned, y][-_KEPT_DURATIONS:]
        self._scorer.learn_one(None, y)

    def observe(self, run_id: str, duration_s: float, ts: float) -> Signal | None:
        """Judge one finished run, then learn it (unless anomalous)."""
        if not math.isfinite(duration_s) or duration_s <= 0:
            return None
        y = math.log(duration_s)
        warm = len(self.learned) >= self.min_runs
        score = float(self._scorer.score_one(None, y)) if warm else 0.0
        if not warm or score < self.threshold:
            self.pending = []
            self._learn(y)
            return Signal("pipeline_duration_anomaly", self.key, False, self.severity,
                          f"{self.pipeline}: run {run_id} took {duration_s:.0f} s, as usual",
                          ts, self.pipeline) if warm else None
        self.pending.append(y)
        if len(self.pending) >= self.accept_after:  # a new normal: learn it afresh
            self._scorer, self.learned = self._fresh(), []
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
        self._scorer = self._fresh()
        self.learned = []
        for y in d.get("learned", []):
            self._learn(float(y))
        self.pending = [float(y) for y in d.get("pending", [])]


@dataclass
class ValidationGate:
    """``validation_gate``: a version's validation metrics against the previous version's.

    Parameters
    ----------
    tolerance
        Relative worsening tolerated per metric (0.02: 2 %).
    lower_is_better
        Regular expressions of metric names where lower is better (losses, errors).
    ignore
        Regular expressions of metric names that are not quality (row counts, time).
    """

    pipeline: str
    tolerance: float = 0.02
    lower_is_better: tuple[str, ...] = (r"loss", r"error", r"mae", r"mse", r"rmse", r"mape",
                                        r"latency", r"brier")
    ignore: tuple[str, ...] = (r"^rows?$", r"count", r"duration", r"seconds", r"^n_")
    severity: Severity = "error"
    # model -> list of (version, metrics), oldest first, bounded
    history: dict[str, list[tuple[str, dict[str, float]]]] = field(default_factory=dict)

    def key(self, model: str, version: str) -> str:
        return dedup_key("validation_gate", model, version)

    def observe(self, model: str, version: str, metrics: dict[str, float],
                ts: float) -> list[Signal]:
        """Compare with the previous version; remember this one."""
        hist = self.history.setdefault(model, [])
        previous = next((m for v, m in reversed(hist) if v != version), None)
        prev_version = next((v for v, _ in reversed(hist) if v != version), None)
        hist[:] = [(v, m) for v, m in hist if v != version][-9:] + [(version, dict(metrics))]
        if previous is None:
            return []
        worse = self.regressions(previous, metrics)
        key = self.key(model, version)
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
        return {m: [[v, ms] for v, ms in h] for m, h in self.history.items()}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.history = {m: [(str(v), dict(ms)) for v, ms in h] for m, h in d.items()}
