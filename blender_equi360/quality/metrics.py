"""Image-quality measures shared by the tests, the benchmarks and the score command."""

from __future__ import annotations

import math

import numpy as np

from ..media.images import luma


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


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Structural similarity of two images' luma (Wang et al. 2004: Gaussian window σ 1.5, K1 0.01,
    K2 0.03), averaged over the image away from its border."""
    return float(ssim_map(a, b, peak)[SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER].mean())


SSIM_BORDER = 5  # pixels of ssim_map whose window reaches past the image's edge


def ssim_map(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """The SSIM index at every pixel (float64, the images' size; see :func:`ssim`)."""
    x, y = luma(a).astype(np.float64), luma(b).astype(np.float64)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_x, mu_y = _gaussian(x), _gaussian(y)
    var_x = _gaussian(x * x) - mu_x ** 2
    var_y = _gaussian(y * y) - mu_y ** 2
    cov = _gaussian(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def _gaussian(image: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-t * t / (2 * sigma * sigma))
    kernel /= kernel.sum()
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel))
    return out
