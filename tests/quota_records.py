"""Hand-made ``ml.pipeline`` and ``ml.stats`` records for the ``quota estimate`` tests.

The expected numbers are worked out in the tests' comments (percentiles
interpolate linearly: the p95 of sorted ``a <= b <= c`` is ``b + 0.9 * (c - b)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import polars as pl

DAY = 86_400
T0 = datetime(2026, 11, 27, tzinfo=UTC).timestamp()  # a UTC midnight


def ev(run: str, t: float, status: str = "succeeded", resources: dict[str, Any] | None = None,
       quota: dict[str, Any] | None = None, pipeline: str = "fraud-train",
       kind: str = "training") -> dict[str, Any]:
    """An ``ml.pipeline`` event ``t`` seconds after T0 (epoch seconds, as the contract allows)."""
    rec: dict[str, Any] = {"event_id": f"{pipeline}/{run}/{t}/{status}", "pipeline": pipeline,
                           "kind": kind, "run_id": run, "status": status, "ts": T0 + t}
    if resources is not None:
        rec["resources"] = resources
    if quota is not None:
        rec["quota"] = quota
    return rec


def quota(used: float, limit: float, pool: str = "team-a",
          resource: str = "gpu_hours") -> dict[str, Any]:
    return {"pool": pool, "resource": resource, "used": used, "limit": limit}


def messages(records: Iterable[Any]) -> list[bytes]:
    """Each record as the message value a producer sends (JSON)."""
    return [orjson.dumps(r) for r in records]


def keyed(records: Iterable[dict[str, Any]], field: str) -> list[tuple[bytes, bytes]]:
    """Each record as a Kafka message ``(key, value)``, keyed by its ``field``."""
    return [(str(r[field]).encode(), orjson.dumps(r)) for r in records]


def row(frame: pl.DataFrame, **match: str) -> dict[str, Any]:
    rows = frame.filter(*[pl.col(k) == v for k, v in match.items()]).to_dicts()
    assert len(rows) == 1, rows
    return rows[0]


def window(model: str, start_s: float, count: int, length_s: float = 60, version: str = "v1",
           cohort: str = "stable") -> dict[str, Any]:
    """An ``ml.stats`` window starting ``start_s`` seconds after T0."""
    start = datetime.fromtimestamp(T0 + start_s, UTC)
    rfc = lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    return {"model": model, "version": version, "cohort": cohort,
            "window": {"start": rfc(start), "end": rfc(start + timedelta(seconds=length_s))},
            "count": count, "errors": 0}


def chart_records() -> list[dict[str, Any]]:
    return [ev("r1", 3600, resources={"gpu_hours": 30}, quota=quota(40, 200)),
            ev("r2", 2 * DAY + 3600, resources={"gpu_hours": 50}, quota=quota(95, 200)),
            ev("r3", 2 * DAY + 7200, resources={"cpu_hours": 9}, quota=quota(1, 5, "team-b")),
            ev("r4", 2 * DAY, resources={"gpu_hours": 99}, quota=quota(1, 5, "team-b"))]
