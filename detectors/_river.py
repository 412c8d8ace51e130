"""River's ``drift`` and ``metrics`` packages, without loading SciPy's statistics.

The detectors use River's :class:`~river.drift.ADWIN` and two of its metrics
(accuracy and F1, on one confusion matrix; log loss and MAE are River's running
means, :class:`river.stats.Mean`). Importing ``river.drift`` or ``river.metrics``
also imports, at module level, ``scipy.stats`` (for KSWIN and the geometric
mean) and ``scipy.integrate`` (for ROC AUC), which none of those four uses:
with ``scipy.optimize`` and ``scipy.linalg`` behind them that is about 45 MB
of every worker's resident memory, a seventh of it for a five-model worker
(docs/SPEED.md, "Memory").

So River's two packages are imported here with those SciPy packages standing
in as :class:`OnFirstUse` modules: River's KSWIN, geometric mean and ROC AUC
hold a stand-in that imports the real package on their first use of it, and
nothing else sees the stand-ins (they are out of ``sys.modules`` again once
River is imported, so an ``import scipy.stats`` anywhere gets the real one,
and ``inspect``'s walks over ``sys.modules``, which Faust's agent registration
makes, load nothing). A process that had already imported them keeps the real
modules. The worker's own p-values come from ``scipy.special``;
``tests/test_imports.py`` pins that a worker folding every kind of input never
loads ``scipy.stats``.

Import River's ``drift`` and ``metrics`` from here, not from ``river``:

>>> from detectors._river import drift, metrics
>>> mae = metrics.MAE()
>>> mae.update(1.0, 3.0)
>>> mae.get()
2.0
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__all__ = ["drift", "metrics", "OnFirstUse"]

DEFERRED = ("scipy.stats", "scipy.integrate")


class OnFirstUse(types.ModuleType):
    """Stands for the package of its name: its first attribute read imports the
    package (if nothing has yet) and every read is answered by the real one.

    >>> json = OnFirstUse("json")
    >>> json.dumps([1])
    '[1]'
    """

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:  # still standing in: step aside
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _import_river() -> tuple[types.ModuleType, types.ModuleType]:
    standing_in = {}
    for name in DEFERRED:
        if name not in sys.modules:
            standing_in[name] = sys.modules[name] = OnFirstUse(name)
    try:
        from river import drift, metrics
    finally:
        for name, stand_in in standing_in.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            package = vars(sys.modules[parent])  # not getattr: SciPy's would import it
            if package.get(child) is stand_in:
                del package[child]
    return drift, metrics


if TYPE_CHECKING:
    from river import drift, metrics
else:
    drift, metrics = _import_river()
