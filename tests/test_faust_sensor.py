"""The worker's Faust sensor (``worker.faust_metrics``) exports what Faust's own
Prometheus sensor exports, from Faust's plain per-message hooks.

The same hooks, called on both with the same arguments, give the same ``faust_*``
samples; the sensor only leaves out ``faust_events_runtime_ms`` (observed per
event) and the ``_created`` timestamps of the series it answers at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from streams.runtime.faust_sensor import FaustSensor


@dataclass(eq=False)
class FakeChannel:
    name: str

    def __str__(self) -> str:
        return self.name


class FakeTask:
    pass


@dataclass(eq=False)
class FakeStream:
    """What the hooks read of a stream: its repr, its task and its channel's name."""

    channel: FakeChannel
    task_owner: FakeTask = field(default_factory=FakeTask)

    def __str__(self) -> str:
        return f"<Stream: {self.channel}>"

    @property
    def shortlabel(self) -> str:
        return f"Stream: FakeChannel: {self.channel}"


@dataclass
class FakeMessage:
    time_in: float | None = None
    time_out: float | None = None
    time_total: float | None = None


def traffic(m: Monitor) -> list[Any]:
    """Four messages through two streams (what the monitor holds weakly: kept alive)."""
    a, b = FakeStream(FakeChannel("ml.predictions")), FakeStream(FakeChannel("ml.feedback"))
    for i, (tp, stream) in enumerate([(TP("ml.predictions", 0), a), (TP("ml.predictions", 1), a),
                                      (TP("ml.feedback", 3), b), (TP("ml.predictions", 0), a)]):
        msg = FakeMessage()
        m.track_tp_end_offset(tp, 100 + i)
        m.on_message_in(tp, i, msg)  # type: ignore[arg-type]
        state = m.on_stream_event_in(tp, i, stream, None)  # type: ignore[arg-type]
        if i < 3:  # the last one is still being processed
            m.on_stream_event_out(tp, i, stream, None, state)  # type: ignore[arg-type]
            m.on_message_out(tp, i, msg)  # type: ignore[arg-type]
    m.on_tp_commit({TP("ml.predictions", 0): 3})
    m.count("custom", 2)
    return [a, b, a.task_owner, b.task_owner]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in registry.collect() for s in fam.samples
            if not s.name.endswith("_created")}


def test_the_sensor_exports_what_fausts_sensor_does() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    faust_sensor = PrometheusMonitor(metrics=FaustMetrics.create(theirs, "faust"))
    sensor = FaustSensor.create(ours)
    alive = traffic(faust_sensor), traffic(sensor)
    expected = {k: v for k, v in samples(theirs).items()
                if not k[0].startswith("faust_events_runtime_ms")}
    got = samples(ours)
    assert got == expected
    # what the per-message series say, to be sure the comparison saw them
    assert got[("faust_messages_received_total", ())] == 4
    assert got[("faust_active_messages", ())] == 1
    assert got[("faust_messages_received_per_topic_total", (("topic", "ml.predictions"),))] == 3
    assert got[("faust_messages_received_per_topics_partition",
                (("partition", "0"), ("topic", "ml.predictions")))] == 3
    assert got[("faust_total_events_per_stream_total",
                (("stream", "stream.fakechannel_ml.predictions.events"),))] == 3
    assert got[("faust_topic_partition_end_offset",
                (("partition", "3"), ("topic", "ml.feedback")))] == 102
    # a stream gone (an agent restarted) keeps its label's count: the counter never drops
    del alive
    assert samples(ours)[("faust_total_events_per_stream_total",
                          (("stream", "stream.fakechannel_ml.predictions.events"),))] == 3


def test_the_per_message_hooks_are_fausts_plain_ones() -> None:
    for hook in ("on_message_in", "on_stream_event_in", "on_stream_event_out",
                 "on_message_out", "track_tp_end_offset"):
        assert getattr(FaustSensor, hook) is getattr(Monitor, hook), hook
    # the rest stays Faust's Prometheus sensor's
    for hook in ("on_send_completed", "on_send_error", "on_commit_completed",
                 "on_rebalance_start", "on_tp_commit", "on_table_set"):
        assert getattr(FaustSensor, hook) is getattr(PrometheusMonitor, hook), hook


def test_a_rebalance_clears_the_partition_series_as_fausts_sensor_does() -> None:
    registry = CollectorRegistry()
    sensor = FaustSensor.create(registry)
    alive = traffic(sensor)
    sensor.on_rebalance_start(SimpleNamespace(rebalancing_count=1))  # type: ignore[arg-type]
    names = {name for name, _ in samples(registry)}
    assert "faust_messages_received_per_topics_partition" not in names
    assert "faust_topic_partition_end_offset" not in names
    assert samples(registry)[("faust_messages_received_total", ())] == 4
    assert alive
