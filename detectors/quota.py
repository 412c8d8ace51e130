"""Shared quotas: how fast a pool's resource is used, and when it runs out.

One :class:`QuotaForecast` watches one (pool, resource), fed what pipeline
events say (``quota.used`` / ``quota.limit`` of the pool, and each run's own
cumulative ``resources``), in event time:

- **usage rate**: the least-squares slope of ``used`` over the last
  ``window_s`` (6 h), computed with Polars; a pool whose usage is flat or
  falling has no forecast;
- **time to the limit**: ``(limit - used) / rate``; ``quota_exhaustion`` (warning)
  when it falls within ``horizon_s`` (24 h), and a second one, critical, once
  ``used / limit`` reaches ``critical_share`` (90 %); each resolves when its
  condition no longer holds;
- **who uses it**: the pipelines with the largest usage in the window, with
  their share, in the alert's evidence;
- **errant runs**: one run that alone used more than ``errant_share`` (25 %) of
  the limit raises its own ``quota_exhaustion`` (the "errant pipeline eating
  all the quota"); it resolves when the run ends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from detectors.base import Batch, Signal
from detectors.contract import dedup_key

__all__ = ["QuotaForecast", "UsagePoint", "usage_batch"]

_MAX_POINTS = 5000  # observations kept per (pool, resource) (bounded memory)


@dataclass(frozen=True, slots=True)
class UsagePoint:
    """One pipeline event's news about a pool."""

    ts: float
    pipeline: str
    run_id: str
    status: str
    run_used: float | None   # the run's cumulative use of the resource, if it said
    used: float | None       # the pool's use, if the event had ``quota``
    limit: float | None


def usage_batch(points: Sequence[UsagePoint]) -> Batch:
    """The batch :meth:`QuotaForecast.update` takes, from usage points.

    >>> usage_batch([UsagePoint(1.0, "etl", "r1", "heartbeat", 2.0, 10.0, 100.0)])["used"]
    [10.0]
    """
    return {"ts": np.array([p.ts for p in points], dtype=float),
            "pipeline": [p.pipeline for p in points], "run_id": [p.run_id for p in points],
            "status": [p.status for p in points], "run_used": [p.run_used for p in points],
            "used": [p.used for p in points], "limit": [p.limit for p in points]}


