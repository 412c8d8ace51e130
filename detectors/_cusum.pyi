"""Types of the compiled inner loop of :mod:`detectors.sequential` (``_cusum.c``)."""

import numpy as np

ABI: int

def scan_bank(x: np.ndarray, groups: tuple[tuple[object, ...], ...], seen: int,
              marks: np.ndarray, tie: float, mark_j: np.ndarray, mark_s: np.ndarray,
              mark_h: np.ndarray, end_top: np.ndarray, end_arg: np.ndarray,
              fills: np.ndarray) -> tuple[int, int, int]: ...
