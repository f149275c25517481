# SPDX-License-Identifier: GPL-3.0-or-later
"""The draft backend: no model, no GPU. The unknown region is filled by a classical push-pull fill
(a pyramid of weighted averages, wrapping across the 360° seam), so the whole pipeline runs anywhere
and the placement can be judged. Its output is labelled as a draft in the file and in the events."""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from blender_equi360.jobs.job import job_path
from blender_equi360.media.video import read_frames

from .generators import GeneratorReport

DRAFT_TITLE = "Equi360 DRAFT: classical fill, no model"


def _down(img: np.ndarray) -> np.ndarray:
    """Sum over 2×2 blocks (height and width even)."""
    h, w = img.shape[:2]
    return img.reshape(h // 2, 2, w // 2, 2, *img.shape[2:]).sum(axis=(1, 3))


def _up(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Double the size, then a [1 2 1]/4 smoothing that wraps across the seam (columns) and clamps at the
    poles (rows), so the fill has no blocks and no seam."""
    big = img.repeat(2, axis=0).repeat(2, axis=1)[: shape[0], : shape[1]]
    big = (np.roll(big, 1, axis=1) + 2 * big + np.roll(big, -1, axis=1)) / 4
    padded = np.concatenate([big[:1], big, big[-1:]], axis=0)
    return (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4


@njit(parallel=True, cache=True, nogil=True)
def _block_sums(reference_rgb, known, scale, colour, weight):
    """``colour`` (h, w, 3) and ``weight`` (h, w), float32: the sums of ``reference·known`` and ``known`` over
    each ``scale``×``scale`` block of the full-size frame (the first steps of the fill's pyramid, in one pass)."""
    for by in prange(weight.shape[0]):
        for bx in range(weight.shape[1]):
            total_w = np.float32(0.0)
            total = np.zeros(3, np.float32)
            for y in range(by * scale, by * scale + scale):
                for x in range(bx * scale, bx * scale + scale):
                    k = known[y, x]
                    total_w += k
                    for c in range(3):
                        total[c] += np.float32(reference_rgb[y, x, c]) * k
            weight[by, bx] = total_w
            for c in range(3):
                colour[by, bx, c] = total[c]


@njit(parallel=True, cache=True, nogil=True)
def _doubled_over_reference(half, reference_rgb, known, out):
    """``out`` (uint8) = ``rint(known·reference + (1 − known)·up)``, float32, where ``up`` is :func:`_up` of
    ``half`` to the reference's size (twice as large), computed a pixel at a time."""
    height, width = known.shape
    two, four, one = np.float32(2.0), np.float32(4.0), np.float32(1.0)
    for y in prange(height):
        above, row, below = max(y - 1, 0) // 2, y // 2, min(y + 1, height - 1) // 2
        for x in range(width):
            left, middle, right = ((x - 1) % width) // 2, x // 2, ((x + 1) % width) // 2
            k = known[y, x]
            for c in range(3):
                a = (half[above, left, c] + two * half[above, middle, c] + half[above, right, c]) / four
                b = (half[row, left, c] + two * half[row, middle, c] + half[row, right, c]) / four
                d = (half[below, left, c] + two * half[below, middle, c] + half[below, right, c]) / four
                up = (a + two * b + d) / four
                value = k * np.float32(reference_rgb[y, x, c]) + (one - k) * up
                out[y, x, c] = np.uint8(min(max(np.rint(value), np.float32(0)), np.float32(255)))


def push_pull_fill(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill where ``known`` (float weights 0..1, shape H×W) is below 1 from the known pixels around it.

    Push: halve the image repeatedly, summing colour×weight and weight. Pull: from the coarsest level
    down, each level's own average where it has data, blended with the upsampled coarser result where
    it has little. Known pixels come back unchanged."""
    colour = rgb.astype(np.float32) * known[..., None]
    weight = known.astype(np.float32)
    levels = [(colour, weight)]
    while min(weight.shape) >= 4 and weight.shape[0] % 2 == 0 and weight.shape[1] % 2 == 0:
        colour, weight = _down(colour), _down(weight)
        levels.append((colour, weight))
    colour, weight = levels[-1]
    total = weight.sum()
    mean = colour.reshape(-1, 3).sum(axis=0) / total if total > 0 else np.zeros(3, np.float32)
    filled = np.where(weight[..., None] > 0, colour / np.maximum(weight, 1e-6)[..., None], mean)
    for colour, weight in reversed(levels[:-1]):
        coarse = _up(filled, weight.shape)
        trust = np.minimum(weight, 1.0)[..., None]
        average = colour / np.maximum(weight, 1e-6)[..., None]
        filled = trust * average + (1 - trust) * coarse
    return np.clip(np.rint(filled), 0, 255).astype(np.uint8)


def _blur_columns(values: np.ndarray, weights: np.ndarray, radius: int) -> np.ndarray:
    """Weighted box blur along the width of (W, C) values, wrapping across the seam."""
    kernel = np.ones(2 * radius + 1, np.float32)
    def wrap_conv(a):
        padded = np.concatenate([a[-radius:], a, a[:radius]])
        return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(a.shape[1])], axis=1)
    total = wrap_conv(values * weights[:, None])
    norm = wrap_conv(weights[:, None])
    return total / np.maximum(norm, 1e-6)


def extend_to_sphere(rgb: np.ndarray, known: np.ndarray, rows: int = 4) -> np.ndarray:
    """Fill everything outside ``known`` (boolean H×W) from the plate: each column's top colours fade up
    to one zenith colour and its bottom colours down to one nadir colour (sky stays above the horizon,
    ground below, and each pole is a single colour, as it is a single point); columns the plate never
    reaches are interpolated around the sphere between the plate's two sides."""
    height, width = known.shape
    has = known.any(axis=0)
    if not has.any():
        return rgb.astype(np.float32)
    cols = np.arange(width)
    first = np.argmax(known, axis=0)
    last = height - 1 - np.argmax(known[::-1], axis=0)
    top = rgb[np.clip(first[None] + np.arange(rows)[:, None], 0, height - 1), cols].mean(axis=0)
    bottom = rgb[np.clip(last[None] - np.arange(rows)[:, None], 0, height - 1), cols].mean(axis=0)
    radius = max(1, width // 48)  # soften per-column detail: the stretch would draw it as streaks
    top, bottom = _blur_columns(top, has * 1.0, radius), _blur_columns(bottom, has * 1.0, radius)
    zenith, nadir = top[has].mean(axis=0), bottom[has].mean(axis=0)

    row = np.arange(height, dtype=np.float32)[:, None]
    up = np.clip((first[None] - row) / np.maximum(first[None], 1), 0, 1)[..., None]   # 0 at the plate, 1 at the pole
    down = np.clip((row - last[None]) / np.maximum(height - 1 - last[None], 1), 0, 1)[..., None]
    out = rgb.astype(np.float32)
    out = np.where(up > 0, (1 - up) * top[None] + up * zenith, out)
    out = np.where(down > 0, (1 - down) * bottom[None] + down * nadir, out)

    # Columns the plate never reaches: interpolate between the nearest covered columns on each side.
    covered = np.flatnonzero(has)
    right_idx = np.searchsorted(covered, cols) % covered.size
    left_idx = (right_idx - 1) % covered.size
    right, left = covered[right_idx], covered[left_idx]
    gap = (right - left) % width
    t = np.where(gap > 0, ((cols - left) % width) / np.maximum(gap, 1), 0.0)[None, :, None]
    around = (1 - t) * out[:, left] + t * out[:, right]
    return np.where(has[None, :, None], out, around)


def fill_frame(reference_rgb: np.ndarray, mask_gray: np.ndarray, scale: int = 4) -> np.ndarray:
    """One draft frame: the reference where the mask is black; elsewhere the plate extended over the
    sphere and smoothed. The fill is smooth, so it is computed at 1/``scale`` size (``scale`` a power of 2;
    the frame's sides multiples of it); the full-size steps are compiled loops (numba)."""
    height, width = mask_gray.shape
    known = 1.0 - mask_gray.astype(np.float32) / np.float32(255.0)
    weight = np.empty((height // scale, width // scale), np.float32)
    colour = np.empty((*weight.shape, 3), np.float32)
    _block_sums(reference_rgb, known, scale, colour, weight)
    inside = weight >= 0.5 * scale * scale
    average = colour / np.maximum(weight, 1e-6)[..., None]
    fill = extend_to_sphere(average, inside)
    # Push-pull with a small uniform weight trusts each level little: a gentle blur that wraps.
    fill = push_pull_fill(fill, np.full(inside.shape, 0.05, np.float32)).astype(np.float32)
    while fill.shape[0] * 2 < height:
        fill = _up(fill, (fill.shape[0] * 2, fill.shape[1] * 2)).astype(np.float32)
    out = np.empty_like(reference_rgb)
    _doubled_over_reference(np.ascontiguousarray(fill), reference_rgb, known, out)
    return out


class DraftGenerator:
    """The draft as the engine's window generator: each frame is filled on its own, so it needs no
    conditioning; the windows' crossfade has nothing to smooth."""
    title = DRAFT_TITLE

    def __init__(self, job_dir, job, channel):
        self.mask_path, self.channel, self.mask = job_path(job_dir, job.mask), channel, None

    def prepare(self) -> None:
        self.mask = next(read_frames(self.mask_path, "gray"))

    def generate(self, window, frames, condition, seed):
        started = time.monotonic()
        for k, frame in enumerate(frames[:window.frames], 1):
            self.channel.check_cancel()
            filled = fill_frame(frame, self.mask)
            self.channel.progress("draft", k, window.frames, started)
            yield filled

    def report(self) -> GeneratorReport:
        return {"peak_vram_gb": None, "memory_plan_gb": None}

    def close(self) -> None:
        pass


if __name__ == "__main__":  # python -m engine.draft: compile the draft's loops now (make test does, first)
    fill_frame(np.zeros((64, 128, 3), np.uint8), np.full((64, 128), 255, np.uint8))
