"""The compiled inner loop of the sequential tests (``detectors/_cusum.c``).

Everything else is in ``pyproject.toml``. The extension is optional: without a C
compiler the install goes on and :mod:`detectors.sequential` runs its numpy
version of the same loop (slower, same results up to the last bits).
"""
from __future__ import annotations

from setuptools import Extension, setup

setup(ext_modules=[Extension("detectors._cusum", ["detectors/_cusum.c"], optional=True)])
