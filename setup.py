"""The compiled loops: the sequential tests' inner loop (``detectors/_cusum.c``) and
the label join's event-id hashes (``detectors/_idhash.c``).

Everything else is in ``pyproject.toml``. Both extensions are optional: without a
C compiler the install goes on, :mod:`detectors.sequential` runs its numpy version
of the same loop (slower, same results up to the last bits) and
:mod:`detectors.performance` hashes with :mod:`hashlib` (slower, the same hashes).
"""
from __future__ import annotations

from setuptools import Extension, setup

setup(ext_modules=[Extension("detectors._cusum", ["detectors/_cusum.c"], optional=True),
                   Extension("detectors._idhash", ["detectors/_idhash.c"], optional=True)])
