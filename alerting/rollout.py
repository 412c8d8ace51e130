"""Rollout decisions: from canary verdicts to ``ml.deploy.commands``.

A :class:`Rollout` follows one model's canary and turns window verdicts
(:class:`detectors.canary.Verdict`) into commands shaped as the contract says:

- after ``fail_windows`` failed windows in a row: ``rollback`` (or ``pause``,
  for a model whose changes cannot be reversed), at most one per canary
  version, linked to the ``canary_regression`` alert;
- after ``pass_windows`` passing windows in a row: ``promote`` to the next step
  of the ``ladder`` (5 -> 25 -> 50 -> 100 %); a step above ``approval_above``
  percent waits for an approval on ``ml.deploy.approvals`` and says so;
- inconclusive windows (too little traffic) neither pass nor fail: they reset
  nothing and count for nothing;
- after any command, verdicts are ignored for ``cooldown_s`` (the controller
  is moving traffic; the next windows would judge a mix).

``command_id`` is stable for a decision (``action:model:canary:step``), so a
controller that sees a command twice acts once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alerting.events import rfc3339
from detectors.canary import Verdict

__all__ = ["RolloutPolicy", "Rollout", "Decision"]


@dataclass(frozen=True)
class RolloutPolicy:
    fail_windows: int = 2
    pass_windows: int = 3
    ladder: tuple[int, ...] = (5, 25, 50, 100)
    approval_above: int = 50
    cooldown_s: float = 300.0
    on_failure: str = "rollback"        # or "pause"

    def __post_init__(self) -> None:
        if self.fail_windows < 1 or self.pass_windows < 1:
            raise ValueError("fail_windows and pass_windows must be >= 1")
        if list(self.ladder) != sorted(set(self.ladder)) or not self.ladder:
            raise ValueError("ladder must be increasing traffic percentages")
        if self.on_failure not in ("rollback", "pause"):
            raise ValueError("on_failure is 'rollback' or 'pause'")


@dataclass(frozen=True)
class Decision:
    """A command to publish, or a promotion waiting for its approval."""

    command: dict[str, Any] | None = None
    waiting: str | None = None


@dataclass
class Rollout:
    model: str
    stable: str
    canary: str
    traffic_percent: int
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    failed: int = 0
    passed: int = 0
    quiet_until: float = 0.0
    finished: bool = False
    awaiting: int | None = None              # the step waiting for an approval
    approved: set[int] = field(default_factory=set)

    def _next_step(self) -> int | None:
        later = [s for s in self.policy.ladder if s > self.traffic_percent]
        return later[0] if later else None

    def observe(self, verdict: Verdict, now: float) -> Decision | None:
        """Fold one window's verdict in; the decision it leads to, if any."""
        if self.finished or now < self.quiet_until or verdict.outcome == "inconclusive":
            return None
        if verdict.outcome == "fail":
            self.failed, self.passed = self.failed + 1, 0
            if self.failed >= self.policy.fail_windows:
                return self._fail(verdict, now)
            return None
        self.passed, self.failed = self.passed + 1, 0
        if self.passed < self.policy.pass_windows:
            return None
        step = self._next_step()
        if step is None:
            return None
        if step > self.policy.approval_above and step not in self.approved:
            self.awaiting = step
            return Decision(waiting=f"promote {self.model} {self.canary} to {step}% waits for "
                                    f"an approval on ml.deploy.approvals")
        return self._promote(step, now, self.passed)

    def approve(self, version: str, action: str, now: float) -> Decision | None:
        """An approval from ``ml.deploy.approvals``; releases a waiting promotion."""
        if version != self.canary or action != "promote" or self.finished:
            return None
        step = self.awaiting if self.awaiting is not None else self._next_step()
        if step is None:
            return None
        self.approved.add(step)
        if self.awaiting is None:
            return None  # approved ahead of time: used when the step comes
        self.awaiting = None
        return self._promote(step, now, self.passed)

    def _promote(self, step: int, now: float, windows: int) -> Decision:
        self.traffic_percent = step
        self.passed = 0
        self.quiet_until = now + self.policy.cooldown_s
        if step >= self.policy.ladder[-1]:
            self.finished = True
        return Decision(command=self._command(
            "promote", step, f"canary {self.canary} passed {windows} windows in a row",
            now, traffic_percent=step))

    def _fail(self, verdict: Verdict, now: float) -> Decision:
        self.finished = True  # at most one rollback (or pause) per canary version
        self.quiet_until = now + self.policy.cooldown_s
        action = self.policy.on_failure
        return Decision(command=self._command(
            action, self.traffic_percent, "; ".join(verdict.reasons), now,
            evidence=verdict.evidence,
            alert_dedup_keys=[f"canary_regression:{self.model}:{self.canary}"]))

    def _command(self, action: str, step: int, reason: str, now: float,
                 **extra: Any) -> dict[str, Any]:
        to_version = self.stable if action == "rollback" else self.canary
        command = {
            "command_id": f"{action}:{self.model}:{self.canary}:{step}",
            "action": action, "model": self.model, "from_version": self.canary,
            "to_version": to_version, "reason": reason[:1024],
            "alert_dedup_keys": extra.pop("alert_dedup_keys", []),
            "requires_approval": False, "issued_at": rfc3339(now),
        }
        command.update(extra)
        return command
