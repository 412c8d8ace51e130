"""Child processes the tools start (a broker, a worker, Prometheus): stopping them."""

from __future__ import annotations

import subprocess

__all__ = ["stop_process"]


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM (a worker leaves its group and commits; a broker flushes), then SIGKILL if
    it is still running after ``grace_s`` seconds; reaped either way. Nothing to do for a
    process that is gone already or ``None``.

    >>> import sys
    >>> p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    >>> stop_process(p, grace_s=10)
    >>> p.poll() is not None
    True
    """
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
