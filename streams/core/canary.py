"""A model's canary rollouts, as its monitor sees them: histograms in, verdicts out.

:class:`CanaryWatch` owns the model's :class:`~alerting.rollout.RolloutTracker`
(the rollout state and policy) and the cohorts' prediction histograms
(:class:`~detectors.canary.PredictionHistograms`). The monitor hands it the
micro-batch's predictions (binned here, on the stable version's profile bins),
the windows it closes with the keys of the alerts firing on each canary
version, and the ``ml.deployments`` and ``ml.deploy.approvals`` records; it
returns commands, signals and verdicts. Data goes one way: monitor -> watch
-> policy (which asks the analysis) -> outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from alerting.rollout import RolloutPolicy, RolloutTracker, TrackerOutput
from detectors.canary import CanaryAnalysis, PredictionHistograms
from detectors.profile import FeatureBins
from detectors.quality import as_rows, pick
from detectors.windows import WindowStats
from streams.config import Settings
from streams.core.series import SeriesRows, categories, numbers

__all__ = ["CanaryWatch", "CANARY_CHECKS"]

#: Alerts on a canary version that fail its canary analysis.
CANARY_CHECKS = frozenset({"feature_drift", "training_serving_skew", "prediction_drift",
                           "label_drift", "performance_degradation", "data_quality"})


class CanaryWatch:
    """The rollouts of one model (see the module docstring)."""

    def __init__(self, model: str, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.tracker = _tracker(model, settings)
        self.histograms = PredictionHistograms()

    def observe(self, frame: pl.DataFrame, late: np.ndarray, predictions: Sequence[Any],
                groups: SeriesRows,
                bins_of: Callable[[str], FeatureBins | None]) -> None:
        """Bin the stable and canary predictions of the rollout under way, per window.

        ``groups``: the micro-batch's rows per series (:func:`series_rows` of
        ``frame``); ``bins_of(stable_version)``: the bins of that version's
        prediction profile.
        """
        if not (self.tracker.watching() or any(c == "canary" for (_, c), _ in groups)):
            return
        pair = self.tracker.watching() or _traffic_pair(frame, self.tracker.done)
        if pair is None:
            return
        bins = bins_of(pair[0])
        if bins is None:
            return
        size = self.settings.windows.size_s
        ts_all = frame["ts"].to_numpy()
        for (version, cohort), rows in groups:
            if (cohort, version) not in (("stable", pair[0]), ("canary", pair[1])):
                continue
            rows = rows[~late[rows]]
            preds = pick(predictions, as_rows(rows))
            if bins.kind == "numeric":
                x = numbers(preds)
                ok = np.isfinite(x)
                idx = bins.bin_numeric(x[ok])
            else:
                ok, cats = categories(preds)
                idx = bins.bin_categories(cats)
            starts = np.floor(ts_all[rows][ok] / size) * size
            self.histograms.add(cohort, starts, idx, bins.size)

    def on_windows(self, closed: list[WindowStats],
                   firing: Mapping[str, tuple[str, ...]]) -> TrackerOutput:
        """Verdicts and decisions for the closed windows (``firing``: the keys of the
        alerts firing on each canary version)."""
        return self.tracker.on_windows(closed, firing, self.histograms)

    def on_control(self, kind: str, rec: dict[str, Any], clock: float) -> TrackerOutput:
        """An ``ml.deployments`` (``kind="deployment"``) or ``ml.deploy.approvals`` record."""
        return (self.tracker.on_deployment(rec, clock) if kind == "deployment"
                else self.tracker.on_approval(rec, clock))

    def holds(self, now: float) -> bool:
        return self.tracker.holds(now)

    def to_dict(self) -> dict[str, Any]:
        return {"rollouts": self.tracker.to_dict(), "canary_hist": self.histograms.to_dict()}

    def load_dict(self, data: dict[str, Any]) -> None:
        """Restore from the model's checkpoint (its ``rollouts`` and ``canary_hist``)."""
        if data.get("rollouts"):
            self.tracker.load_dict(data["rollouts"])
        # (checkpoints written before the histograms moved here kept them with the rollouts)
        self.histograms.load_dict(data.get("canary_hist")
                                  or (data.get("rollouts") or {}).get("hist") or {})


def _traffic_pair(frame: pl.DataFrame, done: dict[str, float]) -> tuple[str, str] | None:
    """(stable, canary): the busiest of each cohort, when a canary not yet judged serves."""
    counts = frame.group_by("cohort", "version").len().sort("len", descending=True)
    canary = counts.filter((pl.col("cohort") == "canary") & ~pl.col("version").is_in(list(done)))
    stable = counts.filter(pl.col("cohort") == "stable")
    if canary.height == 0 or stable.height == 0:
        return None
    return str(stable["version"][0]), str(canary["version"][0])


def _tracker(model: str, s: Settings) -> RolloutTracker:
    c = s.canary
    analysis = CanaryAnalysis(c.min_requests, c.error_alpha, c.error_min_diff, c.latency_ratio,
                              c.prediction_js, c.prediction_alpha)
    policy = RolloutPolicy(c.fail_windows, c.pass_windows, c.ladder, c.approval_above,
                           c.cooldown_s, "pause" if model in c.pause_models else c.on_failure)
    return RolloutTracker(model, analysis, policy, c.severity, c.announced_ttl_s)