class QuotaForecast:
    """Usage rate, time to the limit, top consumers and errant runs of one pool resource.

    Parameters
    ----------
    pool, resource
        The series: a pool's resource (``gpu_hours``...).
    window_s
        The usage rate is fitted over this much event time.
    horizon_s
        Warn when the limit is this close at the current rate.
    critical_share
        Page at this share of the limit.
    errant_share
        One run using this share of the limit alone is flagged.
    min_points
        Observations of the pool's use needed for a rate.

    Examples
    --------
    A pool of 200 GPU hours used at about 2 an hour, until a hyperparameter
    search starts at hour 10 and uses 12 more an hour by itself.

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> det = QuotaForecast("team-ml", "gpu_hours")
    >>> hours = np.arange(0, 20, 0.5)
    >>> search = np.maximum(hours - 10, 0) * 12
    >>> used = 2 * hours + search + rng.normal(0, 0.2, hours.size)
    >>> fired = {}
    >>> for h, u, r in zip(hours, used, search):
    ...     batch = {"ts": np.array([h * 3600]), "pipeline": ["hyperopt"], "run_id": ["h1"],
    ...              "status": ["heartbeat"], "run_used": [float(r)], "used": [float(u)],
    ...              "limit": [200.0]}
    ...     for s in det.update(batch):
    ...         if s.active and s.key not in fired:
    ...             fired[s.key] = h
    ...             print(f"hour {h:g}: {s.key} ({s.details['statistic']})")
    hour 12.5: quota_exhaustion:team-ml:gpu_hours:forecast (hours_to_limit)
    hour 14.5: quota_exhaustion:team-ml:gpu_hours:run:h1 (run_share_of_limit)
    """

    inputs = ("ts", "pipeline", "run_id", "status", "run_used", "used", "limit")

    def __init__(self, pool: str, resource: str, *, window_s: float = 6 * 3600.0,
                 horizon_s: float = 24 * 3600.0, critical_share: float = 0.9,
                 errant_share: float = 0.25, min_points: int = 3) -> None:
        if not (window_s > 0 and horizon_s > 0):
            raise ValueError("window_s and horizon_s must be > 0")
        if not (0 < critical_share <= 1 and 0 < errant_share <= 1):
            raise ValueError("critical_share and errant_share must be in (0, 1]")
        if not min_points >= 2:
            raise ValueError("min_points must be >= 2")
        self.pool, self.resource = pool, resource
        self.window_s, self.horizon_s = window_s, horizon_s
        self.critical_share, self.errant_share = critical_share, errant_share
        self.min_points = min_points
        self.levels: list[tuple[float, float, float]] = []         # (ts, used, limit)
        self.spent: list[tuple[float, str, float]] = []            # (ts, pipeline, increment)
        self.runs: dict[str, tuple[str, float]] = {}               # run -> (pipeline, used)
        self.errant: set[str] = set()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"pool": "pool", "resource": "gpu_hours"}
        yield {"pool": "pool", "resource": "gpu_hours", "window_s": 3600.0,
               "horizon_s": 7200.0, "critical_share": 0.8, "errant_share": 0.5,
               "min_points": 5}

    @property
    def key(self) -> str:
        return dedup_key("quota_exhaustion", self.pool, None, "stable", self.resource)

    def _key(self, what: str) -> str:
        return f"{self.key}:{what}"

    def update(self, batch: Batch) -> list[Signal]:
        """Fold pipeline events' news about the pool in (time order): errant runs as they
        come, then the forecast and the limit at the batch's last time."""
        points = [UsagePoint(*row) for row in zip(
            batch["ts"].tolist(), batch["pipeline"], batch["run_id"], batch["status"],
            batch["run_used"], batch["used"], batch["limit"], strict=True)]
        out: list[Signal] = []
        for p in points:
            if p.run_used is not None:
                pipeline, before = self.runs.get(p.run_id, (p.pipeline, 0.0))
                if p.run_used > before:
                    self.spent.append((p.ts, p.pipeline, p.run_used - before))
                self.runs[p.run_id] = (p.pipeline, max(before, p.run_used))
            if p.used is not None and p.limit is not None and p.limit > 0:
                self.levels.append((p.ts, p.used, p.limit))
            out.extend(self._errant(p))
        if not points:
            return out
        now = points[-1].ts
        self.levels = [x for x in self.levels if x[0] > now - self.window_s][-_MAX_POINTS:]
        self.spent = [x for x in self.spent if x[0] > now - self.window_s][-_MAX_POINTS:]
        if self.levels:
            out.extend(self._forecast(now))
        return out

    def _errant(self, p: UsagePoint) -> list[Signal]:
        limit = self.levels[-1][2] if self.levels else p.limit
        key = self._key(f"run:{p.run_id}")
        if p.status in ("succeeded", "failed"):
            self.runs.pop(p.run_id, None)
            if p.run_id in self.errant:
                self.errant.discard(p.run_id)
                return [Signal("quota_exhaustion", key, False, "warning",
                               f"{p.pipeline} run {p.run_id} ended", p.ts, self.pool)]
            return []
        if limit is None or p.run_id in self.errant or p.run_id not in self.runs:
            return []
        used = self.runs[p.run_id][1]
        if used <= self.errant_share * limit:
            return []
        self.errant.add(p.run_id)
        return [Signal(
            "quota_exhaustion", key, True, "warning",
            f"pool {self.pool}: run {p.run_id} of {p.pipeline} alone used {used:.4g} "
            f"{self.resource}, {used / limit:.0%} of the limit {limit:.4g}", p.ts, self.pool,
            None, {"feature": f"run:{p.run_id}", "pool": self.pool, "resource": self.resource,
                   "run_id": p.run_id,
                   "pipeline": p.pipeline, "run_used": used, "limit": limit,
                   "share_of_limit": round(used / limit, 4), "errant_share": self.errant_share,
                   "statistic": "run_share_of_limit"})]

    def rate(self) -> float | None:
        """Usage per second over the window (least squares), or None with too few points."""
        if len(self.levels) < self.min_points:
            return None
        frame = pl.DataFrame(self.levels, schema=["ts", "used", "limit"], orient="row")
        slope = frame.select(pl.cov("ts", "used") / pl.col("ts").var()).item()
        return None if slope is None or not math.isfinite(slope) else float(slope)

    def consumers(self) -> list[dict[str, Any]]:
        """Pipelines by usage in the window, largest first (top 5)."""
        if not self.spent:
            return []
        frame = pl.DataFrame(self.spent, schema=["ts", "pipeline", "amount"], orient="row")
        top = (frame.group_by("pipeline").agg(pl.col("amount").sum())
               .sort(["amount", "pipeline"], descending=[True, False]).head(5))
        total = float(frame["amount"].sum()) or 1.0
        return [{"pipeline": p, "used": round(a, 4), "share": round(a / total, 4)}
                for p, a in top.iter_rows()]

    def _forecast(self, now: float) -> list[Signal]:
        _, used, limit = self.levels[-1]
        rate = self.rate()
        left = limit - used
        tte = math.inf if rate is None or rate <= 0 else max(0.0, left) / rate
        top = self.consumers()
        who = ", ".join(f"{c['pipeline']} {c['share']:.0%}" for c in top[:3]) or "unknown"
        # "feature" ties the two to one series: the critical one inhibits the warning
        details = {"feature": self.resource, "pool": self.pool, "resource": self.resource,
                   "used": used, "limit": limit,
                   "share_of_limit": round(used / limit, 4),
                   "rate_per_hour": None if rate is None else round(rate * 3600, 6),
                   "hours_to_limit": None if math.isinf(tte) else round(tte / 3600, 3),
                   "horizon_hours": self.horizon_s / 3600, "top_consumers": top,
                   "window_s": self.window_s}
        soon = tte <= self.horizon_s
        full = used / limit >= self.critical_share
        when = "never at this rate" if math.isinf(tte) else f"in {_span(tte)}"
        return [
            Signal("quota_exhaustion", self._key("forecast"), soon, "warning",
                   f"pool {self.pool}: {self.resource} runs out {when} ({used:.4g} of "
                   f"{limit:.4g} used); top consumers: {who}", now, self.pool, None,
                   {**details, "statistic": "hours_to_limit"}),
            Signal("quota_exhaustion", self._key("limit"), full, "critical",
                   f"pool {self.pool}: {self.resource} at {used / limit:.0%} of its limit "
                   f"({used:.4g} of {limit:.4g}); top consumers: {who}", now, self.pool, None,
                   {**details, "statistic": "share_of_limit",
                    "critical_share": self.critical_share}),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "spent": self.spent,
                "runs": {r: list(v) for r, v in self.runs.items()},
                "errant": sorted(self.errant)}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.levels = [(float(a), float(b), float(c)) for a, b, c in d.get("levels", [])]
        self.spent = [(float(a), str(b), float(c)) for a, b, c in d.get("spent", [])]
        self.runs = {r: (str(v[0]), float(v[1])) for r, v in d.get("runs", {}).items()}
        self.errant = set(d.get("errant", []))


def _span(seconds: float) -> str:
    """``90`` -> ``1.5 min``; ``7200`` -> ``2.0 h``.

    >>> _span(45), _span(90), _span(7200), _span(3 * 86400)
    ('45 s', '1.5 min', '2.0 h', '3.0 days')
    """
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
