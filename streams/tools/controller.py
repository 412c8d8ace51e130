"""``sentinelle controller``: a reference deployment controller that closes the loop.

It consumes ``ml.deploy.commands``, applies each command to a local rollout
state file (traffic weights per version) and announces the result on
``ml.deployments``, which the Sentinelle worker reads to know the rollout's
new step (and the simulator, standing in for a service mesh, to move traffic).
A real controller (Argo Rollouts, Flagger, a KServe canary) would do the same
against its own API; see docs/CANARY.md, "Deployment controllers".

Rules:

- a command is checked first (:func:`parse_command`): one that is not JSON,
  not an object, or lacks a usable ``command_id``, ``model``, ``action``
  (``promote``, ``rollback`` or ``pause``), ``from_version`` or, for
  ``promote``, a ``traffic_percent`` within 1-100, is logged and skipped, and
  dead-lettered with its reason when the controller has a dead-letter topic;
  the controller goes on and commits past it (a bad command never stops it);
- a ``command_id`` already applied is skipped (commands may arrive twice);
- a command with ``requires_approval: true`` is only logged: the approved
  command follows under its own id;
- a command about another version than the canary in flight is ignored;
- ``promote`` sets the canary's share to ``traffic_percent``; at 100 % the
  canary becomes the stable version (phase ``promoted``);
- ``rollback`` sends all traffic back to the stable version (``rolled_back``);
- ``pause`` freezes the weights (``paused``).

Each rollout is numbered per model and canary version (``rollout``: 1 for the
first rollout of a version, 2 when the same version is rolled out again...)
and every announcement carries the number: the worker and ``sentinelle
rollout`` put it in the ``command_id`` of their commands (``:r2``...), so the
commands of a second rollout of a version are not taken for the first's.

The state file is JSON, written atomically (temporary file, then rename), and
the consumer commits a command's offset only after its effect is saved and
announced, so a crash re-reads at most what was not yet applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from detectors.contract import COMMAND_ACTIONS, rfc3339
from streams.core.parse import DeadLetter, raw_text

__all__ = ["ControllerState", "ControllerWatch", "run_controller", "parse_start",
           "parse_command", "check_command"]

log = logging.getLogger("sentinelle.controller")

APPLIED_KEPT = 1000  # command ids remembered, newest last
STARTED_KEPT = 1000  # (model, canary version) rollout counts remembered, newest last
_ENDED = ("promoted", "rolled_back", "aborted")


def check_command(cmd: Any) -> str | None:
    """Why ``cmd`` cannot be applied (a dead-letter reason, ``code: detail``), or ``None``.

    >>> check_command({"command_id": "promote:m:v2:25", "action": "promote", "model": "m",
    ...                "from_version": "v2", "traffic_percent": None})
    "missing_field: 'traffic_percent' is required with action 'promote'"
    """
    if not isinstance(cmd, dict):
        return f"not_object: a command is a JSON object, not {type(cmd).__name__}"
    for name in ("command_id", "model", "action", "from_version"):
        v = cmd.get(name)
        if v is None:
            return f"missing_field: '{name}'"
        if not isinstance(v, str):
            return f"bad_type: '{name}' must be a string, not {type(v).__name__}"
        if not v.strip():
            return f"bad_value: '{name}' is empty"
    if cmd["action"] not in COMMAND_ACTIONS:
        return (f"bad_value: 'action' {cmd['action']!r} is not one of "
                f"{', '.join(COMMAND_ACTIONS)}")
    if not isinstance(cmd.get("requires_approval", False), bool):
        return "bad_type: 'requires_approval' must be true or false"
    if cmd["action"] == "promote":
        pct = cmd.get("traffic_percent")
        if pct is None:
            return "missing_field: 'traffic_percent' is required with action 'promote'"
        if isinstance(pct, bool) or not isinstance(pct, int | float):
            return f"bad_type: 'traffic_percent' must be a number, not {type(pct).__name__}"
        if not 0 < pct <= 100:
            return f"bad_value: 'traffic_percent' {pct} is not within 1-100"
    return None


def parse_command(raw: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """An ``ml.deploy.commands`` message: ``(command, None)``, or ``(None, reason)``.

    >>> parse_command(b'{"command_id": 1}')
    (None, "bad_type: 'command_id' must be a string, not int")
    >>> parse_command(b"[]")[1]
    'not_object: a command is a JSON object, not list'
    """
    if raw is None:
        return None, "not_json: empty message (no value)"
    try:
        cmd = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"not_json: {exc}"[:500]
    reason = check_command(cmd)
    return (None, reason) if reason is not None else (cmd, None)


def parse_start(text: str) -> tuple[str, str, str, int]:
    """``MODEL:STABLE:CANARY[:PERCENT]`` (the ``--start`` option).

    >>> parse_start("ranker:r5:r6:5")
    ('ranker', 'r5', 'r6', 5)
    """
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise ValueError(f"--start {text!r}: expected MODEL:STABLE:CANARY[:PERCENT]")
    percent = int(parts[3]) if len(parts) == 4 else 5
    if not 0 < percent < 100:
        raise ValueError(f"--start {text!r}: PERCENT must be within 1-99")
    return parts[0], parts[1], parts[2], percent


@dataclass
class ControllerState:
    """Rollouts by model, and the commands already applied."""

    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # model -> command id awaiting
    started: dict[str, int] = field(default_factory=dict)  # "model:canary" -> rollouts
    #: what became of the last command given to :meth:`apply` (not saved): applied,
    #: duplicate, awaiting_approval, not_in_flight or refused
    outcome: str = field(default="", compare=False)

    @classmethod
    def load(cls, path: Path) -> ControllerState:
        if not path.exists():
            return cls()
        data = orjson.loads(path.read_bytes())
        return cls(data.get("rollouts", {}), data.get("applied", []), data.get("waiting", {}),
                   data.get("started", {}))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps({"rollouts": self.rollouts, "applied": self.applied,
                                      "waiting": self.waiting, "started": self.started},
                                     option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    def start(self, model: str, stable: str, canary: str, percent: int,
              environment: str | None = None) -> dict[str, Any]:
        """Begin a canary rollout (what a person does with a real controller): the
        ``rollout``-th of ``canary`` on ``model``."""
        key = f"{model}:{canary}"
        n = self.started.pop(key, 0) + 1
        self.started[key] = n  # the latest last
        while len(self.started) > STARTED_KEPT:
            del self.started[next(iter(self.started))]
        self.rollouts[model] = {"stable_version": stable, "canary_version": canary,
                                "traffic_percent": percent, "phase": "started",
                                "environment": environment, "rollout": n}
        self.waiting.pop(model, None)
        return self.announcement(model)

    def announcement(self, model: str, command_id: str | None = None) -> dict[str, Any]:
        """The ``ml.deployments`` record of a model's current state."""
        r = self.rollouts[model]
        pct = r["traffic_percent"]
        weights = {r["stable_version"]: 100 - pct}
        if r["canary_version"] and r["phase"] not in ("promoted", "rolled_back", "aborted"):
            weights[r["canary_version"]] = pct
        else:
            weights = {r["stable_version"]: 100}
        rec = {"model": model, **r, "weights": weights, "ts": rfc3339(time.time())}
        if command_id is not None:
            rec["command_id"] = command_id
        return {k: v for k, v in rec.items() if v is not None}

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one command; the ``ml.deployments`` record to announce, if any.

        A command :func:`check_command` refuses is logged and not applied.
        """
        self.outcome = "refused"
        reason = check_command(cmd)
        if reason is not None:
            log.warning("command %r refused: %s", cmd.get("command_id")
                        if isinstance(cmd, dict) else cmd, reason)
            return None
        cid, model = str(cmd["command_id"]), str(cmd["model"])
        if cid in self.applied:
            log.info("command %s already applied; skipped", cid)
            self.outcome = "duplicate"
            return None
        r = self.rollouts.get(model)
        if cmd.get("requires_approval"):
            self.waiting[model] = cid
            log.info("command %s waits for an approval: %s", cid, cmd.get("reason"))
            self.outcome = "awaiting_approval"
            return None
        if r is None or r["canary_version"] != cmd["from_version"] or r["phase"] in _ENDED:
            log.warning("command %s is not about a canary in flight here; ignored", cid)
            self.outcome = "not_in_flight"
            return None
        action = cmd["action"]
        if action == "promote":
            pct = int(round(cmd["traffic_percent"]))
            if pct >= 100:
                r.update(stable_version=r["canary_version"], traffic_percent=100,
                         phase="promoted")
            else:
                r.update(traffic_percent=pct, phase="step")
        elif action == "rollback":
            r.update(traffic_percent=0, phase="rolled_back")
        elif action == "pause":
            r.update(phase="paused")
        else:
            log.warning("command %s: unknown action %r; ignored", cid, action)
            return None
        self.waiting.pop(model, None)
        self.applied = [*self.applied, cid][-APPLIED_KEPT:]
        self.outcome = "applied"
        log.info("applied %s: %s now %s", cid, model, self.announcement(model)["weights"])
        return self.announcement(model, cid)


class ControllerWatch(ConsumerRebalanceListener):
    """What the controller shows on ``/metrics`` and ``/ready`` (``sentinelle controller
    --web-port``): commands by action and outcome (``applied``, ``duplicate``,
    ``awaiting_approval``, ``not_in_flight``, ``refused``; ``invalid`` for a message
    that is no command, dead-lettered, with action ``unknown``), announcements made,
    and each rollout's canary share and phase as a gauge read from the state. Ready
    once the rollouts are announced and the consumer has joined its group."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter("sentinelle_controller_commands_total",
                                "Commands read, by action and what became of them",
                                ["action", "outcome"], registry=registry)
        self.announcements = Counter("sentinelle_controller_announcements_total",
                                     "Records announced on ml.deployments", registry=registry)
        self.state: ControllerState | None = None
        self.joined = self.announced = False
        registry.register(_RolloutGauges(self))

    def waiting_for(self) -> list[str]:
        return ([] if self.announced else ["announcing the rollouts"]) + \
            ([] if self.joined else ["joining the consumer group"])

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.joined = False

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined = True


