"""``sentinelle controller``: a reference deployment controller that closes the loop.

It consumes ``ml.deploy.commands``, applies each command to a local rollout
state file (traffic weights per version) and announces the result on
``ml.deployments``, which the Sentinelle worker reads to know the rollout's
new step (and the simulator, standing in for a service mesh, to move traffic).
A real controller (Argo Rollouts, Flagger, a KServe canary) would do the same
against its own API; see the README, "Deployment controllers".

Rules:

- a ``command_id`` already applied is skipped (commands may arrive twice);
- a command with ``requires_approval: true`` is only logged: the approved
  command follows under its own id;
- a command about another version than the canary in flight is ignored;
- ``promote`` sets the canary's share to ``traffic_percent``; at 100 % the
  canary becomes the stable version (phase ``promoted``);
- ``rollback`` sends all traffic back to the stable version (``rolled_back``);
- ``pause`` freezes the weights (``paused``).

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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from alerting.events import rfc3339

__all__ = ["ControllerState", "run_controller", "parse_start"]

log = logging.getLogger("sentinelle.controller")

APPLIED_KEPT = 1000  # command ids remembered, newest last


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

    @classmethod
    def load(cls, path: Path) -> ControllerState:
        if not path.exists():
            return cls()
        data = orjson.loads(path.read_bytes())
        return cls(data.get("rollouts", {}), data.get("applied", []), data.get("waiting", {}))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps({"rollouts": self.rollouts, "applied": self.applied,
                                      "waiting": self.waiting}, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    def start(self, model: str, stable: str, canary: str, percent: int,
              environment: str | None = None) -> dict[str, Any]:
        """Begin a canary rollout (what a person does with a real controller)."""
        self.rollouts[model] = {"stable_version": stable, "canary_version": canary,
                                "traffic_percent": percent, "phase": "started",
                                "environment": environment}
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
        """Apply one command; the ``ml.deployments`` record to announce, if any."""
        cid, model = str(cmd.get("command_id")), str(cmd.get("model"))
        if cid in self.applied:
            log.info("command %s already applied; skipped", cid)
            return None
        r = self.rollouts.get(model)
        if cmd.get("requires_approval"):
            self.waiting[model] = cid
            log.info("command %s waits for an approval: %s", cid, cmd.get("reason"))
            return None
        if r is None or r["canary_version"] != cmd.get("from_version") or r["phase"] in (
                "promoted", "rolled_back", "aborted"):
            log.warning("command %s is not about a canary in flight here; ignored", cid)
            return None
        action = cmd.get("action")
        if action == "promote":
            pct = int(cmd.get("traffic_percent", r["traffic_percent"]))
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
        log.info("applied %s: %s now %s", cid, model, self.announcement(model)["weights"])
        return self.announcement(model, cid)


async def run_controller(servers: str, commands_topic: str, deployments_topic: str,
                         state_path: Path, group_id: str,
                         starts: Sequence[tuple[str, str, str, int]] = (),
                         environment: str | None = None,
                         on_record: Callable[[dict[str, Any]], None] | None = None,
                         stop: asyncio.Event | None = None) -> None:
    """Apply commands until ``stop`` is set (or forever)."""
    state = ControllerState.load(state_path)
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(commands_topic, bootstrap_servers=servers, group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()

    async def announce(rec: dict[str, Any]) -> None:
        await producer.send_and_wait(deployments_topic, orjson.dumps(rec),
                                     key=rec["model"].encode())
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
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for msgs in batches.values():
                for msg in msgs:
                    try:
                        cmd = orjson.loads(msg.value or b"null")
                    except orjson.JSONDecodeError:
                        log.warning("offset %d: not JSON; skipped", msg.offset)
                        continue
                    if not isinstance(cmd, dict):
                        continue
                    rec = state.apply(cmd)
                    state.save(state_path)
                    if rec is not None:
                        await announce(rec)
            if batches:
                await consumer.commit()
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()  # leaves the group cleanly
        await producer.stop()
