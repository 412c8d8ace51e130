"""Reference profiles the worker compares serving data with.

Profiles arrive on the compacted ``ml.references`` topic (key ``model:version``).
Every worker needs every profile (a model's partition may land on any worker),
so each worker reads the whole topic from the beginning with a plain consumer
outside the consumer group, and keeps following it: a profile published while
the worker runs takes effect on the next window. A profile that cannot be used
is dead-lettered with its reason, like any bad input.

:class:`Reference` is a profile made ready for serving: per feature, its bins
and the threshold calibrated for the configured false-alarm budget
(:func:`detectors.skew.calibrate`); calibration runs once per profile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from detectors.performance import ScoreCalibration
from detectors.profile import FeatureBins
from detectors.quality import FeatureSpec
from detectors.sequential import Alternatives, alternatives
from detectors.skew import Calibration, calibrate
from streams.config import SkewSettings

__all__ = ["Reference", "ReferenceStore", "InvalidProfile"]

log = logging.getLogger("sentinelle.references")


class InvalidProfile(ValueError):
    """A reference message that does not follow the contract."""


@dataclass(frozen=True)
class FeatureRef:
    """One feature of a profile, ready to compare with: bins and both thresholds."""

    bins: FeatureBins
    skew: Calibration    # serving window vs the reference shares
    drift: Calibration   # recent window vs trailing baseline window
    bank: Alternatives | None = None   # skew's sequential test: built once per profile


@dataclass(frozen=True)
class Reference:
    model: str
    version: str
    created_at: float
    rows: int
    features: dict[str, FeatureRef]
    specs: tuple[FeatureSpec, ...] = ()  # every feature, for the data-quality checks
    source: str = "published"  # or "first_events": taken from the version's first events
    label: FeatureRef | None = None      # the label distribution, for label drift
    performance: dict[str, float] | None = None  # e.g. {"accuracy": 0.93} or {"mae": 4.1}
    score_calibration: ScoreCalibration | None = None  # what a probability means (estimates)

    @classmethod
    def from_profile(cls, profile: Any, skew: SkewSettings, baseline_factor: int = 4,
                     source: str = "published", max_features: int = 1_000,
                     max_bins: int = 1_000) -> Reference:
        """A profile made ready: validated, bounded, calibrated (CPU-heavy for large ones:
        the worker runs this off its event loop)."""
        if not isinstance(profile, dict):
            raise InvalidProfile("not_object: a profile is a JSON object")
        for name in ("model", "version"):
            if not isinstance(profile.get(name), str) or not profile[name]:
                raise InvalidProfile(f"missing_field: '{name}' is required")
        feats = profile.get("features")
        if not isinstance(feats, dict):
            raise InvalidProfile("missing_field: 'features' is required")
        if len(feats) > max_features:
            raise InvalidProfile(f"oversized: {len(feats)} features > {max_features} "
                                 f"(limits.max_profile_features)")
        for name, spec in feats.items():
            if isinstance(spec, dict):
                size = max(len(spec.get("counts") or ()), len(spec.get("bins") or ()),
                           len(spec.get("frequencies") or ()))
                if size > max_bins:
                    raise InvalidProfile(f"oversized: feature {str(name)[:64]!r} has {size} bins "
                                         f"or categories > {max_bins} (limits.max_profile_bins)")
        features: dict[str, FeatureRef] = {}
        compared = dict(feats)
        for special in ("prediction", "label"):
            if isinstance(profile.get(special), dict):
                compared[special] = profile[special]
        for name, spec in compared.items():
            if not isinstance(spec, dict):
                raise InvalidProfile(f"bad_type: feature '{name}' must be an object")
            try:
                bins = FeatureBins.from_profile(name, spec)
            except (TypeError, ValueError) as exc:
                raise InvalidProfile(f"bad_value: feature '{name}': {exc}") from None
            if bins is None:
                continue  # all missing in training: nothing to compare with
            args = (bins.reference, skew.window_events, skew.hop_events,
                    skew.run_length_events, skew.bootstrap_draws)
            # The reference is itself a sample of `rows` values: its noise adds to
            # the window's (a two-sample test), which matters for small profiles.
            ref_rows = int(profile.get("rows") or 0)
            features[name] = FeatureRef(
                bins, calibrate(*args, baseline=ref_rows or None),
                calibrate(*args, baseline=baseline_factor * skew.window_events),
                alternatives(bins, skew.run_length_events, reference_size=ref_rows or None))
        created = profile.get("created_at")
        rows = int(profile.get("rows") or 0)
        label = features.pop("label", None)
        perf = profile.get("performance")
        score_cal = None
        if isinstance(perf, dict) and perf.get("score_calibration") is not None:
            try:
                score_cal = ScoreCalibration.from_dict(perf["score_calibration"])
            except ValueError as exc:
                raise InvalidProfile(f"bad_value: performance.{exc}") from None
        perf = ({k: float(v) for k, v in perf.items() if isinstance(v, (int, float))}
                if isinstance(perf, dict) else None)
        return cls(profile["model"], profile["version"],
                   float(created) if isinstance(created, (int, float)) else 0.0, rows, features,
                   tuple(FeatureSpec.from_profile(n, spec, rows) for n, spec in feats.items()),
                   source, label, perf or None, score_cal)


class ReferenceStore:
    """The latest profile per (model, version)."""

    def __init__(self, skew: SkewSettings, baseline_factor: int = 4,
                 max_features: int = 1_000, max_bins: int = 1_000) -> None:
        self.skew = skew
        self.baseline_factor = baseline_factor
        self.max_features, self.max_bins = max_features, max_bins
        self._refs: dict[tuple[str, str], Reference] = {}

    def prepare(self, profile: Any) -> Reference:
        """Validate and calibrate a profile without storing it (thread-safe: pure)."""
        return Reference.from_profile(profile, self.skew, self.baseline_factor,
                                      max_features=self.max_features, max_bins=self.max_bins)

    def put(self, ref: Reference) -> None:
        self._refs[(ref.model, ref.version)] = ref
        log.info("reference profile for %s %s: %d features", ref.model, ref.version,
                 len(ref.features))

    def add(self, profile: Any) -> Reference:
        ref = self.prepare(profile)
        self.put(ref)
        return ref

    def remove(self, model: str, version: str) -> None:
        self._refs.pop((model, version), None)

    def get(self, model: str, version: str) -> Reference | None:
        return self._refs.get((model, version))

    def __len__(self) -> int:
        return len(self._refs)
