"""The compiled loops: the sequential tests' inner loop (``detectors/_cusum.c``), the
label join's event-id hashes (``detectors/_idhash.c``, with ``_idhash_lanes.h``), the
binning of category values and numbers on a profile's bins (``detectors/_bins.c``) and
the batch form's fast path from a message's bytes to columns
(``streams/core/_batchparse.c``).

Everything else is in ``pyproject.toml``. The extensions are optional: without a
C compiler the install goes on, :mod:`detectors.sequential` runs its numpy version
of the same loop (slower, same results up to the last bits),
:mod:`detectors.performance` hashes with :mod:`hashlib` (slower, the same hashes),
:mod:`detectors.profile` bins with numpy (slower, the same bins) and
:mod:`streams.core.parse` reads every message with orjson (slower, the same columns).
"""
from __future__ import annotations

from setuptools import Extension, setup

setup(ext_modules=[Extension("detectors._cusum", ["detectors/_cusum.c"], optional=True),
                   Extension("detectors._idhash", ["detectors/_idhash.c"],
                             depends=["detectors/_idhash_lanes.h"], optional=True),
                   Extension("detectors._bins", ["detectors/_bins.c"], optional=True),
                   Extension("streams.core._batchparse", ["streams/core/_batchparse.c"],
                             optional=True)])
