"""Property: every input element is folded exactly once or dead-lettered exactly once.

Hypothesis draws streams of messages for two models on two partitions: single
events and batches, valid events, late ones, events that break the contract
in each way a producer can (each with its own reason), messages that are not
JSON at all, messages keyed by something else than their model, an event
that meets a bug deep in the fold (the ``poisoned`` fault), and replays of
earlier messages (a restart before the consumer offset was committed), cut
into micro-batches at random. Whatever the draw:

- each element (or each undecodable message) is dead-lettered at most once,
  with the reason its fault calls for, and each valid element is counted in
  ``ml.stats`` or dead-lettered as late, exactly once, replays included;
- the other model's windows and alerts are exactly those it gets alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.config import Settings
from streams.core.monitor import ModelMonitor
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.state import Checkpointer, read

T0 = 1_795_000_000.0
NOW = T0 + 1000
SETTINGS = Settings(windows={"size_s": 10, "allowed_lateness_s": 0},  # type: ignore[arg-type]
                    latency={"p99_threshold_ms": 100, "min_events": 3},  # type: ignore[arg-type]
                    alerts={"keep_firing_for_s": 0})  # type: ignore[arg-type]
PARTITION = {"a": 0, "b": 1}

# A fault of one element, and the reason code it must get.
ELEMENT_FAULTS = {
    "missing_ts": "missing_field", "bad_latency": "bad_type", "negative": "negative_latency",
    "nan": "not_finite", "nested_feature": "bad_type", "future": "bad_timestamp",
    "millis": "bad_timestamp", "status": "bad_value", "not_object": "not_object",
    "poison": "internal_error",
}
# A fault of the whole message (one dead letter for it), or of its key (one per element).
MESSAGE_FAULTS = {"not_json": "not_json", "surrogate": "bad_value", "huge": "not_finite",
                  "deep": "bad_value", "bom": "not_json", "wrong_key": "bad_key"}


@dataclass(frozen=True)
class Spec:
    model: str
    batch: bool
    elements: tuple[str, ...]   # "valid", "late" or an ELEMENT_FAULTS key
    fault: str | None           # a MESSAGE_FAULTS key


@dataclass(frozen=True)
class Replay:
    index: int                  # of an earlier message


specs = st.builds(
    Spec, model=st.sampled_from(["a", "b"]), batch=st.booleans(),
    elements=st.lists(st.sampled_from(["valid"] * 8 + ["late"] + list(ELEMENT_FAULTS)),
                      min_size=1, max_size=6).map(tuple),
    fault=st.sampled_from([None] * 12 + list(MESSAGE_FAULTS)))
streams = st.lists(st.one_of(specs, specs, specs, st.integers(0, 30).map(Replay)),
                   min_size=1, max_size=30)


@dataclass
class Sent:
    message: InMessage
    model: str
    units: dict[tuple[int, int, int | None], str]  # (partition, offset, index) -> expected


class Producer:
    """Turns specs into messages, and knows what each must give."""

    def __init__(self) -> None:
        self.offsets = {"a": 0, "b": 0}
        self.clock = {"a": T0, "b": T0}

    def element(self, model: str, kind: str, eid: str) -> str:
        self.clock[model] += 1.0
        ev: dict[str, Any] = {"event_id": eid, "ts": self.clock[model], "model": model,
                              "version": "v1", "latency_ms": 20.0 + self.clock[model] % 7 * 30,
                              "features": {"x": 1.5, "c": "u"}, "prediction": 0.4}
        if kind == "late":
            ev["ts"] = T0 - 500
        elif kind == "missing_ts":
            del ev["ts"]
        elif kind == "bad_latency":
            ev["latency_ms"] = "fast"
        elif kind == "negative":
            ev["latency_ms"] = -1
        elif kind == "nested_feature":
            ev["features"] = {"x": {"y": 1}}
        elif kind == "future":
            ev["ts"] = NOW + 366 * 86_400
        elif kind == "millis":
            ev["ts"] = self.clock[model] * 1000
        elif kind == "status":
            ev["status"] = "maybe"
        elif kind == "poison":
            ev["latency_ms"] = 666.0
        elif kind == "not_object":
            return "42"
        text = orjson.dumps(ev).decode()
        return text.replace('"latency_ms":' + orjson.dumps(ev["latency_ms"]).decode(),
                            '"latency_ms":NaN') if kind == "nan" else text

    def send(self, spec: Spec) -> Sent:
        model, p = spec.model, PARTITION[spec.model]
        offset = self.offsets[model]
        self.offsets[model] += 1
        kinds = spec.elements if spec.batch else spec.elements[:1]
        texts = [self.element(model, k, f"{model}-{offset}-{i}") for i, k in enumerate(kinds)]
        body = ("[" + ",".join(texts) + "]" if spec.batch else texts[0]).encode()
        key = model.encode()
        fault = spec.fault
        original = body
        if fault == "not_json":
            body = body + b"}x"
        elif fault == "surrogate":
            body = body.replace(b'"v1"', b'"\\ud800"', 1)
        elif fault == "huge":
            body = body.replace(b'{"event_id"', b'{"big":1' + b"0" * 400 + b',"event_id"', 1)
        elif fault == "deep":
            body = body.replace(b'{"event_id"', b'{"deep":' + b"[" * 1100 + b"]" * 1100
                                + b',"event_id"', 1)
        elif fault == "bom":
            body = b"\xef\xbb\xbf" + body
        elif fault == "wrong_key":
            key = b"request-" + str(offset).encode()
        units: dict[tuple[int, int, int | None], str] = {}
        if fault is not None and fault != "wrong_key" and body != original:
            units[(p, offset, None)] = MESSAGE_FAULTS[fault]
        else:  # (a fault with nothing to act on, e.g. no event to inject into, is none)
            for i, kind in enumerate(kinds):
                where = (p, offset, i if spec.batch else None)
                # (NaN is not JSON: said before anything else about the element)
                units[where] = ("bad_key" if fault == "wrong_key"
                                and kind not in ("not_object", "nan")
                                else ELEMENT_FAULTS.get(kind, kind))
        return Sent(InMessage(body, p, offset, None, key), model, units)


class Worker:
    """A pipeline and its changelog, fed micro-batches as the agent does."""

    def __init__(self) -> None:
        self.pipeline = PredictionProcessor(SETTINGS, "ml.predictions")
        self.data: dict[str, Any] = {}
        self.writer = Checkpointer()
        self.box = Outbox()

    def saved(self, key: str) -> dict[str, Any] | None:
        return read(self.data, key)

    def feed(self, messages: list[InMessage], now: float) -> None:
        out = self.pipeline.process_safely(messages, now, self.saved)
        for partition, key, value in out.checkpoints:
            for w in self.writer.writes(partition, key, value, self.data):
                if w.value is None:
                    self.data.pop(w.key, None)
                else:
                    self.data[w.key] = orjson.loads(w.value)
        self.box.merge(out)

    def finish(self) -> None:
        flushed = self.pipeline.tick(NOW + SETTINGS.worker.idle_close_s + 1, [])
        self.box.merge(flushed)

    def outputs_of(self, model: str) -> tuple[list[Any], list[Any]]:
        return ([r for m, r in self.box.stats if m == model],
                [(k, a["event_action"], a["payload"]["timestamp"]) for k, a in self.box.alerts
                 if a["payload"]["component"] == model])


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met only on a latency of exactly 666 ms, after the state was touched."""
    real = ModelMonitor.ingest

    def ingest(self: ModelMonitor, frame: pl.DataFrame, *args: Any, **kw: Any) -> Any:
        out = real(self, frame, *args, **kw)
        if (frame["latency_ms"] == 666.0).any():
            raise RuntimeError("poison")
        return out

    monkeypatch.setattr(ModelMonitor, "ingest", ingest)


