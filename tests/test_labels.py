"""Labels: the feedback join, quality against the reference, label drift, estimates."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest

from detectors.performance import LabelJoin, PerformanceCheck
from detectors.profile import build_profile
from streams.config import Settings
from streams.core.predictions import InMessage, Outbox, PredictionProcessor
from streams.core.references import ReferenceStore

T0 = 1_795_000_000.0  # event times, and the tests' wall clock, start here
SETTINGS = Settings(
    alerts={"keep_firing_for_s": 0},  # type: ignore[arg-type]  # resolve on the next window
    windows={"size_s": 10, "allowed_lateness_s": 0},  # type: ignore[arg-type]
    skew={"window_events": 400, "hop_events": 100,  # type: ignore[arg-type]
          "run_length_events": 1e6},
    drift={"enabled": False}, quality={"enabled": False},  # type: ignore[arg-type]
    labels={"window": 200, "estimate_window": 400},  # type: ignore[arg-type]
)


def scored(n: int, seed: int, positive: float = 0.3, skill: float = 0.9
           ) -> tuple[np.ndarray, np.ndarray]:
    """Labels, and probabilities right with probability ``skill``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive).astype(int)
    right = rng.random(n) < skill
    conf = rng.uniform(0.6, 1.0, n)
    p = np.where(right == (y == 1), conf, 1 - conf)
    return y, p


def reference_store() -> ReferenceStore:
    y, p = scored(20_000, seed=0)
    store = ReferenceStore(SETTINGS.skew)
    store.add(build_profile(pl.LazyFrame({"prediction": p, "label": y}), "m", "v1",
                            created_at=1.0))
    return store


class Feed:
    """Predictions and feedback for one model, as Kafka messages with offsets."""

    def __init__(self) -> None:
        self.pipeline = PredictionProcessor(SETTINGS, "ml.predictions", reference_store())
        self.offsets = {"ml.predictions": 0, "ml.feedback": 0}
        self.t = T0

    def send(self, topic: str, docs: list[dict[str, Any]]) -> Outbox:
        msgs = []
        for i in range(0, len(docs), 100):
            msgs.append(InMessage(orjson.dumps(docs[i:i + 100]), 0, self.offsets[topic], topic))
            self.offsets[topic] += 1
        return self.pipeline.process(msgs, now=self.t)

    def predict_and_label(self, y: np.ndarray, p: np.ndarray, tag: str) -> Outbox:
        preds, labels = [], []
        for i, (yi, pi) in enumerate(zip(y.tolist(), p.tolist(), strict=True)):
            eid = f"{tag}-{i}"
            self.t += 0.01
            preds.append({"event_id": eid, "ts": self.t, "model": "m", "version": "v1",
                          "latency_ms": 5.0, "prediction": pi})
            labels.append({"event_id": eid, "ts": self.t + 1, "model": "m", "version": "v1",
                           "label": yi})
        box = self.send("ml.predictions", preds)
        fb = self.send("ml.feedback", labels)
        box.alerts += fb.alerts
        box.deadletters += fb.deadletters
        return box


def keys(box: Outbox, action: str = "trigger") -> list[str]:
    """Label-based alerts (the prediction distribution moves too: skew is tested elsewhere)."""
    return [k for k, a in box.alerts if a["event_action"] == action
            and k.split(":")[0] in ("performance_degradation", "label_drift")]


def test_a_model_that_gets_worse_raises_performance_degradation_then_resolves() -> None:
    feed = Feed()
    assert keys(feed.predict_and_label(*scored(1000, seed=1), tag="a")) == []
    worse = feed.predict_and_label(*scored(400, seed=2, skill=0.6), tag="b")
    assert keys(worse) == ["performance_degradation:m:v1:accuracy"]
    alert = next(a for k, a in worse.alerts if k.startswith("performance"))["payload"]
    details = alert["custom_details"]
    assert details["reference_source"] == "profile" and details["estimate"] is False
    assert details["value"] < details["reference"] - 0.2 and details["log_loss"] > 0
    better = feed.predict_and_label(*scored(400, seed=3), tag="c")
    assert keys(better, "resolve") == ["performance_degradation:m:v1:accuracy"]


def test_label_distribution_moving_raises_label_drift() -> None:
    feed = Feed()
    feed.predict_and_label(*scored(600, seed=4), tag="a")
    moved = feed.predict_and_label(*scored(600, seed=5, positive=0.8), tag="b")
    assert "label_drift:m:v1:label" in keys(moved)


def test_labels_for_unknown_predictions_are_counted_and_bad_feedback_dead_lettered() -> None:
    feed = Feed()
    feed.predict_and_label(*scored(10, seed=6), tag="a")
    box = feed.send("ml.feedback", [
        {"event_id": "never-seen", "ts": T0 + 1.0, "model": "m", "version": "v1", "label": 1},
        {"event_id": "x", "ts": T0 + 1.0, "model": "m", "version": "v1"},
    ])
    assert [d["reason"].split(":")[0] for d in box.deadletters] == ["missing_field"]
    assert box.deadletters[0]["topic"] == "ml.feedback"
    stats = feed.pipeline.monitors["m"].labels.stats()
    assert stats["matched"] == 10 and stats["unmatched"] == 1


