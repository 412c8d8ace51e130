"""The worker keeps numpy's BLAS pool to ``worker.blas_threads`` threads; the
``sentinelle`` command caps glibc's malloc arenas."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from streams.runtime import tuning


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


ARENAS = """
import ctypes, tempfile, threading
{imports}
def churn():  # what a thread reading Kafka does: blocks of tens of kB, freed elsewhere
    kept = []
    for _ in range(2000):
        kept.append(bytearray(50_000))
        del kept[:-50]
threads = [threading.Thread(target=churn) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    out = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    print(open(f.name).read().count("<heap nr="))
"""


def arenas_after(imports: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", ARENAS.format(imports=imports)], env=env,
                          capture_output=True, text=True, check=True, timeout=120)
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_the_command_caps_malloc_arenas_before_its_imports_start_threads() -> None:
    assert arenas_after("import streams.cli") <= tuning.MALLOC_ARENAS
    # the same threads in a process that did not cap them: one arena each
    assert arenas_after("import numpy, polars") > tuning.MALLOC_ARENAS


def test_an_arena_count_set_in_the_environment_is_left_to_glibc(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert tuning.cap_malloc_arenas() is False
