"""``GET /v1/canary/{model}/{version}``: a canary's verdict, from whichever worker is asked.

Every worker follows ``ml.deploy.commands``, ``ml.deployments`` and
``ml.alerts`` whole (outside the consumer group, like the silences) into an
:class:`alerting.verdict.Verdicts` view, so any worker answers the verdict
(``pass | fail | inconclusive | pending``), the canary's share, the latest
command, its evidence and the alerts firing on the version. The *streaks*
(failed and passing windows in a row, the latest window's outcome) live in
the rollout state of the worker that owns the model's partition: that worker
adds them itself, and any other asks it over HTTP (the owner's URL from
Faust's partition assignor, as ``app.router``/``table_route`` find it) and
passes them on; when the owner cannot be reached the answer says so
(``streaks: null``, ``streaks_from: "unavailable"``) and is otherwise whole.

Always 200 (a non-2xx is an error to Argo Rollouts, and errors abort an
analysis): a version no command or deployment has named yet is ``pending``
with ``known: false``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from alerting.verdict import Verdicts

__all__ = ["CanaryViews", "local_streaks"]

log = logging.getLogger("sentinelle.worker")


def local_streaks(monitors: Mapping[str, Any], model: str, version: str
                  ) -> dict[str, Any] | None:
    """The streaks of ``model``'s rollout of ``version``, if this worker holds the model."""
    mon = monitors.get(model)
    if mon is None or getattr(mon, "canary", None) is None:
        return None
    active = mon.canary.tracker.active
    out: dict[str, Any] = {"last_window": mon.verdicts.get(version)}
    if active is not None and active.canary == version:
        out.update(failed_in_a_row=active.failed, passed_in_a_row=active.passed,
                   traffic_percent=active.traffic_percent, awaiting_approval=active.awaiting,
                   rollout=active.rollout)
    else:
        out.update(failed_in_a_row=None, passed_in_a_row=None,
                   finished=version in mon.canary.tracker.done)
    return out


class CanaryViews:
    """The worker's view of every canary, fed by three followers; answers the page."""

    def __init__(self, kinds: Mapping[str, str]) -> None:
        self.kinds = dict(kinds)  # topic name -> commands | deployments | alerts
        self.verdicts = Verdicts()

    def follower(self, topic: str) -> Callable[[bytes | None, bytes | None, int, int], Any]:
        kind = self.kinds[topic]

        async def on_record(key: bytes | None, value: bytes | None, partition: int,
                            offset: int) -> None:
            try:
                rec = orjson.loads(value or b"null")
            except orjson.JSONDecodeError:
                return  # not ours to dead-letter: the reader of that topic does
            self.verdicts.feed(kind, rec)

        return on_record

    def answer(self, model: str, version: str, streaks: dict[str, Any] | None,
               streaks_from: str) -> tuple[dict[str, Any], int]:
        view = self.verdicts.get(model, version)
        if view is None:
            body: dict[str, Any] = {"model": model, "version": version, "verdict": "pending",
                                    "known": False}
        else:
            body = {**view.as_dict(), "known": True}
        body.update(streaks=streaks, streaks_from=streaks_from)
        return body, 200


VERDICTS = ("pending", "pass", "fail", "inconclusive")


class RolloutCollector:
    """The rollouts' verdicts and steps as Prometheus gauges, for teams who gate on the
    Prometheus provider rather than the ``/v1/canary`` page: per model, its latest canary
    version, ``sentinelle_rollout_verdict{model,version,verdict}`` (1 for the verdict the
    page would answer, 0 for the others) and ``sentinelle_rollout_traffic_percent``. Every
    worker follows every rollout, so any of them answers; one series set per model."""

    def __init__(self, views: CanaryViews) -> None:
        self.views = views

    def describe(self) -> list[Any]:
        return []  # collected at scrape time; no fixed series

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        verdict = GaugeMetricFamily("sentinelle_rollout_verdict", "A rollout's verdict for its "
                                    "canary version (as GET /v1/canary answers): 1 for the "
                                    "verdict, 0 for the others",
                                    labels=["model", "version", "verdict"])
        traffic = GaugeMetricFamily("sentinelle_rollout_traffic_percent", "The canary's share "
                                    "of traffic, as the controller last applied it",
                                    labels=["model", "version"])
        v = self.views.verdicts
        for model, version in sorted(v._canary.items()):
            view = v.get(model, version)
            if view is None:
                continue
            for name in VERDICTS:
                verdict.add_metric([model, version, name], 1.0 if view.verdict == name else 0.0)
            if view.traffic_percent is not None:
                traffic.add_metric([model, version], float(view.traffic_percent))
        yield verdict
        yield traffic
