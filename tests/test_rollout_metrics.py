"""The rollouts' verdicts as Prometheus gauges (``sentinelle_rollout_verdict``), from the
same view of ml.deployments and ml.deploy.commands that answers ``/v1/canary``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from streams.runtime.canary_page import CanaryViews, RolloutCollector


def scrape(views: CanaryViews) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(RolloutCollector(views))
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_a_rollout_s_verdict_and_step_follow_its_records() -> None:
    views = CanaryViews({"d": "deployments", "c": "commands"})
    views.verdicts.feed("deployments", {"model": "ranker", "stable_version": "r5",
                                        "canary_version": "r6", "traffic_percent": 5,
                                        "phase": "started", "ts": 100})
    page = scrape(views)
    assert page['sentinelle_rollout_verdict{model="ranker",verdict="pending",version="r6"}'] == 1
    assert page['sentinelle_rollout_verdict{model="ranker",verdict="pass",version="r6"}'] == 0
    assert page['sentinelle_rollout_traffic_percent{model="ranker",version="r6"}'] == 5
    views.verdicts.feed("commands", {"command_id": "rollback:ranker:r6:1", "action": "rollback",
                                     "model": "ranker", "from_version": "r6",
                                     "to_version": "r5", "requires_approval": False,
                                     "issued_at": 200})
    page = scrape(views)
    assert page['sentinelle_rollout_verdict{model="ranker",verdict="fail",version="r6"}'] == 1
    assert page['sentinelle_rollout_verdict{model="ranker",verdict="pending",version="r6"}'] == 0
    # a page answers the same
    body, status = views.answer("ranker", "r6", None, "none")
    assert status == 200 and body["verdict"] == "fail"


def test_no_rollout_no_series() -> None:
    assert scrape(CanaryViews({})) == {}
