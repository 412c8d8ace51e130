"""The worker runs without SciPy's statistics package (45 MB of its memory).

River's ``drift`` and ``metrics`` packages import ``scipy.stats`` for detectors
the worker does not use (:mod:`detectors._river` defers it); the worker's own
p-values come from ``scipy.special``. These tests pin both: a worker process
that folds predictions, labels, canary cohorts, pipeline runs and performance
windows never loads ``scipy.stats``, and each replacement gives what
``scipy.stats`` (or River's ``GaussianScorer``) gives.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from river import anomaly
from scipy import stats

from detectors.canary import homogeneity_p, hypergeom_sf, two_proportion_p
from detectors.pipelines import DurationAnomaly

ROOT = Path(__file__).resolve().parent.parent

FOLD_EVERYTHING = """
import runpy, sys
import numpy as np
from streams.config import Settings
from streams.runtime.agents import register
from streams.runtime.app import create_app
import streams.cli  # every module a worker imports, its agents registered (Faust's
register(create_app(Settings.model_validate(  # registration walks sys.modules)
    {"kafka": {"bootstrap_servers": "127.0.0.1:1"}})))
sys.argv = ["replay.py", "--predictions", "20000"]
try:
    runpy.run_path("bench/replay.py", run_name="__main__")  # predictions, labels, canaries
except SystemExit as done:
    assert not done.code, done.code

from detectors.canary import homogeneity_p, two_proportion_p
from detectors.performance import PerformanceCheck
from detectors.pipelines import DurationAnomaly

rng = np.random.default_rng(0)
assert two_proportion_p(40, 1000, 4, 1000) < 1e-8
assert homogeneity_p(np.array([90, 10]), np.array([10, 90])) < 1e-6
durations = DurationAnomaly("p", min_runs=5)
runs = [*rng.lognormal(6, 0.1, 30), 4000.0]
assert durations.update({"ts": np.arange(31.0), "run_id": [str(i) for i in range(31)],
                         "duration_s": runs})[-1].active
truth = rng.normal(50, 5, 1200)
for labels, predictions in (([1, 0, 0] * 400, [0.9, 0.1, 0.7] * 400),  # binary
                            (truth.tolist(), (truth + rng.normal(0, 1, 1200)).tolist())):
    check = PerformanceCheck("m", "v1", window=100, run_length=1e6)
    check.update({"ts": np.arange(1200.0), "prediction": predictions, "label": labels})
    assert check.learned_reference is not None
print("scipy.stats loaded:", "scipy.stats" in sys.modules)
"""


def test_a_worker_folding_every_kind_of_input_never_loads_scipy_stats() -> None:
    done = subprocess.run([sys.executable, "-c", FOLD_EVERYTHING], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "scipy.stats loaded: False", done.stdout


@pytest.mark.parametrize("total,marked,drawn", [
    (10, 5, 5), (60, 3, 30), (530, 2, 30), (2000, 44, 1000), (1_000_000, 4_000, 100_000),
    (50, 50, 20), (50, 0, 20), (50, 20, 50)])
def test_the_hypergeometric_tail_is_scipys(total: int, marked: int, drawn: int) -> None:
    for k in range(-1, min(marked, drawn) + 3):
        want = float(stats.hypergeom.sf(k - 1, total, marked, drawn))
        got = hypergeom_sf(k, total, marked, drawn)
        assert got == pytest.approx(want, rel=1e-7, abs=1e-300), (k, got, want)


def test_fishers_tail_stays_exact_down_to_the_smallest_doubles() -> None:
    # 150 errors in 1,000 canary requests against 2 in 100,000 stable ones
    got = two_proportion_p(150, 1000, 2, 100_000)
    want = float(stats.hypergeom.sf(149, 101_000, 152, 1000))
    assert 0 < got < 1e-300 and got == pytest.approx(want, rel=1e-7)


def test_the_homogeneity_test_is_scipys_chi_square_without_correction() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        bins = int(rng.integers(2, 12))
        a = rng.integers(0, 60, bins)
        b = rng.integers(0, 60, bins) + rng.integers(0, 2) * np.arange(bins) * 5
        table = np.vstack([a, b]).astype(float)
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2 or not table.sum(axis=1).all():
            continue
        want = float(stats.chi2_contingency(table, correction=False).pvalue)
        assert homogeneity_p(a, b) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_an_empty_side_has_no_evidence_of_a_difference() -> None:
    # scipy's chi2_contingency raised on this (an expected frequency of zero)
    assert homogeneity_p(np.array([0, 0, 0]), np.array([5, 1, 9])) == 1.0


def test_the_duration_score_is_rivers_gaussian_scorer_over_the_same_runs() -> None:
    rng = np.random.default_rng(11)
    det = DurationAnomaly("p", min_runs=10)
    river = anomaly.GaussianScorer(window_size=50, grace_period=10)
    for y in np.log(rng.lognormal(6, 0.3, 300)):
        if len(det.learned) >= det.min_runs:
            assert det._score(float(y)) == pytest.approx(river.score_one(None, y), abs=1e-9)
        det._learn(float(y))
        river.learn_one(None, y)


def test_runs_that_all_took_the_same_time_make_only_a_different_one_anomalous() -> None:
    det = DurationAnomaly("p", min_runs=5)
    for _ in range(10):
        det._learn(math.log(600.0))
    assert det._score(math.log(600.0)) == 0.0
    assert det._score(math.log(601.0)) == 1.0
