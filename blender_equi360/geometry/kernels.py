"""The finish's per-pixel loops, compiled (numba) and spread over all the machine's cores.

Each kernel does exactly the arithmetic the array formula beside its caller describes, in the same
precision and order (float32 where that formula is float32, float64 where it is float64; no fused
multiply-add), so the compiled finish gives the same bytes as the formulas it replaces
(``tests/test_kernels.py`` holds the formulas and checks each kernel against them).

Why numba: the finish runs these loops on every delivered pixel of every frame; as array expressions they
make a temporary per operator and run on one core (1 s per 3840×1920 frame, measured), while compiled
they make none and use every core. numba compiles the very same loops the formulas describe, so nothing
about the result changes, and the compiled code is cached on disk after the first run. Only the engine
imports this module (numba is among the engine's packages, not the add-on's).
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

# OpenMP's threads (numba's default where libgomp is found) are 1.5-2x faster on these loops than numba's own
# pool (measured on the pole repair), but by default they spin for a while after each loop, taking the cores
# from the generation running beside the finish (a quarter more CPU time over the long-clip tests): passive
# threads sleep at once. Read when numba starts its threads, so set before the first loop runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_HALF32 = np.float32(0.5)
_ZERO32 = np.float32(0.0)
_MAX32 = np.float32(255.0)
_ONE32 = np.float32(1.0)
_options = dict(parallel=True, cache=True, nogil=True)


@njit(**_options)
def tone_and_drift(frame, gain, offset, drift_a, drift_b, mix, out):
    """``out = clip(clip(frame·gain + offset, 0, 255) · drift + 0.5, 0, 255)`` as uint8: the tone in float32,
    the drift in float64, where ``drift = drift_a·(1 − mix) + drift_b·mix`` (two (H, W) float64 gain fields;
    ``mix`` 0 gives ``drift_a``)."""
    height, width = frame.shape[0], frame.shape[1]
    keep, take = 1.0 - mix, np.float64(mix)
    for y in prange(height):
        for x in range(width):
            # With mix 0 the blend is drift_a exactly (·1 + 0): the second field is not read at all.
            drift = drift_a[y, x] if mix == 0 else drift_a[y, x] * keep + drift_b[y, x] * take
            for c in range(3):
                toned = min(max(np.float32(frame[y, x, c]) * gain[c] + offset[c], _ZERO32), _MAX32)
                out[y, x, c] = np.uint8(min(max(np.float64(toned) * drift + 0.5, 0.0), 255.0))


@njit(**_options)
def toned_luma_cells(frame, gain, offset, rows, cols, out):
    """Add to ``out`` (rows, cols, float64) each cell's mean Rec. 709 luma of ``clip(frame·gain + offset, 0,
    255)``; the cells tile the frame's top-left ``rows·(H // rows)`` × ``cols·(W // cols)`` pixels."""
    cell_h, cell_w = frame.shape[0] // rows, frame.shape[1] // cols
    weights = (np.float32(0.2126), np.float32(0.7152), np.float32(0.0722))
    for row in prange(rows):
        for col in range(cols):
            total = 0.0
            for y in range(row * cell_h, (row + 1) * cell_h):
                line = np.float32(0.0)
                for x in range(col * cell_w, (col + 1) * cell_w):
                    luma = np.float32(0.0)
                    for c in range(3):
                        luma += min(max(np.float32(frame[y, x, c]) * gain[c] + offset[c], _ZERO32), _MAX32) \
                            * weights[c]
                    line += luma
                total += line
            out[row, col] += total / (cell_h * cell_w)


@njit(**_options)
def bilinear_rgb(image, x_left, x_right, row, fx, fy, out):
    """``out[p] = (a·(1 − fx) + b·fx)·(1 − fy) + (c·(1 − fx) + d·fx)·fy`` in float64 for each output pixel ``p``
    of the flat index arrays: a, b from ``image[row[p]]`` at columns ``x_left[p]``, ``x_right[p]``; c, d from the
    row below. ``image`` (H, W, 3) uint8, ``out`` (N, 3) float64."""
    for p in prange(out.shape[0]):
        y, xa, xb, wx, wy = row[p], x_left[p], x_right[p], fx[p], fy[p]
        for c in range(3):
            top = np.float64(np.float32(image[y, xa, c])) * (1 - wx) + np.float64(np.float32(image[y, xb, c])) * wx
            bottom = np.float64(np.float32(image[y + 1, xa, c])) * (1 - wx) \
                + np.float64(np.float32(image[y + 1, xb, c])) * wx
            out[p, c] = top * (1 - wy) + bottom * fy[p]


