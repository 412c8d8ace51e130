"""Faust agents: move bytes between Kafka and the processors of :mod:`streams.core`.

Per micro-batch (``worker.batch_max`` messages or ``worker.batch_within_s``),
in slices of about ``worker.slice_bytes`` of input (yielding to timers, the
web page and rebalances between slices): parse and process everything at
once, publish dead letters, window statistics and alerts, then write the state
changed into the changelog-backed state table, on the partition the model's
events came from (:mod:`streams.core.state`: size-checked, split when large,
only when changed). A timer runs the wall-clock checks (outage, idle windows,
expiry). The pieces doing the work are in :mod:`streams.runtime.shell`; this
module only wires them to Faust.

Nothing here lets one input, one model or one record stop the worker: every
output is encoded and size-checked before it is sent, timers and followers
catch and count their errors, and no prediction is judged, nor any alert
released, before the reference profiles and the silences have been read to
their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import faust
import orjson
from aiohttp import ClientTimeout
from aiohttp.web import StreamResponse
from faust.types import TP, EventT
from prometheus_client import CollectorRegistry, generate_latest

from alerting import flagger
from alerting.manager import Silence
from detectors.contract import rfc3339
from detectors.performance import id_hash_loop
from detectors.profile import category_bins_loop
from detectors.sequential import loop as sequential_loop
from streams.core.operations import OperationsProcessor, OpsOutbox, PoolState
from streams.core.parse import batch_reader
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import ReferenceStore
from streams.runtime.app import Sentinelle
from streams.runtime.canary_page import CanaryViews, RolloutCollector, local_streaks
from streams.runtime.dashboard import PAGE, History, snapshot
from streams.runtime.faust_sensor import FaustSensor
from streams.runtime.follow import follow_topic
from streams.runtime.kafka import client_options
from streams.runtime.metrics import StateCollector, make_metrics
from streams.runtime.shell import (
    BrokerFetch,
    Gap,
    GapFiller,
    Health,
    Lag,
    Publisher,
    ReferenceLoader,
    SilenceLoader,
    StateWriter,
    Topics,
    export_counts,
    owned_records,
    splice,
)
from streams.runtime.tuning import tune_gc

__all__ = ["register", "Wiring", "slices", "messages_of"]

log = logging.getLogger("sentinelle.worker")

DASHBOARD_EVERY_S = 1.0  # the live dashboard's updates (/api/events), at most this often


def slices(events: Sequence[EventT], max_bytes: int) -> Iterator[Sequence[EventT]]:
    """Consecutive runs of ``events`` of about ``max_bytes`` of input each."""
    start, size = 0, 0
    for i, e in enumerate(events):
        size += len(e.message.value or b"")
        if size >= max_bytes:
            yield events[start:i + 1]
            start, size = i + 1, 0
    if start < len(events):
        yield events[start:]


def messages_of(events: Sequence[EventT]) -> list[InMessage]:
    """What the processors take of Faust's events."""
    return [InMessage(e.message.value, e.message.partition, e.message.offset, e.message.topic,
                      e.message.key) for e in events]


@dataclass(frozen=True)
class Wiring:
    """What :func:`register` attached, for tests and tools to reach."""

    predictions: PredictionProcessor
    operations: OperationsProcessor
    publisher: Publisher
    references_loaded: asyncio.Event
    silences_loaded: asyncio.Event
    agents: dict[str, Any]
    ticks: dict[str, Callable[..., Awaitable[None]]]  # the timers' checks; now= for tests
    turns: dict[str, asyncio.Lock]  # one slice or tick at a time per processor
    gaps: GapFiller  # input offsets Faust skipped, fetched again
    lag: Lag  # what the agents were handed, per input partition


