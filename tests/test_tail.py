"""Tail calibration: probabilities from a score's own history, checkpoints, arguments."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from detectors.tail import TailCalibrator


def test_tail_calibrator_checkpoint() -> None:
    rng = np.random.default_rng(14)
    a = TailCalibrator(history=300)
    for s in rng.exponential(size=700):
        a.learn(float(s))
    b = TailCalibrator(history=300)
    b.load_dict(orjson.loads(orjson.dumps(a.to_dict())))
    for s in rng.exponential(size=100):
        a.learn(float(s))
        b.learn(float(s))
    assert a.to_dict() == b.to_dict() and a.tail(5.0) == b.tail(5.0)
    assert 0.002 < a.tail(5.0) < 0.02  # exp(-5) = 0.0067


def test_no_probability_below_one_before_min_history() -> None:
    cal = TailCalibrator(min_history=50)
    for s in np.random.default_rng(1).exponential(size=49):
        cal.learn(float(s))
    assert cal.tail(100.0) == 1.0 and cal.inverse(1e-4) == float("inf")
    cal.learn(1.0)
    assert cal.tail(100.0) < 1e-6


def test_forget_fits_on_the_fresh_scores_only() -> None:
    rng = np.random.default_rng(2)
    cal = TailCalibrator(history=2000, refit_every=10)
    for s in rng.exponential(size=1000):
        cal.learn(float(s))
    wide = cal.tail(4.0)
    cal.forget(fresh=200)
    for s in rng.exponential(scale=0.25, size=400):  # the scores shrank: a quieter score
        cal.learn(float(s))
    assert cal.tail(4.0) < wide / 100


@pytest.mark.parametrize("bad", [{"history": 5, "min_history": 10}, {"min_history": 5},
                                 {"refit_every": 0}, {"run": 0}, {"tail_share": 0.0},
                                 {"tail_share": 0.6}, {"winsor": 0.1},
                                 {"tail_share": float("nan")}])
def test_bad_arguments_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TailCalibrator(**bad)
