"""What every detector is, and what it returns: the :class:`Detector` protocol and :class:`Signal`.

A detector looks at a micro-batch (or, for silence, at the clock) and says
whether its condition holds *now*. It does not remember whether it already said
so: turning a stream of signals into one trigger and one resolve (``for``,
hysteresis, keep-firing, cooldown) is the alert manager's job
(:mod:`alerting.manager`).

Every detector follows one protocol, as River's estimators share one base:

- **one update shape**: ``update(batch) -> list[Signal]``, where ``batch`` is a
  micro-batch as named columns (:class:`Batch`; numpy arrays for numbers, lists
  for objects), and ``inputs`` names the columns the detector reads. A batch
  has as many rows as the caller has; nothing is called once per event where
  the caller holds a batch;
- **one return shape**: a list of :class:`Signal`, in row order, possibly empty
  (a window too small to judge says nothing; "no data" is not "healthy");
- **an identity**: ``key`` is the ``dedup_key`` of its signals, or the prefix of
  each of them (a signal's key is ``key`` or ``key:<part>``, as
  ``data_quality:M:V`` and ``data_quality:M:V:amount:missing``);
- **a checkpoint**: ``to_dict()`` is plain JSON and ``load_dict()`` on a
  detector built with the same parameters restores it, so that the next
  signals are the same as if nothing had happened;
- **parameters**: every ``__init__`` argument is stored under its own name and
  validated there (``ValueError``), River's way: identity first (model,
  version, cohort, feature, pipeline...), then the objects it compares with
  (bins, calibration, specs), then scalar tuning parameters with defaults;
  ``_unit_test_params()`` gives the conformance suite
  (``tests/test_detector_contract.py``) valid parameters to build it with.

Two detectors are also driven by the wall clock, because what they watch is
silence, which no batch carries: :class:`~detectors.outage.OutageDetector`
(``check(now)``) and :class:`~detectors.pipelines.StallWatch`
(``check(runs, now)``); their batches are the arrivals that end a silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict, runtime_checkable

from detectors.contract import SEVERITIES, Severity

if TYPE_CHECKING:
    import numpy as np

    from detectors.quality import FeatureColumns
    from detectors.windows import WindowStats

__all__ = ["Signal", "Batch", "Detector", "check_severity"]


@dataclass(frozen=True, slots=True)
class Signal:
    """The state of one condition at one moment.

    ``active`` is True while the condition holds. ``timestamp`` is epoch seconds:
    event time (the end of the window that decided) for window checks, wall
    clock for checks about silence.
    """

    check: str
    key: str
    active: bool
    severity: Severity
    summary: str
    timestamp: float
    model: str
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Batch(TypedDict, total=False):
    """One micro-batch as named columns, every column one entry per row, in arrival order.

    A detector reads the columns its ``inputs`` name (a caller may pass more).
    """

    ts: np.ndarray                         # float: each row's time, epoch seconds
    bin: np.ndarray                        # int: each value's bin on the detector's bins
    value: np.ndarray                      # float: each row's number
    category: Sequence[str]                # categorical values as category keys (as ``bin``)
    windows: Sequence[WindowStats]         # closed event-time windows (each has its times)
    features: FeatureColumns | Sequence[dict[str, Any] | None]  # feature objects
    prediction: Sequence[Any] | np.ndarray
    label: Sequence[Any]
    run_id: Sequence[str]
    status: Sequence[str]                  # a pipeline run's status
    error: Sequence[str | None]
    duration_s: Sequence[float | None]     # a finished run's duration
    pipeline: Sequence[str]
    model: Sequence[str | None]
    version: Sequence[str | None]
    metrics: Sequence[dict[str, float]]    # a validation run's metrics
    run_used: Sequence[float | None]       # a run's cumulative use of a pool resource
    used: Sequence[float | None]           # the pool's use
    limit: Sequence[float | None]          # the pool's limit


@runtime_checkable
class Detector(Protocol):
    """The shape every detector has (see the module's docstring)."""

    inputs: ClassVar[tuple[str, ...]]

    @property
    def key(self) -> str:
        """The ``dedup_key`` of its signals, or the prefix of each of them."""
        ...

    def update(self, batch: Batch) -> list[Signal]:
        """Fold a micro-batch in; the signals it leads to, in row order."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The state, as plain JSON."""
        ...

    def load_dict(self, data: dict[str, Any]) -> None:
        """Restore :meth:`to_dict`'s output (on a detector built with the same parameters)."""
        ...


def check_severity(severity: str) -> None:
    """``ValueError`` unless ``severity`` is one of the contract's.

    >>> check_severity("warning")
    >>> check_severity("loud")
    Traceback (most recent call last):
    ...
    ValueError: severity must be one of ('critical', 'error', 'warning', 'info'), not 'loud'
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
