"""``bench/e2e.py``'s batch-form workload folded in this process, without Kafka.

The worker's processing of the e2e run (5 models of 12 features, a training
profile per version, 10 % canary traffic announced, labels for half the
predictions), with nothing around it: the same events, grouped 100 per message
by model, labels interleaved with the predictions as they arrive, folded by
:class:`~streams.core.predictions.PredictionProcessor` in slices of about
``worker.slice_bytes`` with the garbage collector tuned as the worker tunes it.
It prints the CPU time per event (predictions and labels), so that a sampling
profiler sees only the path the e2e run's "processing micro-batches" share
measures::

    .venv/bin/py-spy record -r 200 -o replay.svg -- .venv/bin/python bench/replay.py

``--predictions N`` (default 200,000); ``--per-message 1`` replays the single-event
form instead (one event per message, micro-batches of ``worker.batch_max``
messages); ``--set KEY=VALUE`` changes a worker setting, as in ``bench/e2e.py``
(``--set labels.enabled=false``: what the label join costs). Nothing is asserted: it prints figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # noqa: E402  (bench/ is not a package)

from streams.config import Settings  # noqa: E402
from streams.core.predictions import InMessage, PredictionProcessor  # noqa: E402
from streams.core.references import ReferenceStore  # noqa: E402
from streams.runtime.tuning import tune_gc  # noqa: E402

PARTITIONS = 4


def workload(settings: Settings, n: int, per_message: int = 100
             ) -> tuple[list[InMessage], list[InMessage], int]:
    """The canary announcements, then predictions and labels in arrival order, and how
    many events those carry."""
    models = e2e.model_names(5)
    t0 = time.time() - 3600
    preds = e2e.events(models, n, t0, 200.0, seed=1)
    labels = e2e.labels(preds, seed=1)
    t = settings.topics
    announce = [InMessage(orjson.dumps({"model": m, "stable_version": "v1",
                                        "canary_version": "v2", "traffic_percent": 10,
                                        "phase": "started", "ts": t0 - 7200}),
                          i % PARTITIONS, i, t.deployments, m.encode())
                for i, m in enumerate(models)]
    partition = {m: i % PARTITIONS for i, m in enumerate(models)}
    offsets: dict[tuple[str, int], int] = {}

    def message(topic: str, key: bytes, value: bytes) -> InMessage:
        p = partition[key.decode()]
        offset = offsets[topic, p] = offsets.get((topic, p), -1) + 1
        return InMessage(value, p, offset, topic, key)

    feedback = iter(e2e.grouped(labels, "model", per_message))
    out = []
    for i, (key, value, _) in enumerate(e2e.grouped(preds, "model", per_message)):
        out.append(message(t.predictions, key, value))
        if i % 2 and (label := next(feedback, None)) is not None:
            out.append(message(t.feedback, label[0], label[1]))
    return announce, out, len(preds) + len(labels)


def slices(messages: list[InMessage], size: int, most: int) -> list[list[InMessage]]:
    """The worker's slices: about ``size`` bytes, in micro-batches of ``most`` messages."""
    out: list[list[InMessage]] = [[]]
    held = 0
    for m in messages:
        if held >= size or len(out[-1]) >= most:
            out.append([])
            held = 0
        out[-1].append(m)
        held += len(m.value or b"")
    return out


def replay(predictions: int, per_message: int = 100,
           overrides: list[dict[str, Any]] | None = None) -> tuple[int, int, int, float]:
    """Events replayed, predictions folded, dead letters and CPU seconds (``overrides``:
    worker settings changed, as ``bench/e2e.py --set`` changes them)."""
    config: dict[str, Any] = {}
    for override in overrides or []:
        e2e.merge(config, override)
    settings = Settings.model_validate(config)
    references = ReferenceStore(settings.skew, settings.drift.baseline_factor)
    for model in e2e.model_names(5):
        for version in ("v1", "v2"):
            references.add(e2e.profile_of(model, version))
    processor = PredictionProcessor(settings, settings.topics.predictions, references)
    announce, messages, events = workload(settings, predictions, per_message)
    processor.process(announce, time.time())
    tune_gc()
    folded = dead = 0
    started = time.process_time()
    for part in slices(messages, settings.worker.slice_bytes, settings.worker.batch_max):
        box = processor.process(part, time.time())
        folded, dead = folded + box.events, dead + len(box.deadletters)
    return events, folded, dead, time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--predictions", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=100,
                    help="events per message (1: the single-event form)")
    ap.add_argument("--set", action="append", type=e2e.setting, default=[], metavar="KEY=VALUE",
                    help="a worker setting, e.g. labels.enabled=false (repeatable)")
    args = ap.parse_args(argv)
    events, folded, dead, spent = replay(args.predictions, args.per_message, args.set)
    print(f"{events:,} events ({folded:,} predictions folded, {dead} dead letters): "
          f"{spent:.2f} s of CPU, {spent / events * 1e6:.2f} us per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
