"""Flagger's webhooks, answered from a canary's verdict (:mod:`alerting.verdict`).

Flagger calls each webhook of a ``Canary`` with ``{"name", "namespace", "phase",
"metadata"}``; the worker serves them at ``POST /v1/flagger/{hook}``
(``streams/runtime/agents.py``). The model is ``metadata.model``, else the
``Canary``'s ``"namespace/name"`` looked up in ``canary.flagger_models``; the
version is ``metadata.version``, else the model's canary announced on
``ml.deployments``.

========================  ==================================================  ========
hook                      200 when                                            else
========================  ==================================================  ========
``confirm-rollout``       the version's validation gate has not failed and    403
                          it was not failed already (it may start)
``rollout``               the canary has not failed (each analysis            409
                          iteration: a non-2xx is a failed check)
``confirm-promotion``     someone approved its promotion (``sentinelle        403
                          rollout approve``) or it passed, and it has not
                          failed
``rollback``              it failed: Sentinelle's rollback, or a person's     409
                          (``sentinelle rollout fail``): Flagger rolls back
========================  ==================================================  ========

A payload that names no model gets 400; a version Sentinelle knows nothing of
passes ``confirm-rollout`` and ``rollout`` (nothing against it yet) and waits
at ``confirm-promotion``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from alerting.verdict import CanaryView, Verdicts

__all__ = ["HOOKS", "Hook", "target", "answer"]

Hook = Literal["confirm-rollout", "rollout", "confirm-promotion", "rollback"]
HOOKS: tuple[Hook, ...] = ("confirm-rollout", "rollout", "confirm-promotion", "rollback")


def target(payload: Any, models: Mapping[str, str], verdicts: Verdicts
           ) -> tuple[str, str | None] | None:
    """(model, version or None) a Flagger payload is about; None if it names no model.

    >>> target({"name": "scorer", "namespace": "ml", "metadata": {"version": "v8"}},
    ...        {"ml/scorer": "fraud-scorer"}, Verdicts())
    ('fraud-scorer', 'v8')
    """
    if not isinstance(payload, dict):
        return None
    raw = payload.get("metadata")
    meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
    model = meta.get("model") or models.get(f"{payload.get('namespace')}/{payload.get('name')}")
    if not isinstance(model, str) or not model:
        return None
    version = meta.get("version")
    if not isinstance(version, str) or not version:
        version = verdicts.canary_of(model)
    return model, version


def answer(hook: Hook, view: CanaryView | None) -> tuple[int, str]:
    """(HTTP status, why) of ``hook`` for the version's view (None: nothing known).

    >>> answer("confirm-promotion", None)
    (403, 'waiting for an approval: sentinelle rollout approve MODEL --by NAME')
    """
    failed = view is not None and view.verdict == "fail"
    why = _why(view)
    if hook == "confirm-rollout":
        if view is not None and view.validation == "failed":
            return 403, f"{view.model} {view.version}: its validation gate failed"
        return (403, why) if failed else (200, "may start")
    if hook == "rollout":
        return (409, why) if failed else (200, f"verdict {view.verdict if view else 'pending'}")
    if hook == "confirm-promotion":
        if failed:
            return 403, why
        if view is not None and (view.approved_by or view.verdict == "pass"):
            return 200, (f"approved by {view.approved_by}" if view.approved_by else "passed")
        return 403, "waiting for an approval: sentinelle rollout approve MODEL --by NAME"
    return (200, why) if failed else (409, "no rollback decided")


def _why(view: CanaryView | None) -> str:
    if view is None:
        return "nothing known of this version yet"
    command = view.command or {}
    return (f"{view.model} {view.version}: {view.verdict}"
            + (f" ({command.get('command_id')}: {command.get('reason', '')})" if command else ""))