@pytest.mark.usefixtures("poisoned")
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=streams, cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_every_element_is_folded_once_or_dead_lettered_once(ops: list[Spec | Replay],
                                                            cuts: list[int]) -> None:
    producer = Producer()
    sent: list[Sent] = []
    stream: list[Sent] = []  # with replays
    for op in ops:
        if isinstance(op, Replay):
            if op.index < len(sent):
                stream.append(sent[op.index])
        else:
            sent.append(producer.send(op))
            stream.append(sent[-1])
    both, alone = Worker(), Worker()
    i = k = 0
    while i < len(stream):
        part = stream[i:i + cuts[k % len(cuts)]]
        now = NOW + i * 0.01
        both.feed([s.message for s in part], now)
        alone.feed([s.message for s in part if s.model == "b"], now)
        i += len(part)
        k += 1
    both.finish()
    alone.finish()

    units = {where: want for s in sent for where, want in s.units.items()}
    dead = Counter((d["partition"], d["offset"], d.get("index")) for d in both.box.deadletters)
    assert max(dead.values(), default=1) == 1, "an input was dead-lettered twice"
    assert set(dead) <= set(units)
    for d in both.box.deadletters:
        where = (d["partition"], d["offset"], d.get("index"))
        code, want = d["reason"].split(":", 1)[0], units[where]
        assert code == want or (want in ("valid", "late") and code == "late"), (where, d)
    for where, want in units.items():
        if want not in ("valid", "late"):
            assert where in dead, f"{want} at {where} was not dead-lettered"
        elif want == "valid":
            assert where not in dead, f"a valid event at {where} was dead-lettered"
    for model in ("a", "b"):
        mine = [w for s in sent if s.model == model for w in s.units]
        folded = sum(1 for w in mine if units[w] in ("valid", "late") and w not in dead)
        counted = sum(r["count"] for m, r in both.box.stats if m == model)
        assert counted == folded, f"{model}: {counted} counted, {folded} folded"
    assert both.outputs_of("b") == alone.outputs_of("b")