@njit(**_options)
def box_blur_rows(image, radius, out):
    """One pass of a box blur of width 2·radius + 1 down each column of ``image`` (H, W, C) float32, rows
    edge-clamped: cumulative float64 sums, differenced, divided, then float32 (``out``, same shape). Columns
    are taken in blocks, so each row of the image is read whole."""
    height, width, channels = image.shape
    size, block = 2 * radius + 1, 16
    for b in prange((width + block - 1) // block):
        first, end = b * block, min(b * block + block, width)
        cumulative = np.zeros((height + size, end - first, channels), np.float64)
        for k in range(height + 2 * radius):
            source = min(max(k - radius, 0), height - 1)
            for x in range(first, end):
                for c in range(channels):
                    cumulative[k + 1, x - first, c] = cumulative[k, x - first, c] + np.float64(image[source, x, c])
        for y in range(height):
            for x in range(first, end):
                for c in range(channels):
                    out[y, x, c] = np.float32((cumulative[y + size, x - first, c] - cumulative[y, x - first, c])
                                              / size)


@njit(**_options)
def soften_to_bgra(view, blurred, clean, out):
    """``out`` (BGRA uint8) = ``clip(view·(1 − clean) + blurred·clean + 0.5, 0, 255)``: ``view`` float64,
    ``blurred`` and ``clean`` float32 (their product float32), the sum float64; colour order reversed."""
    height, width = clean.shape
    for y in prange(height):
        for x in range(width):
            weight = clean[y, x]
            for c in range(3):
                value = view[y, x, c] * (_ONE32 - weight) + np.float64(blurred[y, x, c] * weight)
                out[y, x, 2 - c] = np.uint8(min(max(value + 0.5, 0.0), 255.0))
            out[y, x, 3] = 0


@njit(**_options)
def blend_projected_cap(frame, picture, dst, taps, weights, first_row, cap_weight, out):
    """Rows ``first_row …`` of ``out`` (uint8 RGB; may be ``frame`` itself) for one pole cap: the canvas pixel's
    value ``v`` (float32, from ``frame``) becomes ``clip(v·(1 − w) + p·w + 0.5, 0, 255)`` with ``w`` the cap's
    latitude weight of the row and ``p`` the picture (BGRA uint8, flat (N, 4)) projected with integer bilinear
    weights in 1/256, rounded (0 where the picture does not reach). ``dst``: the mapping's flat canvas
    indices, sorted."""
    width = frame.shape[1]
    for y in prange(first_row, first_row + cap_weight.shape[0]):
        w = cap_weight[y - first_row]
        p = np.searchsorted(dst, y * width)
        for x in range(width):
            reached = p < dst.shape[0] and dst[p] == y * width + x
            for c in range(3):
                projected = _ZERO32
                if reached:
                    total = np.uint64(128)
                    for k in range(4):
                        total += np.uint64(picture[taps[k, p], 2 - c]) * weights[k, p]
                    projected = np.float32((total >> np.uint64(8)) & np.uint64(0xFFFF))
                value = np.float32(frame[y, x, c]) * (_ONE32 - w) + projected * w
                out[y, x, c] = np.uint8(min(max(value + _HALF32, _ZERO32), _MAX32))
            if reached:
                p += 1


@njit(**_options)
def gather_taps(pyramid, dst, index, weight, band):
    """``band[dst[p]] += Σₜ pyramid[index[p, t]] · weight[p, t]`` (float32, taps added in order) for each
    pixel ``p``; ``dst`` has no repeats. ``pyramid`` (N, 3), ``band`` (M, 3), ``index`` and ``weight`` (n, taps)."""
    for p in prange(dst.shape[0]):
        total = _taps_sum(pyramid, index, weight, p)
        for c in range(3):
            band[dst[p], c] += total[c]


@njit(inline="always")
def _taps_sum(pyramid, index, weight, p):
    """Σₜ pyramid[index[p, t]] · weight[p, t] per channel, float32, the first product then each next added."""
    i, w = index[p, 0], weight[p, 0]
    r, g, b = pyramid[i, 0] * w, pyramid[i, 1] * w, pyramid[i, 2] * w
    for t in range(1, index.shape[1]):
        i, w = index[p, t], weight[p, t]
        r += pyramid[i, 0] * w
        g += pyramid[i, 1] * w
        b += pyramid[i, 2] * w
    return r, g, b


@njit(**_options)
def lay_plate(red, green, blue, first_row, alpha, pyramid, enlarge_slot, enlarge_index, enlarge_weight,
              reduce_slot, reduce_index, reduce_weight, out):
    """``out`` (uint8 RGB, (H, W, 3)) = the canvas (its planes ``red``, ``green``, ``blue``, (H, W) uint8) with the
    plate laid over rows ``first_row …``: there each value ``v`` becomes ``clip(v + (plate − v)·alpha + 0.5, 0,
    255)`` (float32), where the plate is the sum, in float32 and in this order, of the pixel's enlarging taps
    then its reducing taps (:func:`gather_taps`; a pixel's slot in each list, −1 where it has none). Where
    ``alpha`` is 0 the value stays ``v``, as the formula gives, without working out the plate."""
    height, width = red.shape
    rows = alpha.shape[0]
    for y in prange(height):
        band_y = y - first_row
        for x in range(width):
            canvas = (red[y, x], green[y, x], blue[y, x])
            a = alpha[band_y, x] if 0 <= band_y < rows else _ZERO32
            if a == _ZERO32:
                for c in range(3):
                    out[y, x, c] = canvas[c]
                continue
            pixel = band_y * width + x
            e, r = enlarge_slot[pixel], reduce_slot[pixel]
            plate = (_ZERO32, _ZERO32, _ZERO32)
            if e >= 0:
                sampled = _taps_sum(pyramid, enlarge_index, enlarge_weight, e)
                plate = (plate[0] + sampled[0], plate[1] + sampled[1], plate[2] + sampled[2])
            if r >= 0:
                sampled = _taps_sum(pyramid, reduce_index, reduce_weight, r)
                plate = (plate[0] + sampled[0], plate[1] + sampled[1], plate[2] + sampled[2])
            for c in range(3):
                v = np.float32(canvas[c])
                out[y, x, c] = np.uint8(min(max(v + (plate[c] - v) * a + _HALF32, _ZERO32), _MAX32))


def warm_up() -> None:
    """Compile every loop now (the first time on a machine: about 20 s; later runs load them from the cache
    beside this file), for each kind of array the finish passes."""
    frame, out = np.zeros((8, 16, 3), np.uint8), np.zeros((8, 16, 3), np.uint8)
    gain, drift, f32 = np.ones(3, np.float32), np.ones((8, 16)), np.float32(0)
    tone_and_drift(frame, gain, gain, drift, drift, f32, out)
    toned_luma_cells(frame, gain, gain, 2, 2, np.zeros((2, 2)))
    view, flat = np.zeros((4, 3)), np.zeros(4, np.intp)
    bilinear_rgb(frame, flat, flat, flat, np.zeros(4), np.zeros(4), view)
    image = np.zeros((8, 8, 3), np.float32)
    box_blur_rows(image, 1, image.copy())
    box_blur_rows(image.transpose(1, 0, 2), 1, image.copy().transpose(1, 0, 2))
    soften_to_bgra(np.zeros((8, 8, 3)), image, np.zeros((8, 8), np.float32), np.zeros((8, 8, 4), np.uint8))
    blend_projected_cap(frame, np.zeros((4, 4), np.uint8), np.zeros(0, np.intp), np.zeros((4, 0), np.intp),
                        np.zeros((4, 0), np.uint64), 0, np.ones(2, np.float32), out)
    taps, weights = np.zeros((1, 16), np.int32), np.zeros((1, 16), np.float32)
    pyramid, band = np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)
    gather_taps(pyramid, np.zeros(1, np.intp), taps, weights, band)
    slots, plane = np.full(8 * 16, -1, np.int32), np.zeros((8, 20), np.uint8)[:, 2:18]
    lay_plate(plane, plane, plane, 0, np.zeros((2, 16), np.float32), pyramid, slots, taps, weights, slots, taps,
              weights, np.zeros((8, 16, 3), np.uint8))


if __name__ == "__main__":  # python -m blender_equi360.geometry.kernels: compile them all (make test does, first)
    warm_up()
