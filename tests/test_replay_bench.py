"""bench/replay.py folds the e2e run's workload as the worker would: every prediction,
no dead letter (a profile of it measures the worker's path, not a parse error's)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import replay  # noqa: E402


def test_the_replay_folds_every_prediction_of_the_e2e_workload() -> None:
    events, folded, dead, spent = replay.replay(2_000)
    assert (events, folded, dead) == (3_000, 2_000, 0)  # 2,000 predictions, 1,000 labels
    assert spent > 0