class _RolloutGauges(Collector):
    """``sentinelle_controller_canary_traffic_percent{model,stable,canary,phase}``, read
    from the state at each scrape (so a finished rollout's old series goes away)."""

    def __init__(self, watch: ControllerWatch) -> None:
        self.watch = watch

    def collect(self) -> Any:
        g = GaugeMetricFamily("sentinelle_controller_canary_traffic_percent",
                              "Share of a model's traffic on its canary version, by phase",
                              labels=["model", "stable", "canary", "phase"])
        state = self.watch.state
        for model, r in (state.rollouts.items() if state is not None else ()):
            live = r["phase"] not in _ENDED
            g.add_metric([model, str(r["stable_version"]), str(r["canary_version"] or ""),
                          str(r["phase"])], float(r["traffic_percent"]) if live else 0.0)
        yield g


async def run_controller(servers: str, commands_topic: str, deployments_topic: str,
                         state_path: Path, group_id: str,
                         starts: Sequence[tuple[str, str, str, int]] = (),
                         environment: str | None = None,
                         on_record: Callable[[dict[str, Any]], None] | None = None,
                         stop: asyncio.Event | None = None,
                         deadletter_topic: str | None = None,
                         options: dict[str, Any] | None = None,
                         watch: ControllerWatch | None = None) -> None:
    """Apply commands until ``stop`` is set (or forever).

    A command that cannot be applied (:func:`parse_command`) is logged with its
    partition and offset, sent to ``deadletter_topic`` (when given) as the
    contract's ``ml.deadletter`` record, and skipped. ``options``: more keyword
    arguments of the Kafka clients (:func:`streams.runtime.kafka.client_options`).
    ``watch``: counts and readiness for the controller's web pages.
    """
    state = ControllerState.load(state_path)
    producer = AIOKafkaProducer(bootstrap_servers=servers, **(options or {}))
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **(options or {}))
    consumer.subscribe([commands_topic], listener=watch)
    if watch is not None:
        watch.state = state
    await producer.start()
    await consumer.start()

    async def announce(rec: dict[str, Any]) -> None:
        await producer.send_and_wait(deployments_topic, orjson.dumps(rec),
                                     key=rec["model"].encode())
        if watch is not None:
            watch.announcements.inc()
        if on_record is not None:
            on_record(rec)

    try:
        for model, stable, canary, pct in starts:
            r = state.rollouts.get(model)
            if r is None or r["canary_version"] != canary:  # not already under way
                state.start(model, stable, canary, pct, environment)
        state.save(state_path)
        for model in state.rollouts:  # say where every rollout stands
            await announce(state.announcement(model))
        if watch is not None:
            watch.announced = True
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for msgs in batches.values():
                for msg in msgs:
                    cmd, reason = parse_command(msg.value)
                    if cmd is None:
                        assert reason is not None
                        log.warning("command at %s/%d offset %d skipped: %s", msg.topic,
                                    msg.partition, msg.offset, reason)
                        if deadletter_topic is not None:
                            dead = DeadLetter(reason, raw_text(msg.value or b"")).to_record(
                                msg.topic or commands_topic, msg.partition, msg.offset)
                            await producer.send_and_wait(deadletter_topic, orjson.dumps(dead),
                                                         key=msg.key)
                        if watch is not None:
                            watch.commands.labels("unknown", "invalid").inc()
                        continue
                    rec = state.apply(cmd)
                    state.save(state_path)
                    if watch is not None:
                        watch.commands.labels(cmd["action"], state.outcome).inc()
                    if rec is not None:
                        await announce(rec)
            if batches:
                await consumer.commit()
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()  # leaves the group cleanly
        await producer.stop()
