"""``GET /v1/canary/{model}/{version}`` from two workers of one group on the real broker,
and the shipped Argo Rollouts AnalysisTemplate's conditions evaluated against the
answers, as Argo evaluates them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from streams.tools.broker import free_port
from streams.tools.controller import run_controller
from streams.tools.simulate import SCENARIOS, run
from tests.conftest import ROOT, WorkerProcess, test_config
from tests.polling import poll
from tests.test_verdict_kafka import CANARY

TEMPLATE = ROOT / "docs" / "integrations" / "argo-analysis-template.yaml"


def argo_condition(expr: str, result: Any) -> bool:
    """An expr-lang condition over ``result``, for the subset the template uses
    (``==``, ``!=``, ``||``, ``&&``, parentheses, string literals)."""
    tokens = re.findall(r'\|\||&&|==|!=|result|"[^"]*"|\(|\)', expr)
    assert "".join(tokens) == re.sub(r"\s+", "", expr), f"unsupported: {expr}"
    python = " ".join({"||": "or", "&&": "and"}.get(t, t) for t in tokens)
    return bool(eval(python, {"__builtins__": {}}, {"result": result}))  # noqa: S307


def argo_measurement(metric: dict[str, Any], result: Any) -> str:
    """A measurement's phase, as Argo Rollouts' ``evaluate.EvaluateResult`` decides it:
    failure first; neither condition true is Inconclusive."""
    success, failure = metric.get("successCondition"), metric.get("failureCondition")
    ok = argo_condition(success, result) if success else False
    bad = argo_condition(failure, result) if failure else False
    if success and not failure:
        bad = not ok
    elif failure and not success:
        ok = not bad
    if bad:
        return "Failed"
    return "Successful" if ok else "Inconclusive"


def json_path(path: str, body: dict[str, Any]) -> Any:
    """The web provider's ``jsonPath`` for a ``{$.field}`` path."""
    m = re.fullmatch(r"\{\$\.([A-Za-z_]+)\}", path)
    assert m, path
    return body[m.group(1)]


def metric() -> dict[str, Any]:
    [m] = yaml.safe_load(TEMPLATE.read_text())["spec"]["metrics"]
    return dict(m)


def test_the_template_counts_pending_and_pass_as_success_fail_as_failure() -> None:
    m = metric()
    assert m["provider"]["web"]["url"].endswith("/v1/canary/{{args.model}}/{{args.version}}")
    phases = {v: argo_measurement(m, json_path(m["provider"]["web"]["jsonPath"],
                                               {"verdict": v}))
              for v in ("pending", "pass", "fail", "inconclusive")}
    assert phases == {"pending": "Successful", "pass": "Successful", "fail": "Failed",
                      "inconclusive": "Inconclusive"}


@pytest.mark.kafka
async def test_any_worker_answers_the_verdict_pending_then_fail_or_pass(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    cfg = test_config(f"t{uuid.uuid4().hex[:10]}", CANARY)
    ports = [free_port(), free_port()]
    workers = []
    for name, port in zip("ab", ports, strict=True):
        c = copy.deepcopy(cfg)
        c["worker"].update(web_port=port, web_host="127.0.0.1")
        workers.append(WorkerProcess(kafka_bootstrap, c, tmp_path, name))
    t = workers[0].topics
    stop = asyncio.Event()
    seen: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for w in workers:
            await asyncio.to_thread(w.start)
        scenario = SCENARIOS["canary"]
        async with aiohttp.ClientSession() as session:
            async def ask(model: str, version: str, port: int) -> dict[str, Any]:
                url = f"http://127.0.0.1:{port}/v1/canary/{model}/{version}"
                async with session.get(url) as resp:
                    assert resp.status == 200
                    body: dict[str, Any] = await resp.json()
                    seen.setdefault((model, port), []).append(body)
                    return body

            for port in ports:  # before any rollout: pending, unknown
                assert (await ask("pricing", "p2", port))["verdict"] == "pending"
            controller = asyncio.create_task(run_controller(
                kafka_bootstrap, t["commands"], t["deployments"], tmp_path / "rollouts.json",
                f"{cfg['worker']['app_id']}-controller", list(scenario.rollouts), stop=stop))
            sim = asyncio.create_task(run(kafka_bootstrap, t["predictions"], scenario,
                                          rate=400, duration_s=300,
                                          deployments_topic=t["deployments"]))
            try:
                async def verdicts() -> list[str]:
                    return [(await ask(m, v, p))["verdict"]
                            for m, v in (("pricing", "p2"), ("ranker", "r6")) for p in ports]

                await poll(verdicts, lambda got: got == ["fail", "fail", "pass", "pass"],
                           what="pricing p2 failed and ranker r6 passed, on both workers",
                           timeout=150, every=0.5)
            finally:
                stop.set()
                sim.cancel()
                for task in (sim, controller):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            # the owner's streaks, also through a worker that does not own the model
            streaks = {(m, p): await ask(m, v, p)
                       for m, v in (("pricing", "p2"), ("ranker", "r6")) for p in ports}
    finally:
        for w in workers:
            await asyncio.to_thread(w.stop)
    for model in ("pricing", "ranker"):
        froms = [streaks[(model, p)]["streaks_from"] for p in ports]
        assert all("last_window" in (streaks[(model, p)]["streaks"] or {}) for p in ports), \
            streaks
        assert "this worker" in froms and any(f.startswith("http://127.0.0.1:") for f in froms), \
            froms  # one owner; the other asked it
    final = {m: seen[(m, ports[0])][-1] for m in ("pricing", "ranker")}
    assert final["pricing"]["command"]["command_id"] == "rollback:pricing:p2:5"
    assert final["pricing"]["evidence"] and final["ranker"]["traffic_percent"] == 100
    m = metric()
    for (model, _), bodies in seen.items():
        verdicts = [b["verdict"] for b in bodies]
        end = "fail" if model == "pricing" else "pass"
        assert verdicts[0] == "pending" and verdicts[-1] == end, verdicts
        assert set(verdicts) <= {"pending", end}, verdicts  # never anything else on the way
        phases = [argo_measurement(m, json_path(m["provider"]["web"]["jsonPath"], b))
                  for b in bodies]
        if model == "pricing":  # Argo keeps measuring while pending, fails on the verdict
            assert phases[-1] == "Failed" and set(phases[:-1]) <= {"Successful", "Failed"}
        else:
            assert set(phases) == {"Successful"}
