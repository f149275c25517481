"""Image-quality measures shared by the tests, the benchmarks and (later) the score command."""

from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0, where: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB between two images of the same shape (optionally inside a mask)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if where is not None:
        diff = diff[where]
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def mean_abs_error(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(np.mean(diff[where] if where is not None else diff))
