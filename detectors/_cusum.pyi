"""Types of the compiled inner loop of :mod:`detectors.sequential` (``_cusum.c``)."""

import numpy as np

ABI: int

def scan(x: np.ndarray, table: np.ndarray, h: np.ndarray, s: np.ndarray,
         zero_at: np.ndarray, partial: np.ndarray, block: int, fill: int, base: int,
         mark_rows: np.ndarray, marked: np.ndarray, mark_top: np.ndarray,
         mark_arg: np.ndarray, tie: float, s_cross: np.ndarray, last_zero: np.ndarray,
         inc: np.ndarray) -> tuple[int, int, float, int]: ...
