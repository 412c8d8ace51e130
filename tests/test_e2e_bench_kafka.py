"""``bench/e2e.py --quick`` completes through the real broker and prints its table.

Only that: speed is measured by running the bench (``make bench``), never by a
timed test. The figures of a quick run are not judged."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.kafka


def test_the_e2e_bench_completes_and_prints_its_table(kafka_bootstrap: str) -> None:
    done = subprocess.run([sys.executable, "bench/e2e.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    for row in ("| batch form |", "| single-event |", "| sentinelle.client |",
                "ml.stats: p50", "ml.alerts: p50", "consumer lag",
                "| models | model versions | events | peak RSS MB |", "MB per model version"):
        assert row in done.stdout, row
