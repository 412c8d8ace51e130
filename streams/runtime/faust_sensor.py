"""Faust's own Prometheus sensor on the worker's /metrics (``worker.faust_metrics``),
without its cost per message.

Faust's :class:`~faust.sensors.prometheus.PrometheusMonitor` updates eight
Prometheus series from the hooks Faust calls for *every* message and event
(``on_message_in``, ``on_stream_event_in``/``_out``, ``on_message_out``,
``track_tp_end_offset``): a ``labels()`` look-up under a lock per series, and
the stream's label rebuilt from its repr each time. With one prediction per
Kafka message that was the largest single cost under the agents: measured by
``bench/e2e.py --only single-event`` (30,000 predictions and 15,000 labels, one
per message, 7 interleaved runs each on 2 cores; docs/SPEED.md), the worker ran
at a median 59 % of the Faust pass-through's rate with Faust's sensor, 77 % with
this one and 79 % with none.

:class:`FaustSensor` keeps every series that costs nothing per message as
Faust makes it (producer send latency and errors, commit latency, committed
offsets, rebalances, assignments, table operations, web requests), and answers
the per-message ones when Prometheus scrapes, from what Faust's plain
:class:`~faust.sensors.monitor.Monitor` (the one every Faust app runs, the
pass-through included) already counts in its own per-message hooks, which the
sensor uses instead of the Prometheus ones. Same names, labels and values:
``faust_messages_received_total``, ``faust_messages_received_per_topic_total``,
``faust_active_messages``, ``faust_messages_received_per_topics_partition`` (the
last offset read), ``faust_total_events_total``,
``faust_total_events_per_stream_total``, ``faust_total_active_events``,
``faust_topic_partition_end_offset``. The one series it does not make is
``faust_events_runtime_ms`` (a histogram observed per event): the worker's own
``sentinelle_batch_seconds`` times what the agents do with the events.

Only Faust's sensor extension points are used (a :class:`Monitor` subclass set
as ``app.monitor``, and its documented counters); nothing in Faust is patched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "faust"


class FaustSensor(PrometheusMonitor):
    """Faust's Prometheus sensor with Faust's plain per-message hooks (see the module)."""

    # what Faust calls per message and per event: the plain Monitor's bookkeeping only
    on_message_in = Monitor.on_message_in
    on_stream_event_in = Monitor.on_stream_event_in
    on_stream_event_out = Monitor.on_stream_event_out
    on_message_out = Monitor.on_message_out
    track_tp_end_offset = Monitor.track_tp_end_offset

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FaustSensor:
        """The sensor, its series registered on ``registry`` (named ``faust_*``)."""
        metrics = FaustMetrics.create(registry, PREFIX)
        for per_message in (metrics.messages_received, metrics.active_messages,
                            metrics.messages_received_per_topics,
                            metrics.messages_received_per_topics_partition,
                            metrics.events_runtime_latency, metrics.total_events,
                            metrics.total_active_events, metrics.total_events_per_stream,
                            metrics.topic_partition_end_offset):
            registry.unregister(per_message)
        sensor = cls(metrics=metrics)
        registry.register(MonitorCounts(sensor))
        return sensor

    def stream_label(self, stream: Any) -> str:
        """What Faust's sensor labels a stream's events with."""
        return f"stream.{self._stream_label(stream)}.events"


class MonitorCounts(Collector):
    """The per-message series, read from the sensor's plain-Monitor counters."""

    def __init__(self, sensor: FaustSensor) -> None:
        self.sensor = sensor
        self.labels: dict[str, str] = {}  # a stream's repr -> its label

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        m, p, tp = self.sensor, PREFIX, ["topic", "partition"]
        # copies first: the hooks run on the event loop, a scrape may not
        received = CounterMetricFamily(f"{p}_messages_received", "Total messages received",
                                       value=m.messages_received_total)
        active = GaugeMetricFamily(f"{p}_active_messages", "Total active messages",
                                   value=m.messages_active)
        per_topic = CounterMetricFamily(f"{p}_messages_received_per_topic",
                                        "Messages received per topic", labels=["topic"])
        for topic, n in dict(m.messages_received_by_topic).items():
            per_topic.add_metric([topic], n)
        read_offsets = GaugeMetricFamily(f"{p}_messages_received_per_topics_partition",
                                         "Messages received per topic/partition", labels=tp)
        for (topic, partition), offset in dict(m.tp_read_offsets).items():
            read_offsets.add_metric([topic, str(partition)], offset)
        events = CounterMetricFamily(f"{p}_total_events", "Total events received",
                                     value=m.events_total)
        active_events = GaugeMetricFamily(f"{p}_total_active_events", "Total active events",
                                          value=m.events_active)
        per_stream = CounterMetricFamily(f"{p}_total_events_per_stream",
                                         "Events received per Stream", labels=["stream"])
        # Faust's Monitor counts events by the stream's repr, and holds the streams
        # weakly: each repr's label is learnt while its stream lives, and kept
        for stream, key in list(m.stream_lookup.items()):
            if key not in self.labels:
                self.labels[key] = m.stream_label(stream)
        labelled: dict[str, int] = {}
        for key, n in dict(m.events_by_stream).items():
            if key in self.labels:  # streams of one label count together, as in Faust
                label = self.labels[key]
                labelled[label] = labelled.get(label, 0) + n
        for label, n in labelled.items():
            per_stream.add_metric([label], n)
        end_offsets = GaugeMetricFamily(f"{p}_topic_partition_end_offset",
                                        "Offset ends per topic/partition", labels=tp)
        for (topic, partition), offset in dict(m.tp_end_offsets).items():
            end_offsets.add_metric([topic, str(partition)], offset)
        return [received, active, per_topic, read_offsets, events, active_events, per_stream,
                end_offsets]
