"""Synthetic features for ``bench/drift_quality.py``: 8 numeric laws, 4 categorical ones.

numpy only (no Sentinelle, no Polars), so the Alibi Detect side of the bench,
which runs in another interpreter with another numpy, imports it too and draws
from exactly the same laws.

Numeric features are shifted by a number of their own standard deviations (a
location shift: every value moves by ``shift * sd``, except the Poisson count,
whose rate moves by ``shift * sqrt(rate)`` so that it stays integer-valued; both
move the mean by ``shift`` standard deviations). Categorical features are
shifted by moving their most frequent category's share up by ``shift`` (0.10 =
10 points), taken from the other categories in proportion to their shares: the
most frequent category is the hardest one to see move by a fixed number of
points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Feature", "FEATURES", "NUMERIC", "CATEGORICAL", "rng_for", "zipf_shares",
           "geometric_shares"]

SEED = 20_261_127


def rng_for(*keys: int) -> np.random.Generator:
    """A generator seeded by ``keys`` (stage, feature, shift, repetition…), reproducible."""
    return np.random.default_rng([SEED, *keys])


def zipf_shares(k: int, s: float) -> tuple[float, ...]:
    w = 1.0 / np.arange(1, k + 1) ** s
    return tuple(float(x) for x in w / w.sum())


def geometric_shares(k: int, ratio: float) -> tuple[float, ...]:
    w = ratio ** np.arange(k)
    return tuple(float(x) for x in w / w.sum())


@dataclass(frozen=True)
class Feature:
    """One feature's law; ``draw`` gives floats (numeric) or category codes (categorical)."""

    name: str
    kind: str                      # "numeric" or "categorical"
    law: str                       # numeric: the sampler's key; categorical: "categorical"
    shape: str                     # a short description, for the report
    params: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()

    @property
    def sd(self) -> float:
        """Standard deviation of the (unshifted) law, exact."""
        p = self.params
        match self.law:
            case "normal":
                return p[1]
            case "lognormal":
                mu, s = p
                return math.sqrt((math.exp(s * s) - 1) * math.exp(2 * mu + s * s))
            case "exponential":
                return p[0]
            case "uniform":
                return (p[1] - p[0]) / math.sqrt(12)
            case "bimodal":
                w, m1, s1, m2, s2 = p
                mean = w * m1 + (1 - w) * m2
                second = w * (s1 * s1 + m1 * m1) + (1 - w) * (s2 * s2 + m2 * m2)
                return math.sqrt(second - mean * mean)
            case "student_t":
                loc, scale, df = p
                return scale * math.sqrt(df / (df - 2))
            case "poisson":
                return math.sqrt(p[0])
            case "beta":
                a, b = p
                return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        raise ValueError(f"{self.name}: no standard deviation for a {self.law} feature")

    def shifted_shares(self, points: float) -> np.ndarray:
        """Shares with the most frequent category ``points`` higher, the others scaled down."""
        q = np.asarray(self.shares, dtype=float)
        top = int(np.argmax(q))
        out = q * (1 - q[top] - points) / (1 - q[top])
        out[top] = q[top] + points
        return out

    def draw(self, rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
        """``n`` values; ``shift``: standard deviations (numeric) or share points (categorical)."""
        p = self.params
        if self.kind == "categorical":
            q = self.shifted_shares(shift) if shift else np.asarray(self.shares)
            return rng.choice(len(q), size=n, p=q)
        move = shift * self.sd
        match self.law:
            case "normal":
                x = rng.normal(p[0], p[1], n)
            case "lognormal":
                x = rng.lognormal(p[0], p[1], n)
            case "exponential":
                x = rng.exponential(p[0], n)
            case "uniform":
                x = rng.uniform(p[0], p[1], n)
            case "bimodal":
                w, m1, s1, m2, s2 = p
                first = rng.random(n) < w
                x = np.where(first, rng.normal(m1, s1, n), rng.normal(m2, s2, n))
            case "student_t":
                x = p[0] + p[1] * rng.standard_t(p[2], n)
            case "poisson":
                return rng.poisson(p[0] + move, n).astype(float)
            case "beta":
                x = rng.beta(p[0], p[1], n)
            case _:
                raise ValueError(f"{self.name}: unknown law {self.law}")
        return x + move if move else x

    def labels(self, codes: np.ndarray) -> list[str]:
        """Category codes as the strings a producer would send."""
        return np.asarray(self.categories, dtype=object)[codes].tolist()


NUMERIC: tuple[Feature, ...] = (
    Feature("amount", "numeric", "lognormal", "lognormal(3, 0.8)", (3.0, 0.8)),
    Feature("age", "numeric", "normal", "normal(40, 12)", (40.0, 12.0)),
    Feature("wait_s", "numeric", "exponential", "exponential(scale 30)", (30.0,)),
    Feature("ratio", "numeric", "uniform", "uniform(0, 1)", (0.0, 1.0)),
    Feature("bimodal", "numeric", "bimodal", "0.6 N(0,1) + 0.4 N(5,1.5)",
            (0.6, 0.0, 1.0, 5.0, 1.5)),
    Feature("heavy", "numeric", "student_t", "10 + 2 t(3)", (10.0, 2.0, 3.0)),
    Feature("items", "numeric", "poisson", "poisson(4), integers", (4.0,)),
    Feature("score", "numeric", "beta", "beta(2, 5)", (2.0, 5.0)),
)

CATEGORICAL: tuple[Feature, ...] = (
    Feature("channel", "categorical", "categorical", "3 categories",
            categories=("web", "app", "store"), shares=(0.62, 0.28, 0.10)),
    Feature("device", "categorical", "categorical", "5 categories, Zipf 1.2",
            categories=("android", "ios", "windows", "macos", "linux"),
            shares=zipf_shares(5, 1.2)),
    Feature("country", "categorical", "categorical", "12 categories, geometric 0.7",
            categories=("FR", "DE", "ES", "IT", "NL", "BE", "PT", "PL", "SE", "AT", "IE", "DK"),
            shares=geometric_shares(12, 0.7)),
    Feature("merchant", "categorical", "categorical", "20 categories, Zipf 1.0",
            categories=tuple(f"mcc_{i:02d}" for i in range(20)), shares=zipf_shares(20, 1.0)),
)

FEATURES: tuple[Feature, ...] = NUMERIC + CATEGORICAL
