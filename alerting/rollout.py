"""Rollout decisions: from canary verdicts to ``ml.deploy.commands``.

A :class:`Rollout` follows one model's canary and turns window verdicts
(:class:`detectors.canary.Verdict`) into commands shaped as the contract says:

- after ``fail_windows`` failed windows in a row: ``rollback`` (or ``pause``,
  for a model whose changes cannot be reversed), at most one per canary
  version, linked to the ``canary_regression`` alert;
- after ``pass_windows`` passing windows in a row: ``promote`` to the next step
  of the ``ladder`` (5 -> 25 -> 50 -> 100 %); a step above ``approval_above``
  percent waits for an approval on ``ml.deploy.approvals``, and says so once
  with the same command carrying ``requires_approval: true`` (a controller
  must not act on it; its ``command_id`` ends in ``:awaiting-approval``, so
  the approved command, sent later, is not mistaken for a duplicate);
- inconclusive windows (too little traffic) neither pass nor fail: they reset
  nothing and count for nothing;
- after any command, verdicts of windows ending before ``cooldown_s`` has
  passed are ignored (the controller is moving traffic; they would judge a mix).

``command_id`` is stable for a decision, so a controller that sees a command
twice acts once, and names the rollout as well as the step (see
:func:`make_command`): ``action:model:canary:step`` for the first rollout of a
canary version on a model, ``action:model:canary:step:r<n>`` for its n-th
(``r2``, ``r3``...), so rolling the same version out again after a rollback
and failing again issues a rollback a controller acts on. ``n`` is the
``rollout`` number a controller announces on ``ml.deployments`` (the reference
controller does) or, when it announces none, the tracker's own count of the
rollouts of that version, kept in its checkpoint: the same input gives the
same ids on a replay and across a restart.

:class:`RolloutTracker` holds a model's rollouts: which version is stable and
which is canary, at what share and in which environment, learned from
``ml.deployments`` (the controller's announcements) or, without them, from the
cohorts of the model's traffic. It pairs the canary and stable windows of each
event-time window, asks :class:`~detectors.canary.CanaryAnalysis` for the
verdict and returns the commands and ``canary_regression`` signals. Time is
event time throughout: window ends for verdicts, and the model's watermark
for control messages (deployments, approvals), so a replay decides the same.

A rollout announced on ``ml.deployments`` before any of its traffic arrives is
kept until the traffic comes: :meth:`RolloutTracker.holds` tells the model's
owner to keep its state (and so the announced step, environment and rollout
number) for ``announced_ttl_s`` of wall clock after its latest announcement
(its ``ts``), however quiet the model is.

The data flows one way: the model's monitor hands the tracker its closed
windows, the keys of the alerts firing on each canary version, and the
prediction histograms it accumulated (:class:`~detectors.canary.PredictionHistograms`);
the tracker pairs the windows, asks :class:`~detectors.canary.CanaryAnalysis`
for each verdict and returns commands and signals. It holds the policy and the
rollout state, nothing else.

The tracker's state is bounded, whatever the traffic: the last ``DONE_KEPT``
finished canary versions and the rollout numbers of the last ``NUMBERS_KEPT``
canary versions; a checkpoint is cut to the same bounds when loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.base import Signal
from detectors.canary import (
    CanaryAnalysis,
    PredictionHistograms,
    Verdict,
    cleared_signal,
    regression_signal,
)
from detectors.contract import DEPLOYMENT_PHASES, Severity, command_id, dedup_key, rfc3339
from detectors.windows import WindowStats

__all__ = ["RolloutPolicy", "Rollout", "Decision", "RolloutTracker", "TrackerOutput",
           "DEPLOYMENT_PHASES", "make_command", "rollout_number", "ANNOUNCED_TTL_S"]

_ENDED = ("promoted", "rolled_back", "aborted")
DONE_KEPT = 50  # finished canary versions remembered per model (not re-judged from traffic)
NUMBERS_KEPT = 256  # canary versions whose latest rollout number is remembered per model
ANNOUNCED_TTL_S = 86400.0  # default of ``canary.announced_ttl_s``


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

    def nearest_step(self, percent: float) -> int:
        """The ladder step closest to an observed traffic share.

        >>> RolloutPolicy().nearest_step(7.2), RolloutPolicy().nearest_step(40)
        (5, 50)
        """
        return min(self.ladder, key=lambda s: (abs(s - percent), s))


@dataclass(frozen=True)
class Decision:
    """A command to publish; ``waiting`` says a promotion waits for its approval."""

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
    environment: str | None = None
    learned_from: str = "traffic"            # or "deployments"
    rollout: int = 1                         # the n-th rollout of ``canary`` on the model
    announced_at: float | None = None        # ``ts`` of its latest ml.deployments record
    closed: bool = False                     # the controller announced its end

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
                return self.fail("; ".join(verdict.reasons), now, verdict.evidence)
            return None
        self.passed, self.failed = self.passed + 1, 0
        if self.passed < self.policy.pass_windows:
            return None
        step = self._next_step()
        if step is None or step == self.awaiting:
            return None  # nothing left to promote to, or already said it waits
        if step > self.policy.approval_above and step not in self.approved:
            self.awaiting = step
            note = (f"promote {self.model} {self.canary} to {step}% waits for an approval "
                    f"on ml.deploy.approvals")
            command = self._command("promote", step, note, now, traffic_percent=step,
                                    requires_approval=True)
            command["command_id"] += ":awaiting-approval"
            return Decision(command=command, waiting=note)
        return self._promote(step, now, f"canary {self.canary} passed {self.passed} "
                                        f"windows in a row")

    def approve(self, version: str, action: str, now: float,
                approved_by: str = "someone") -> Decision | None:
        """An approval from ``ml.deploy.approvals``.

        ``promote`` releases a waiting promotion (or, ahead of time, the next
        step when it comes); ``rollback`` rolls the canary back now (a person
        decided, whatever the windows say).
        """
        if version != self.canary or self.finished:
            return None
        if action == "rollback":
            return self.fail(f"rollback of {self.canary} approved by {approved_by}", now, {})
        if action != "promote":
            return None
        step = self.awaiting if self.awaiting is not None else self._next_step()
        if step is None:
            return None
        self.approved.add(step)
        if self.awaiting is None:
            return None  # approved ahead of time: used when the step comes
        self.awaiting = None
        return self._promote(step, now, f"canary {self.canary} passed its windows; step to "
                                        f"{step}% approved by {approved_by}")

    def apply_deployment(self, phase: str, traffic_percent: int | None, now: float) -> None:
        """What the controller says it did (``ml.deployments``)."""
        if phase in _ENDED:
            self.finished = self.closed = True
            return
        if traffic_percent is not None and traffic_percent != self.traffic_percent:
            self.traffic_percent = traffic_percent
            self.passed = self.failed = 0
            if self.awaiting is not None and self.awaiting <= traffic_percent:
                self.awaiting = None
            self.quiet_until = max(self.quiet_until, now + self.policy.cooldown_s)

    def _promote(self, step: int, now: float, reason: str) -> Decision:
        self.traffic_percent = step
        self.passed = 0
        self.quiet_until = now + self.policy.cooldown_s
        if step >= self.policy.ladder[-1]:
            self.finished = True
        return Decision(command=self._command("promote", step, reason, now,
                                              traffic_percent=step))

    def fail(self, reason: str, now: float, evidence: dict[str, Any]) -> Decision:
        """Roll back (or pause) now: at most once per canary version."""
        self.finished = True
        self.quiet_until = now + self.policy.cooldown_s
        action = self.policy.on_failure
        return Decision(command=self._command(
            action, self.traffic_percent, reason, now, evidence=evidence,
            alert_dedup_keys=[dedup_key("canary_regression", self.model, self.canary)]))

    def _command(self, action: str, step: int, reason: str, now: float,
                 **extra: Any) -> dict[str, Any]:
        return make_command(action, self.model, self.stable, self.canary, step, reason, now,
                            environment=self.environment, rollout=self.rollout, **extra)

    def to_dict(self) -> dict[str, Any]:
        return {"stable": self.stable, "canary": self.canary,
                "traffic_percent": self.traffic_percent, "failed": self.failed,
                "passed": self.passed, "quiet_until": self.quiet_until,
                "finished": self.finished, "awaiting": self.awaiting,
                "approved": sorted(self.approved), "environment": self.environment,
                "learned_from": self.learned_from, "rollout": self.rollout,
                "announced_at": self.announced_at, "closed": self.closed}

    @classmethod
    def from_dict(cls, model: str, d: dict[str, Any], policy: RolloutPolicy) -> Rollout:
        return cls(model, d["stable"], d["canary"], int(d["traffic_percent"]), policy,
                   d["failed"], d["passed"], d["quiet_until"], d["finished"], d["awaiting"],
                   set(d["approved"]), d.get("environment"), d.get("learned_from", "traffic"),
                   int(d.get("rollout", 1)), d.get("announced_at"), bool(d.get("closed")))


def make_command(action: str, model: str, stable: str, canary: str, step: int | str,
                 reason: str,
                 now: float, environment: str | None = None, rollout: int = 1,
                 **extra: Any) -> dict[str, Any]:
    """An ``ml.deploy.commands`` message.

    ``command_id`` is ``action:model:canary:step`` for the first rollout of
    ``canary`` on ``model`` and ``action:model:canary:step:r<rollout>`` for a
    later one, so the same decision always has the same id and the same step
    of another rollout of the same version does not. (A promotion waiting for
    an approval appends ``:awaiting-approval``; see :class:`Rollout`.)

    >>> make_command("rollback", "m", "v7", "v8", 5, "errors", 0)["command_id"]
    'rollback:m:v8:5'
    >>> make_command("rollback", "m", "v7", "v8", 5, "errors", 0, rollout=2)["command_id"]
    'rollback:m:v8:5:r2'
    """
    command = {
        "command_id": command_id(action, model, canary, step, rollout),
        "action": action, "model": model, "from_version": canary,
        "to_version": stable if action == "rollback" else canary, "reason": reason[:1024],
        "alert_dedup_keys": extra.pop("alert_dedup_keys", []),
        "requires_approval": extra.pop("requires_approval", False),
        "issued_at": rfc3339(now),
    }
    if environment:
        command["environment"] = environment
    command.update(extra)
    return command


def rollout_number(rec: dict[str, Any]) -> int | None:
    """The optional ``rollout`` number of an ``ml.deployments`` record (1 = the first
    rollout of its canary version); ``None`` when absent or not a positive integer.

    >>> rollout_number({"rollout": 2}), rollout_number({}), rollout_number({"rollout": "2"})
    (2, None, None)
    """
    n = rec.get("rollout")
    if isinstance(n, bool) or not isinstance(n, int | float) or n != n or n < 1:
        return None
    if n != int(n) or n > 1_000_000_000:
        return None
    return int(n)


@dataclass(slots=True)
class TrackerOutput:
    commands: list[dict[str, Any]] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    verdicts: list[tuple[str, Verdict]] = field(default_factory=list)  # (canary, verdict)

    def add(self, decision: Decision | None, rollout: Rollout, severity: Severity,
            timestamp: float) -> None:
        if decision is None or decision.command is None:
            return
        cmd = decision.command
        self.commands.append(cmd)
        if cmd["action"] in ("rollback", "pause"):
            self.signals.append(regression_signal(rollout.model, rollout.canary, rollout.stable,
                                                  cmd, rollout.traffic_percent, severity,
                                                  timestamp))


class RolloutTracker:
    """The rollouts of one model: state, window pairing, decisions.

    Parameters
    ----------
    model
        The model name.
    analysis
        Judges one window of canary against stable.
    policy
        Turns verdicts into commands.
    severity
        Severity of ``canary_regression``.
    announced_ttl_s
        How long (wall clock, from its latest announcement's ``ts``) a rollout
        announced on ``ml.deployments`` is held while none of its traffic comes
        (:meth:`holds`).
    """

    def __init__(self, model: str, analysis: CanaryAnalysis, policy: RolloutPolicy,
                 severity: Severity = "critical", announced_ttl_s: float = ANNOUNCED_TTL_S) -> None:
        if announced_ttl_s <= 0:
            raise ValueError("announced_ttl_s must be > 0")
        self.model = model
        self.analysis = analysis
        self.policy = policy
        self.severity = severity
        self.announced_ttl_s = announced_ttl_s
        self.active: Rollout | None = None
        self.done: dict[str, float] = {}  # finished canary version -> when (DONE_KEPT latest)
        # canary version -> number of its latest rollout (NUMBERS_KEPT latest versions)
        self.numbers: dict[str, int] = {}

    def holds(self, now: float) -> bool:
        """Whether the model's state must be kept, however quiet its traffic: a rollout
        announced on ``ml.deployments`` is in flight and its latest announcement is at
        most ``announced_ttl_s`` old at the wall-clock time ``now``.

        A model's owner drops the state of a model with no traffic; without this, a
        rollout announced before its traffic would be forgotten, and then learned
        again from the traffic at a guessed step, without its environment.
        """
        r = self.active
        return (r is not None and not r.finished and r.announced_at is not None
                and now - r.announced_at <= self.announced_ttl_s)

    # -- what the controller and people say ----------------------------------

    def on_deployment(self, rec: dict[str, Any], now: float) -> TrackerOutput:
        """An ``ml.deployments`` record (validated by :func:`streams.core.parse.parse_control`)."""
        out = TrackerOutput()
        phase, canary = rec["phase"], rec.get("canary_version")
        percent = rec.get("traffic_percent")
        step = None if percent is None else int(round(percent))
        number = rollout_number(rec)
        r = self.active
        if canary is None or phase in _ENDED:
            ended = canary or (r.canary if r is not None else None)
            older = number is not None and r is not None and number < r.rollout
            if r is not None and (canary is None or r.canary == canary) and not older:
                r.apply_deployment(phase if phase in _ENDED else "aborted", step, now)
                self._finish(r, now)
            if ended is not None and phase in ("rolled_back", "aborted"):
                out.signals.append(self._cleared(ended, f"canary {ended} {phase.replace('_', ' ')}"
                                                 f" (ml.deployments)", now))
            return out
        if r is None or r.canary != canary or self._again(r, phase, number):
            newer = number is not None and number > self.numbers.get(canary, 0)
            if canary in self.done and phase != "started" and not newer:
                return out  # a late step of a rollout already over
            if r is not None and not r.finished:
                self._finish(r, now)
            r = self.active = self._start(rec["stable_version"], canary,
                                          step if step is not None else self.policy.ladder[0],
                                          "deployments", number)
            self.done.pop(canary, None)
        elif number is not None and number != r.rollout:
            r.rollout = number  # the controller's numbering of this rollout wins
            self._number(canary, number)
        r.learned_from = "deployments"
        r.stable = rec["stable_version"]
        r.environment = rec.get("environment") or r.environment
        ts = rec.get("ts")
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            r.announced_at = max(float(ts), r.announced_at or float(ts))
        r.apply_deployment(phase, step, now)
        return out

    @staticmethod
    def _again(r: Rollout, phase: str, number: int | None) -> bool:
        """Whether a record about the canary of ``r`` starts another rollout of it:
        a ``started`` after the controller announced the end of ``r``, or a new
        rollout number once ``r`` is over. (A ``started`` repeated while ``r`` runs,
        or after the tracker's own rollback, is the controller saying where it
        stands: the same rollout.)"""
        if number is not None and number != r.rollout:
            return r.finished
        return phase == "started" and r.closed

    def _start(self, stable: str, canary: str, step: int, learned_from: str,
               number: int | None = None) -> Rollout:
        """A new rollout of ``canary``: numbered as announced, or one after its last."""
        n = number if number is not None else self.numbers.get(canary, 0) + 1
        self._number(canary, n)
        return Rollout(self.model, stable, canary, step, self.policy, learned_from=learned_from,
                       rollout=n)

    def _number(self, canary: str, n: int) -> None:
        self.numbers.pop(canary, None)  # the latest last
        self.numbers[canary] = n
        while len(self.numbers) > NUMBERS_KEPT:
            del self.numbers[next(iter(self.numbers))]

    def on_approval(self, rec: dict[str, Any], now: float) -> TrackerOutput:
        """An ``ml.deploy.approvals`` record."""
        out = TrackerOutput()
        r = self.active
        if r is None:
            return out
        out.add(r.approve(rec["version"], rec["action"], now, rec.get("approved_by", "someone")),
                r, self.severity, now)
        if r.finished:
            self._finish(r, now)
        return out

    # -- what the traffic says ------------------------------------------------

    def watching(self) -> tuple[str, str] | None:
        """(stable, canary) versions whose predictions should be histogrammed."""
        r = self.active
        return None if r is None or r.finished else (r.stable, r.canary)

    def on_windows(self, closed: list[WindowStats], firing: Mapping[str, tuple[str, ...]],
                   histograms: PredictionHistograms) -> TrackerOutput:
        """Judge the canary in every closed window that has canary traffic.

        ``firing``: the keys of the alerts firing on each canary version of
        ``closed``; ``histograms``: the cohorts' prediction histograms, whose
        closed windows are taken out.
        """
        out = TrackerOutput()
        by_start: dict[float, list[WindowStats]] = {}
        for w in closed:
            by_start.setdefault(w.start, []).append(w)
        for start in sorted(by_start):
            ws = by_start[start]
            preds = histograms.pop(start)
            canaries = [w for w in ws if w.cohort == "canary"]
            if not canaries:
                continue
            r = self._rollout_for(canaries, ws)
            if r is None or r.finished:
                continue
            canary = next((w for w in canaries if w.version == r.canary), None)
            if canary is None:
                continue
            stable = next((w for w in ws if w.cohort == "stable" and w.version == r.stable),
                          None) or _empty(canary, r.stable)
            verdict = self.analysis.judge(stable, canary, tuple(firing.get(r.canary, ())), preds)
            out.verdicts.append((r.canary, verdict))
            out.add(r.observe(verdict, canary.end), r, self.severity, canary.end)
            if r.finished:
                self._finish(r, canary.end)
        if by_start:
            histograms.drop_before(min(by_start))
        return out

    def _rollout_for(self, canaries: list[WindowStats], ws: list[WindowStats]) -> Rollout | None:
        """The rollout these windows belong to; one is started when traffic shows a new
        canary (no controller announced it) and the current one has no traffic."""
        r = self.active
        versions = {w.version for w in canaries}
        if r is not None and (r.canary in versions or r.learned_from == "deployments"):
            return r
        fresh = [w for w in canaries if w.version not in self.done]
        stables = [w for w in ws if w.cohort == "stable"]
        if not fresh or not stables:
            return r
        c = max(fresh, key=lambda w: w.count)
        s = max(stables, key=lambda w: w.count)
        if r is not None:
            self._finish(r, c.end)
        share = 100.0 * c.count / max(1, c.count + s.count)
        self.active = self._start(s.version, c.version, self.policy.nearest_step(share),
                                  "traffic")
        return self.active

    def _finish(self, r: Rollout, now: float) -> None:
        r.finished = True
        self.done[r.canary] = now
        _cut_done(self.done)

    def _cleared(self, canary: str, reason: str, now: float) -> Signal:
        return cleared_signal(self.model, canary, reason, self.severity, now)

    # -- checkpoint -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"active": None if self.active is None else self.active.to_dict(),
                "done": dict(self.done), "numbers": dict(self.numbers)}

    def load_dict(self, data: dict[str, Any]) -> None:
        """Restore :meth:`to_dict`'s output (or an older checkpoint, without rollout
        numbers), cut to the bounds of the state."""
        a = data.get("active")
        self.active = None if a is None else Rollout.from_dict(self.model, a, self.policy)
        self.done = {str(k): float(v) for k, v in (data.get("done") or {}).items()}
        _cut_done(self.done)
        numbers = [(str(k), int(v)) for k, v in (data.get("numbers") or {}).items()]
        self.numbers = dict(numbers[-NUMBERS_KEPT:])
        if self.active is not None and self.active.canary not in self.numbers:
            self._number(self.active.canary, self.active.rollout)


def _cut_done(done: dict[str, float]) -> None:
    """Keep the ``DONE_KEPT`` latest finished versions."""
    if len(done) > DONE_KEPT:
        kept = sorted(done.items(), key=lambda kv: kv[1])[-DONE_KEPT:]
        done.clear()
        done.update(kept)


def _empty(like: WindowStats, version: str) -> WindowStats:
    nan = float("nan")
    return WindowStats(like.model, version, "stable", like.start, like.end, 0, 0, 0,
                       nan, nan, nan, nan)