def register(s: Sentinelle, registry: CollectorRegistry | None = None) -> Wiring:
    """Attach Sentinelle's agents, timers, followers and web pages to ``s.app``."""
    app, settings = s.app, s.settings
    lim, t = settings.limits, settings.topics
    registry = registry or CollectorRegistry()
    metrics = make_metrics(registry, inputs=[t.predictions, t.feedback, t.pipeline, t.metrics])
    if settings.worker.faust_metrics:
        # Faust's own sensor (its setup function would add a second /metrics page):
        # what happens under the agents, named faust_*, nothing per message but
        # Faust's plain bookkeeping (see streams.runtime.faust_sensor)
        app.monitor = FaustSensor.create(registry)
    references = ReferenceStore(settings.skew, settings.drift.baseline_factor,
                                lim.max_profile_features, lim.max_profile_bins)
    references_loaded, silences_loaded = asyncio.Event(), asyncio.Event()
    silences: dict[str, Silence] = {}  # shared by every model's alert manager
    topic_name = s.predictions.get_topic_name()
    pipeline = PredictionProcessor(settings, topic_name, references, silences=silences)
    ops = OperationsProcessor(settings, s.pool_usage.get_topic_name(), references, silences)
    registry.register(StateCollector(
        lambda: pipeline.monitors, lambda: [st.book for st in ops.states.values()],
        pools=lambda: [fc for st in ops.states.values() if isinstance(st, PoolState)
                       for fc in st.forecasts.values()]))
    chunk = int(lim.max_record_bytes * 0.6)  # base64 makes a chunk 4/3 larger
    models = StateWriter(s.state, "model-state", metrics, chunk)
    operations = StateWriter(s.ops_state, "ops-state", metrics, chunk)
    health = Health(lambda: (references_loaded.is_set(), silences_loaded.is_set()))
    publisher = Publisher(Topics(s.deadletter, s.stats, s.alerts, s.commands, s.pool_usage),
                          models, operations, metrics, lim.max_record_bytes,
                          settings.worker.delivery_timeout_s, health.trouble)
    load_reference = ReferenceLoader(references, publisher, t.references, metrics)
    load_silence = SilenceLoader(silences, publisher, t.silences, lim.max_silences, metrics)
    lag = Lag(settings)
    refetch = BrokerFetch(settings.kafka.servers, client_options(settings),
                          "read_committed" if app.in_transaction else "read_uncommitted")
    gaps = GapFiller(refetch)  # what Faust skipped, read again (see GapFiller)
    exported: tuple[dict[str, int], dict[str, int]] = ({}, {})  # what was already counted

    triggers: dict[str, dict[str, Any]] = {}  # firing keys' trigger events (the dashboard)
    history = History()  # recent windows per series, for the dashboard (memory only)

    async def publish(box: Outbox | OpsOutbox) -> None:
        await publisher.publish(box)
        if isinstance(box, Outbox):  # the dashboard's charts over time
            try:
                for _, window in box.stats:
                    history.add(window)
                history.forget(box.retired)
            except Exception:  # the page must never cost the worker anything
                log.exception("the dashboard's history skipped a micro-batch's windows")
        for key, alert in box.alerts:  # what fires, with the evidence it fired on
            if alert.get("event_action") == "trigger":
                if key in triggers or len(triggers) < settings.alerts.max_alerts:
                    triggers[key] = alert
            else:
                triggers.pop(key, None)
        export_counts(metrics.guards, pipeline.counts, exported[0])
        export_counts(metrics.guards, ops.counts, exported[1])

    async def ready() -> None:
        """Never judge serving data before its profile, nor alert before the silences."""
        await references_loaded.wait()
        await silences_loaded.wait()

    def loaded() -> bool:
        """The timers wait too: a restored alert held by a silence must stay held."""
        return references_loaded.is_set() and silences_loaded.is_set()

    # A slice is processed and its outputs and state handed to the producer as one
    # unit, even when the worker is told to stop half-way: Faust stops the consumer
    # (committing what was acknowledged: earlier micro-batches only), then flushes
    # the producer, then cancels the agents. ``finish_slices`` makes the flush wait
    # for the slice in flight, and no slice starts after it; the rest of the
    # micro-batch is read again by the next owner, and skipped where it was folded.
    stopping = asyncio.Event()
    in_flight: set[asyncio.Future[None]] = set()

    async def as_a_unit(work: Any) -> None:
        task = asyncio.ensure_future(work)
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        await asyncio.shield(task)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def finish_slices(sender: Any, **kwargs: Any) -> None:
        stopping.set()
        if in_flight:
            log.info("stopping: finishing the micro-batch slice in flight")
            await asyncio.gather(*in_flight, return_exceptions=True)
        with contextlib.suppress(Exception):
            await refetch.stop()

    async def handle(part: Sequence[EventT], kind: str) -> None:
        """A slice, guarded: folding is isolated per key and per message (a bad input is
        dead-lettered), so what could still raise here is the bookkeeping around it
        (counting, the dashboard's triggers, publishing); a worker that raised out of
        its agent would stop, and restart into the same slice. Logged and counted
        (``slice_errors``), and the next slice goes on."""
        try:
            await fold_and_publish(part, kind)
        except Exception:
            log.exception("a slice of %d messages failed outside the folding; its outputs "
                          "may be lost, the worker goes on", len(part))
            metrics.guards.labels("slice_errors").inc()

    started_folding: set[str] = set()
    # One turn at a time per processor: a slice and a wall-clock tick each take a
    # snapshot of the state they changed, then wait for their outputs' acks before
    # writing it. Interleaved, a tick's older snapshot of a model could land on the
    # changelog after a slice's newer one (and after the input mark that says the
    # slice was read): a takeover would restore the old state and skip the slice.
    turns = {"predictions": asyncio.Lock(), "operations": asyncio.Lock()}

    async def fold_and_publish(part: Sequence[EventT], kind: str) -> None:
        agent = "predictions" if kind == "inputs" else "operations"
        async with turns[agent]:
            await fold_and_publish_now(part, agent)

    # the last offset of an input partition the state has folded (see Lag.seen)
    folded: dict[str, Callable[[TP], int]] = {
        "predictions": lambda tp: pipeline.marks.last(tp.topic, tp.partition, models.saved),
        "operations": lambda tp: ops.marks.last(tp.topic, tp.partition, operations.saved)}

    async def fold_and_publish_now(part: Sequence[EventT], agent: str) -> None:
        if agent not in started_folding:  # once: when the worker starts to read its inputs
            started_folding.add(agent)
            log.info("%s: the first slice arrived (%d messages); sequential tests: %s; "
                     "event-id hashes: %s; category bins: %s; batches read by: %s", agent,
                     len(part), sequential_loop(), id_hash_loop(), category_bins_loop(),
                     batch_reader())
        seen = lag.seen(part, folded[agent])
        if seen.lost:
            metrics.guards.labels("input_reordered").inc(seen.lost)
        messages = messages_of(part)
        if seen.gaps:
            messages = splice(messages, await refill(seen.gaps))
        await fold_messages(messages, agent)

    async def refill(found: Sequence[Gap]) -> dict[int, list[InMessage]]:
        """The messages of gaps Faust left, read again (see GapFiller), counted."""
        refetched, unfilled = gaps.refetched, gaps.unfilled
        extra = await gaps.fill(found)
        for more in extra.values():
            lag.filled(more)
        metrics.guards.labels("input_refetched").inc(gaps.refetched - refetched)
        metrics.guards.labels("input_gap_unfilled").inc(gaps.unfilled - unfilled)
        return extra

    async def fold_messages(messages: list[InMessage], agent: str) -> None:
        started = time.perf_counter()
        if agent == "predictions":
            box: Outbox | OpsOutbox = pipeline.process_safely(messages, time.time(),
                                                              models.saved)
            metrics.events.labels(topic_name).inc(box.events)
        else:
            box = ops.process_safely(messages, time.time(), operations.saved)
            for topic, n in box.events_by_topic.items():
                metrics.events.labels(topic).inc(n)
        processed = time.perf_counter()
        # counted once folded, with the time: a reader that sees every message counted
        # sees the time the last of them was folded
        for name, count in Counter(m.topic for m in messages).items():
            metrics.messages.labels(name).inc(count)
        metrics.batch_seconds.labels(agent).observe(processed - started)
        metrics.last_fold.labels(agent).set(time.time())
        await publish(box)
        metrics.publish_seconds.labels(agent).observe(time.perf_counter() - processed)

    async def consume(stream: faust.StreamT, kind: str) -> None:
        # take_events (faust-streaming) is missing from the StreamT interface.
        batches = stream.take_events  # type: ignore[attr-defined]
        # Faust's timer starts once the previous micro-batch is handled, so an event
        # that arrived during that work has waited already: asked for half of
        # batch_within_s, no event waits much longer than batch_within_s in all
        # (measured: alerts p99 1.05-1.2 s after their window closed with the whole
        # of it, at 0.5 s)
        async for events in batches(settings.worker.batch_max,
                                    within=settings.worker.batch_within_s / 2):
            await ready()  # profiles (skew, validation) and silences first
            tune_gc()
            for part in slices(events, settings.worker.slice_bytes):
                if stopping.is_set():
                    return
                await as_a_unit(handle(part, kind))
                await asyncio.sleep(0)  # let timers, the web page and rebalances in

    @app.agent(s.inputs, name="sentinelle.watch_predictions")
    async def watch_predictions(stream: faust.StreamT) -> None:
        await consume(stream, "inputs")

    @app.agent(s.operations, name="sentinelle.watch_operations")
    async def watch_operations(stream: faust.StreamT) -> None:
        await consume(stream, "operations")

    @app.task
    async def follow_references() -> None:
        """Every profile, before any prediction is judged (see streams/runtime/follow.py)."""
        await follow_topic(settings.kafka.servers, t.references, load_reference,
                           references_loaded, consumer_options=client_options(settings))

    @app.task
    async def follow_silences() -> None:
        """Every silence, shared by the alert managers of all the models."""
        await follow_topic(settings.kafka.servers, t.silences, load_silence, silences_loaded,
                           consumer_options=client_options(settings))

    def owned(table: Any, topics: set[str]) -> list[tuple[str, Any]]:
        """The table's records of the partitions this worker actively owns (see
        :func:`streams.runtime.shell.owned_records`)."""
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in topics}
        return owned_records(table.data, actives)

    def ticker(name: str, processor: PredictionProcessor | OperationsProcessor, table: Any,
               topics: set[str], writer: StateWriter, inputs: set[str]
               ) -> Callable[..., Awaitable[None]]:
        """A processor's wall-clock checks, in its turn (``topics``: where its models'
        state lives; ``inputs``: every topic its agent reads)."""
        async def tick(now: float | None = None) -> None:
            async with turns[name]:
                # a partition's last messages Faust fetched and never handed over
                tails = await lag.tails(app.consumer, inputs, time.monotonic())
                if tails:
                    extra = await refill(tails)
                    if extra:
                        await fold_messages([m for ms in extra.values() for m in ms], name)
                now = time.time() if now is None else now
                behind = await lag.behind(app.consumer, topics, now)
                await publish(processor.tick(now, owned(table, topics), writer.saved, behind))
        return tick

    ops_tick = ticker("operations", ops, s.ops_state, set(s.operations.topics), operations,
                      set(s.operations.topics))
    predictions_tick = ticker("predictions", pipeline, s.state, {topic_name}, models,
                              set(s.inputs.topics))

    @app.timer(settings.worker.tick_s, name="sentinelle.ops_wall_clock_checks")
    async def ops_wall_clock_checks() -> None:
        if not loaded():
            return
        try:
            await ops_tick()
        except Exception:
            log.exception("the operations' wall-clock checks failed; trying again next tick")
            metrics.guards.labels("tick_errors").inc()

    @app.timer(settings.worker.tick_s, name="sentinelle.wall_clock_checks")
    async def wall_clock_checks() -> None:
        if not loaded():
            return
        try:
            await predictions_tick()
            metrics.set_lag(await lag.lags(app.consumer, set(s.inputs.topics)
                                           | set(s.operations.topics)))
        except Exception:
            log.exception("the wall-clock checks failed; trying again next tick")
            metrics.guards.labels("tick_errors").inc()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # The memory store keeps revoked partitions' keys; drop them, or this
        # worker would keep checking models another worker now owns.
        ours = {topic_name, *s.operations.topics}
        lag.forget(revoked)
        gaps.forget(revoked)
        parts = {tp.partition for tp in revoked if tp.topic in ours}
        metrics.forget_models(pipeline.revoke(parts))
        ops.revoke(parts)
        for table, writer in ((s.state, models), (s.ops_state, operations)):
            gone = [key for key, value in list(table.data.items())
                    if isinstance(value, dict) and value.get("partition") in parts]
            for key in gone:
                table.data.pop(key, None)
            writer.forget(gone)

    canaries = CanaryViews({t.commands: "commands", t.deployments: "deployments",
                            t.alerts: "alerts", t.approvals: "approvals"})
    registry.register(RolloutCollector(canaries))

    @app.task
    async def follow_canaries() -> None:
        """Commands, deployments, alerts and approvals, whole: any worker answers
        /v1/canary/... and Flagger's webhooks."""
        await asyncio.gather(*(
            follow_topic(settings.kafka.servers, topic, canaries.follower(topic),
                         asyncio.Event(), consumer_options=client_options(settings))
            for topic in canaries.kinds))

    async def owner_streaks(model: str, version: str) -> tuple[dict[str, Any] | None, str]:
        """The streaks from the worker owning ``model``'s partition (see canary_page.py)."""
        if model in pipeline.monitors:
            return local_streaks(pipeline.monitors, model, version), "this worker"
        try:
            url = app.router.external_topic_key_store(s.predictions, model.encode())
            if str(url).rstrip("/") == str(app.conf.canonical_url).rstrip("/"):
                return None, "this worker"  # ours, with no traffic since it was taken
            target = f"{str(url).rstrip('/')}/v1/canary/{quote(model, safe='')}/" \
                     f"{quote(version, safe='')}?local=1"
            async with app.http_client.get(target, timeout=ClientTimeout(total=2)) as resp:
                answer = await resp.json()
            return answer.get("streaks"), str(url)
        except Exception as exc:  # no assignment yet, owner unreachable: say so, answer
            log.info("canary streaks of %s from its owner: %s", model, exc)
            return None, "unavailable"

    @app.page("/v1/canary/{model}/{version}")
    async def canary_verdict(web: Any, request: Any, model: str, version: str) -> Any:
        if request.query.get("local"):
            streaks = local_streaks(pipeline.monitors, model, version)
            body, status = canaries.answer(model, version, streaks, "this worker")
        else:
            body, status = canaries.answer(model, version, *await owner_streaks(model, version))
        return web.json(body, status=status)

    @app.page("/v1/flagger/{hook}")
    class FlaggerWebhook(faust.web.View):
        """Flagger's webhooks (alerting/flagger.py), answered from the canary view."""

        async def post(self, request: Any, hook: str) -> Any:
            name = next((h for h in flagger.HOOKS if h == hook), None)
            if name is None:
                return self.json({"error": f"no such hook {hook!r}",
                                  "hooks": list(flagger.HOOKS)}, status=404)
            try:
                payload = await request.json()
            except ValueError:
                payload = None
            found = flagger.target(payload, settings.canary.flagger_models, canaries.verdicts)
            if found is None:
                return self.json({"error": "no model: set metadata.model, or map the Canary's "
                                           "namespace/name in canary.flagger_models"}, status=400)
            model, version = found
            view = canaries.verdicts.get(model, version) if version else None
            status, why = flagger.answer(name, view)
            return self.json({"hook": hook, "model": model, "version": version,
                              "verdict": view.verdict if view else "pending", "why": why},
                             status=status)

    @app.page("/v1/approvals/{model}")
    class ApprovalPage(faust.web.View):
        """A person's approval by HTTP (``canary.approval_token_env``): checked like
        ``sentinelle rollout approve`` (the approvers' allow-list), then published to
        ml.deploy.approvals by the worker, where the worker reads it as any approval."""

        async def post(self, request: Any, model: str) -> Any:
            status, body = await approve_by_http(request, model)
            return self.json(body, status=status)

    async def approve_by_http(request: Any, model: str) -> tuple[int, dict[str, Any]]:
        c = settings.canary
        token = os.environ.get(c.approval_token_env or "", "") if c.approval_token_env else ""
        if not token:
            return 404, {"error": "approvals by HTTP are off (canary.approval_token_env)"}
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return 401, {"error": "a bearer token is required"}
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("by"), str) \
                or not payload["by"]:
            return 400, {"error": "the body is {\"by\": NAME, \"version\": V (default: the "
                                  "canary in flight), \"action\": promote|rollback}"}
        by, action = payload["by"], payload.get("action", "promote")
        version = payload.get("version") or canaries.verdicts.canary_of(model)
        if action not in ("promote", "rollback") or not isinstance(version, str):
            return 400, {"error": "action must be promote or rollback, and the version known"}
        if c.approvers and by not in c.approvers:
            return 403, {"error": f"{by!r} is not an allowed approver (canary.approvers)"}
        rec = {"model": model, "version": version, "action": action, "approved_by": by,
               "ts": rfc3339(time.time())}
        await app.producer.send_and_wait(t.approvals, model.encode(), orjson.dumps(rec),
                                         None, None, None)
        log.info("approval by HTTP: %s %s %s by %s", action, model, version, by)
        return 200, {"approved": rec}

    def samples(metric: Any, label: str) -> dict[str, float]:
        """A metric's values summed by one label (the dashboard's small tables)."""
        out: dict[str, float] = {}
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                k = sample.labels.get(label, "")
                out[k] = out.get(k, 0.0) + sample.value
        return out

    def dashboard_bytes() -> bytes:
        lag = samples(metrics.consumer_lag, "topic")
        state = snapshot(pipeline.monitors, canaries.verdicts,
                         samples(metrics.deadletters, "reason"), lag,
                         [st.book for st in ops.states.values()], triggers=triggers,
                         history=history)
        return orjson.dumps(state, default=str,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    @app.page("/api/state")
    async def dashboard_state(web: Any, request: Any) -> Any:
        return web.bytes(dashboard_bytes(), content_type="application/json")

    @app.page("/api/events")
    async def dashboard_events(web: Any, request: Any) -> Any:
        """Server-sent events: the dashboard's state each second it changed (a comment
        line every 15 s otherwise, so proxies keep the stream open); ends when the
        worker stops, and the browser's EventSource reconnects by itself."""
        resp = StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
        await resp.prepare(request)
        last, quiet = b"", 0
        try:
            while not stopping.is_set():
                data = dashboard_bytes()
                if data != last:
                    await resp.write(b"data: " + data + b"\n\n")
                    last, quiet = data, 0
                elif quiet >= 15:
                    await resp.write(b": still here\n\n")
                    quiet = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=DASHBOARD_EVERY_S)
                quiet += 1
        except (ConnectionError, RuntimeError):  # the page was closed
            pass
        return resp

    @app.page("/dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        return web.html(PAGE)

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def alive(web: Any, request: Any) -> Any:
        return web.json({"status": "alive", "since": health.started})

    @app.page("/ready")
    async def ready_page(web: Any, request: Any) -> Any:
        reasons = health.reasons(app)
        return web.json({"ready": not reasons, "waiting_for": reasons},
                        status=200 if not reasons else 503)

    return Wiring(pipeline, ops, publisher, references_loaded, silences_loaded,
                  {"predictions": watch_predictions, "operations": watch_operations},
                  {"predictions": predictions_tick, "operations": ops_tick}, turns, gaps,
                  lag)
