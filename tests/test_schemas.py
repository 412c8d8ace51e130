"""The JSON Schemas of the wire messages (sentinelle/schemas.py) agree with what Sentinelle
reads and writes.

Inputs: traffic the simulator sends validates and is folded; each way of breaking
an event that a schema can see is rejected by the schema *and* dead-lettered by
the parser. Outputs: the alerts, commands, window statistics and dead letters
Sentinelle builds validate against their schemas.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from sentinelle.schemas import MESSAGES, schema, schemas
from streams.core.parse import PredictionColumns, parse_predictions


def validator(topic: str) -> Draft202012Validator:
    return Draft202012Validator(schema(topic))


def test_every_schema_is_a_valid_json_schema() -> None:
    for topic, s in schemas().items():
        Draft202012Validator.check_schema(s)
        assert s["title"] == f"{topic} message"
    assert set(MESSAGES) >= {"ml.predictions", "ml.feedback", "ml.pipeline", "ml.metrics",
                             "ml.deployments", "ml.deploy.approvals", "ml.alerts",
                             "ml.deploy.commands", "ml.stats", "ml.deadletter"}


def good(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    return {"event_id": f"e-{i}", "ts": time.time() - rng.uniform(0, 60), "model": "m",
            "version": "v1", "latency_ms": rng.uniform(1, 90),
            "cohort": rng.choice(["stable", "canary"]), "status": rng.choice(["ok", "error"]),
            "features": {"amount": rng.lognormvariate(3, 1), "country": "FR", "vip": True,
                         "age": None},
            "prediction": rng.random()}


def parsed(event: Any) -> bool:
    """Whether the parser folds ``event`` (sent alone): no dead letter."""
    return parse_predictions(orjson.dumps(event), PredictionColumns(), 0) == []


def test_good_traffic_validates_and_is_folded_in_both_wire_forms() -> None:
    v = validator("ml.predictions")
    events = [good(i) for i in range(50)]
    for e in events:
        assert v.is_valid(e) and parsed(e)
    assert v.is_valid(events)  # the batch form
    assert parse_predictions(orjson.dumps(events), PredictionColumns(), 0) == []
    assert not v.is_valid([])  # an empty batch is not a message
    assert v.is_valid({**events[0], "ts": "2026-11-27T07:00:00.123Z", "extra": {"any": 1}})


BREAKAGES = {
    "no event_id": lambda e: e.pop("event_id"),
    "no latency": lambda e: e.pop("latency_ms"),
    "negative latency": lambda e: e.update(latency_ms=-1),
    "latency as text": lambda e: e.update(latency_ms="12"),
    "unknown status": lambda e: e.update(status="meh"),
    "unknown cohort": lambda e: e.update(cohort="blue"),
    "empty model": lambda e: e.update(model=""),
    "model as number": lambda e: e.update(model=7),
    "a feature that is an object": lambda e: e["features"].update(x={"y": 1}),
    "a feature that is a list": lambda e: e["features"].update(x=[1, 2]),
    "features not an object": lambda e: e.update(features=[1]),
    "ts as bool": lambda e: e.update(ts=True),
}


@pytest.mark.parametrize("how", sorted(BREAKAGES))
def test_what_the_schema_rejects_the_parser_dead_letters(how: str) -> None:
    event = copy.deepcopy(good(1))
    BREAKAGES[how](event)
    assert not validator("ml.predictions").is_valid(event), how
    assert not parsed(event), how


def test_the_outputs_validate() -> None:
    from alerting.events import alert_event
    from detectors.base import Signal
    from detectors.contract import command_id

    signal = Signal("latency_slo", "latency_slo:m:v1:p99", True, "error",
                    "m v1: p99 900 ms > 300 ms", 1_796_000_000.0, "m", "v1",
                    {"statistic": "p99", "value": 900.0, "threshold": 300.0})
    alert = alert_event(signal, "trigger")
    assert validator("ml.alerts").is_valid(alert), list(validator("ml.alerts").iter_errors(alert))
    command = {"command_id": command_id("rollback", "m", "v2", 5), "action": "rollback",
               "model": "m", "from_version": "v2", "to_version": "v1", "reason": "worse",
               "alert_dedup_keys": ["canary_regression:m:v2"], "requires_approval": False,
               "issued_at": "2026-11-27T07:00:00.000Z"}
    assert validator("ml.deploy.commands").is_valid(command)
    assert not validator("ml.deploy.commands").is_valid({**command, "action": "explode"})
    assert not validator("ml.alerts").is_valid({**alert, "event_action": "shout"})
