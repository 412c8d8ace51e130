"""Distances between discrete distributions (histograms on shared bins)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["js_divergence", "js_distance", "linf_distance", "normalise"]


def normalise(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts, dtype=float)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in nats (0 .. ln 2) of two probability vectors."""
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log(p / m), 0.0).sum()
        kl_qm = np.where(q > 0, q * np.log(q / m), 0.0).sum()
    return float(max(0.0, 0.5 * (kl_pm + kl_qm)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance: sqrt of the divergence in bits, in [0, 1].

    0 for identical distributions, 1 for distributions with disjoint support.

    >>> import numpy as np
    >>> js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    1.0
    >>> js_distance(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    0.0
    """
    return math.sqrt(js_divergence(p, q) / math.log(2))


def linf_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Largest absolute difference of shares (L-infinity), in [0, 1].

    >>> import numpy as np
    >>> linf_distance(np.array([0.7, 0.3]), np.array([0.5, 0.5]))
    0.2
    """
    return round(float(np.abs(p - q).max()), 12) if p.size else 0.0
