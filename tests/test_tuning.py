"""The worker keeps numpy's BLAS pool to ``worker.blas_threads`` threads."""

from __future__ import annotations

import os
import subprocess
import sys


def test_limit_threads_sets_the_blas_pool() -> None:
    # A fresh interpreter: the limit lasts for the process's lifetime.
    code = ("import numpy, threadpoolctl\n"
            "from streams.runtime.tuning import limit_threads\n"
            "from streams.config import Settings\n"
            "before = [p['num_threads'] for p in threadpoolctl.threadpool_info()"
            " if p['user_api'] == 'blas']\n"
            "limit_threads(Settings().worker.blas_threads)\n"
            "after = [p['num_threads'] for p in threadpoolctl.threadpool_info()"
            " if p['user_api'] == 'blas']\n"
            "print(before, after)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"}).stdout
    before, after = out.strip().split("] [")
    assert before.strip("[") and "2" in before      # numpy's pool as the environment set it
    assert after.strip("]").split(", ") == ["1"] * len(after.strip("]").split(", "))
