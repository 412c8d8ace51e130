"""Skew of a validation run's data profile against the version's training profile.

A validation run may attach the profile of its data (``profile``, built by
``sentinelle profile build``, the same JSON as ``ml.references``). It has its
own quantile bins, so each numeric feature is moved onto the training
profile's bins first: the validation CDF is interpolated linearly within its
bins (values uniform inside a bin) at the training bin edges. Categories map
by name (unknown ones to ``__unseen__``). The Jensen-Shannon distance to the
training shares is then compared with the feature's calibrated skew threshold,
which was set for 2,000-event serving windows: for a validation set of many
thousand rows it is conservative (its noise is smaller), so what exceeds it is
a real difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.base import Signal
from detectors.contract import Severity, dedup_key
from detectors.distance import js_distance, normalise
from detectors.profile import OTHER, FeatureBins
from streams.core.references import Reference

__all__ = ["profile_skew", "on_training_bins"]


def on_training_bins(spec: dict[str, Any], bins: FeatureBins) -> np.ndarray | None:
    """The validation feature's shares on the training bins (None: not comparable).

    >>> b = FeatureBins.from_profile("x", {"type": "numeric", "bins": [0, 1, 2],
    ...                                    "counts": [5, 5]})
    >>> on_training_bins({"type": "numeric", "bins": [0, 2], "counts": [10]}, b).tolist()
    [0.5, 0.5]
    """
    if bins.kind == "numeric" and spec.get("type") == "numeric":
        edges = np.asarray(spec.get("bins") or [], dtype=float)
        counts = np.asarray(spec.get("counts") or [], dtype=float)
        if counts.size == 0 or edges.size != counts.size + 1 or counts.sum() <= 0:
            return None
        cum = np.concatenate(([0.0], np.cumsum(counts))) / counts.sum()
        at = np.interp(bins.inner_edges, edges, cum, left=0.0, right=1.0)
        return np.diff(np.concatenate(([0.0], at, [1.0])))
    if bins.kind == "categorical" and spec.get("type") == "categorical":
        freqs = spec.get("frequencies") or {}
        out = np.zeros(bins.size)
        unseen, other = bins.size - 1, bins.size - 2
        for cat, share in freqs.items():
            out[other if cat == OTHER else bins.index.get(cat, unseen)] += float(share)
        return out if out.sum() > 0 else None
    return None


def profile_skew(profile: dict[str, Any], ref: Reference, pipeline: str, ts: float,
                 severity: Severity = "error") -> Signal:
    """``validation_gate`` (``…:skew``): active when a feature's distance exceeds its threshold."""
    feats = dict(profile.get("features") or {})
    for special in ("prediction", "label"):
        if isinstance(profile.get(special), dict):
            feats[special] = profile[special]
    moved: dict[str, dict[str, float]] = {}
    for name, fr in ref.features.items():
        spec = feats.get(name)
        shares = on_training_bins(spec, fr.bins) if isinstance(spec, dict) else None
        if shares is None:
            continue
        js = js_distance(normalise(shares), fr.bins.reference)
        if js > fr.skew.threshold:
            moved[name] = {"jensen_shannon": round(js, 4),
                           "threshold": round(fr.skew.threshold, 4)}
    key = dedup_key("validation_gate", ref.model, ref.version, "stable", "skew")
    if not moved:
        return Signal("validation_gate", key, False, severity,
                      f"{ref.model} {ref.version}: validation data matches the training profile",
                      ts, ref.model, ref.version)
    what = ", ".join(f"{n} (JS {m['jensen_shannon']:.2f} > {m['threshold']:.2f})"
                     for n, m in sorted(moved.items()))
    return Signal("validation_gate", key, True, severity,
                  f"{ref.model} {ref.version}: validation data differs from the training "
                  f"profile: {what}", ts, ref.model, ref.version,
                  {"features": moved, "statistic": "jensen_shannon", "pipeline": pipeline})