def test_without_labels_accuracy_is_estimated_from_confidence() -> None:
    feed = Feed()
    rng = np.random.default_rng(7)
    sure = np.where(rng.random(800) < 0.5, rng.uniform(0.9, 1, 800), rng.uniform(0, 0.1, 800))
    unsure = rng.uniform(0.35, 0.65, 800)
    docs = [{"event_id": f"e{i}", "ts": T0 + i * 0.01, "model": "m", "version": "v1",
             "latency_ms": 5.0, "prediction": float(p)}
            for i, p in enumerate(np.concatenate([sure, unsure]))]
    box = feed.send("ml.predictions", docs)
    assert keys(box) == ["performance_degradation:m:v1:estimated_accuracy"]
    details = next(a for k, a in box.alerts if k.startswith("performance"))["payload"][
        "custom_details"]
    assert details["estimate"] is True and "confidence" in details["method"]


def test_the_join_buffer_is_checkpointed_on_its_own_key_and_restored() -> None:
    feed = Feed()
    y, p = scored(50, seed=8)
    box = feed.send("ml.predictions", [
        {"event_id": f"k{i}", "ts": T0 + i * 0.01, "model": "m", "version": "v1",
         "latency_ms": 5.0, "prediction": float(pi)} for i, pi in enumerate(p)])
    saved = {key: orjson.loads(orjson.dumps(v)) for _, key, v in box.checkpoints}
    segments = [v for k, v in saved.items() if v and v.get("kind") == "labels"]
    assert sum(len(v["entries"]) for v in segments) == 50
    other = PredictionProcessor(SETTINGS, "ml.predictions", reference_store())
    other.process([InMessage(orjson.dumps({"event_id": "k3", "ts": T0 + 2.0, "model": "m",
                                           "version": "v1", "label": int(y[3])}),
                             0, 0, "ml.feedback")], now=T0 + 1.0, saved=saved.get)
    assert other.monitors["m"].labels.stats()["matched"] == 1


def test_join_and_check_units() -> None:
    j = LabelJoin(max_size=10, ttl_s=5)
    for i in range(3):
        j.add(str(i), float(i), "v1", "stable", 0.5)
    assert j.expire(watermark=6.5) == 2 and len(j) == 1
    chk = PerformanceCheck("m", "v1", window=10, run_length=1e6)
    # regression: MAE 1 becomes the reference
    assert chk.update({"ts": np.zeros(10), "prediction": [3.0] * 10, "label": [2.0] * 10}) == []
    assert chk.task == "regression" and chk.learned_reference == 1.0
    assert chk.reference is None  # the parameter: none given


def test_predictions_and_their_labels_in_one_micro_batch_join() -> None:
    p = PredictionProcessor(SETTINGS, "ml.predictions", reference_store())
    pred = {"event_id": "z", "ts": T0 + 1.0, "model": "m", "version": "v1", "latency_ms": 1.0,
            "prediction": 0.9}
    label = {"event_id": "z", "ts": T0 + 2.0, "model": "m", "version": "v1", "label": 1}
    p.process([InMessage(orjson.dumps(label), 0, 0, "ml.feedback"),
               InMessage(orjson.dumps(pred), 0, 0, "ml.predictions")], now=T0)
    assert p.monitors["m"].labels.stats()["matched"] == 1


def _river_window(preds: list[Any], labels: list[Any]) -> tuple[float, float, float, int]:
    """Accuracy, F1, log loss and pairs scored of binary scores, River metric by label,
    as PerformanceCheck scored them until its runs were counted at once."""
    from river import metrics

    acc, f1, loss, n = metrics.Accuracy(), metrics.F1(), metrics.LogLoss(), 0
    for p, y in zip(preds, labels, strict=True):
        if type(y) not in (int, float, bool) or y not in (0, 1) or \
                type(p) not in (int, float, bool):
            continue
        q = min(max(float(p), 1e-15), 1 - 1e-15)
        acc.update(int(y), int(q >= 0.5))
        f1.update(bool(y), q >= 0.5)
        loss.update(bool(y), q)
        n += 1
    return acc.get(), f1.get(), loss.get(), n


def test_runs_of_labels_score_as_river_does_label_by_label() -> None:
    rng = np.random.default_rng(5)
    window = 300
    preds: list[Any] = rng.random(2_000).round(3).tolist()
    labels: list[Any] = (rng.random(2_000) < 0.4).astype(int).tolist()
    for i in rng.choice(2_000, 60, replace=False).tolist():  # pairs it cannot score
        preds[i], labels[i] = [("x", 1), (0.4, 2), (None, 0), (0.9, "yes")][i % 4]
    preds[0], labels[0] = 0.8, 1  # the task: probabilities of a binary label
    chk = PerformanceCheck("m", "v1", window=window, run_length=1e7, reference=0.5)
    signals, at = [], 0
    for size in rng.integers(1, 250, 100).tolist():  # runs of any size, across windows
        part = slice(at, at + size)
        signals += chk.update({"ts": np.arange(2_000.0)[part], "prediction": preds[part],
                               "label": labels[part]})
        at += size
    assert at >= 2_000
    counted = np.cumsum([_river_window([p], [y])[3] for p, y in zip(preds, labels,
                                                                   strict=True)])
    ends = [i for i in range(2_000) if counted[i] % window == 0 and counted[i] and
            (i == 0 or counted[i - 1] != counted[i])]  # where each window's last pair is
    assert [s.timestamp for s in signals] == [float(i) for i in ends] and len(ends) >= 5
    start = 0
    for s, end in zip(signals, ends, strict=True):
        accuracy, f1, log_loss, n = _river_window(preds[start:end + 1], labels[start:end + 1])
        assert n == window == s.details["window"]["labels"]
        assert s.details["value"] == round(accuracy, 5)
        assert s.details["f1"] == round(f1, 5)
        assert s.details["log_loss"] == pytest.approx(round(log_loss, 5), abs=1e-5)
        start = end + 1
