"""The source's plate laid onto a delivery canvas of any size, at the density each canvas pixel needs.

A perspective picture packs more pixels per degree towards its edges (1/cos² of the angle off its axis:
2.4× at the sides of a 100° picture), so one delivery canvas can be finer than the source in the middle
of the plate and coarser at its sides: a 1920-px plate at 100° on a 7680×3840 canvas is enlarged 1.5× in
the middle and reduced 1.6× at the sides. The sampling is chosen per canvas pixel from its local scale
``s``, the source pixels one canvas pixel spans (in its longer direction):

- **enlarging** (s ≤ 1): a Catmull-Rom interpolation of the source at the pixel's centre. Averaging
  samples over the pixel would blur what the source has.
- **reducing** (s ≥ 1.5): the mean of 2×2 bilinear samples inside the pixel, taken from a copy of the
  source reduced (swscale's Lanczos) to between 1 and 1/√2 times the density of those samples. The
  copies form a pyramid in √2 steps, so the prefilter follows the density across the plate instead of
  one average for all of it.
- in between, a blend of the two, so that no line marks where one ends and the other begins.

Measured on the plate round trip (``score``, docs/QUALITY.md): a 956×400 city render delivered at
3840×1920 comes back at 46.1 dB stored losslessly, against 41.1 dB with 2×2 samples from one prefiltered
plate; at 1024×512, 39.0 against 38.2.
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry import kernels
from ..geometry.camera import Camera
from ..geometry.projection import (
    Lens,
    PlateCrop,
    bilinear_taps,
    catmull_rom,
    footprint_rows,
    lonlat_to_direction,
    pixel_to_lonlat,
)
from ..jobs.canvas import CanvasSize
from ..jobs.errors import Equi360Error
from ..media.video import PlanarResizer

ENLARGE_UP_TO, REDUCE_FROM = 1.0, 1.5  # local scale s: Catmull-Rom up to 1, 2×2 samples from 1.5, a blend between
LEVEL_STEP = math.sqrt(2.0)             # density ratio between neighbouring pyramid levels
PYRAMID_FILTER = "LANCZOS"              # swscale's: 0.4-0.9 dB more than its area filter where the plate is reduced
SUBSAMPLES = ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25))  # inside a canvas pixel, in pixels
_ROW_BLOCK = 32                         # canvas rows per block while the taps are worked out: bounds memory


class _Taps:
    """One way of sampling, for the canvas pixels that use it:
    ``value[dst[p]] = Σₜ weight[p, t] · pyramid[index[p, t]]``."""

    def __init__(self):
        self.dst, self.index, self.weight = [], [], []

    def add(self, dst: np.ndarray, index: np.ndarray, weight: np.ndarray) -> None:
        if dst.size:
            self.dst.append(dst)
            self.index.append(index.astype(np.int32))
            self.weight.append(weight.astype(np.float32))

    def freeze(self) -> "_Taps":
        if self.dst:  # a pixel's taps side by side in memory: (n, 16)
            self.dst = np.concatenate(self.dst)
            self.index = np.ascontiguousarray(np.concatenate(self.index, axis=1).T)
            self.weight = np.ascontiguousarray(np.concatenate(self.weight, axis=1).T)
        else:  # typed empty arrays: the compiled loops take them as they take full ones
            self.dst = np.zeros(0, np.intp)
            self.index, self.weight = np.zeros((0, 16), np.int32), np.zeros((0, 16), np.float32)
        return self

    def accumulate(self, pyramid: np.ndarray, out: np.ndarray) -> None:
        if len(self.dst):
            kernels.gather_taps(pyramid, self.dst, self.index, self.weight, out)


class PlateSampler:
    """Where and how each delivery-canvas pixel of the plate's footprint samples the source's window, worked
    out once per job; :meth:`project` then lays one frame's plate (the window at the source's own size).

    ``rows``: the canvas rows the plate reaches; ``mask``: the canvas-sized uint8 mask, 255 where the
    plate is absent, 0 where it covers a pixel, in between for pixels it covers in part."""

    def __init__(self, camera: Camera, window: PlateCrop, size: CanvasSize):
        self.source_size = (max(2, round(window.width)), max(2, round(window.height)))
        native_w, native_h = self.source_size
        lens = Lens(camera, window)
        first, end = footprint_rows(lens, size)
        self.levels = _level_sizes(self.source_size)
        self.offsets = np.concatenate([[0], np.cumsum([w * h for w, h in self.levels])])
        self.used: set[int] = set()
        enlarge, reduce = _Taps(), _Taps()
        coverage = np.zeros((end - first, size.width), np.float32)
        cols = np.arange(size.width, dtype=np.float64)
        to_native = (native_w / window.width, native_h / window.height)

        for row0 in range(first, end, _ROW_BLOCK):
            rows = np.arange(row0, min(row0 + _ROW_BLOCK, end), dtype=np.float64)
            subs = [_window_position(lens, cols[None, :] + dx, rows[:, None] + dy, size, to_native)
                    for dx, dy in SUBSAMPLES]
            inside = np.mean([_inside(u, v, self.source_size) for u, v in subs], axis=0)
            coverage[row0 - first: row0 - first + len(rows)] = inside
            flat = np.flatnonzero(inside > 0)
            if flat.size == 0:
                continue
            su = np.stack([u.ravel()[flat] for u, _ in subs])  # (4, n) native window coordinates
            sv = np.stack([v.ravel()[flat] for _, v in subs])
            scale = _local_scale(su, sv)
            dst = flat + (row0 - first) * size.width
            blend = np.clip((scale - ENLARGE_UP_TO) / (REDUCE_FROM - ENLARGE_UP_TO), 0.0, 1.0)
            sharp = blend < 1
            if sharp.any():
                self.used.add(0)
                index, weight = _catmull_rom_taps(su[:, sharp].mean(axis=0), sv[:, sharp].mean(axis=0),
                                                  self.levels[0])
                enlarge.add(dst[sharp], index, weight * (1 - blend[sharp]))
            averaged = blend > 0
            if averaged.any():
                level = _pyramid_level(scale[averaged], len(self.levels))
                index, weight = self._subsample_taps(su[:, averaged], sv[:, averaged], level)
                reduce.add(dst[averaged], index, weight * blend[averaged])
        if not self.used:
            raise Equi360Error("the plate lands nowhere on the canvas: check the camera angles")
        self._enlarge, self._reduce = enlarge.freeze(), reduce.freeze()
        self.rows = slice(first, end)
        self.mask = np.full((size.height, size.width), 255, np.uint8)
        self.mask[self.rows] = np.rint(255 * (1 - coverage)).astype(np.uint8)
        self._band = (end - first, size.width)
        self._pyramid = np.zeros((int(self.offsets[-1]), 3), np.float32)
        self._slots = [_slots(taps, (end - first) * size.width) for taps in (self._enlarge, self._reduce)]
        self._resizers = {k: PlanarResizer() for k in self.used}  # one per level: each keeps its scaler

    def _subsample_taps(self, su: np.ndarray, sv: np.ndarray, level: np.ndarray):
        """Bilinear taps of the 4 subsamples (4, n) at each pixel's pyramid level: (16, n) rows, weights."""
        native_w, native_h = self.source_size
        index = np.zeros((16, su.shape[1]), np.int64)
        weight = np.zeros((16, su.shape[1]))
        for k in np.unique(level):
            self.used.add(int(k))
            pick = level == k
            w, h = self.levels[k]
            for s in range(4):
                taps, weights = bilinear_taps(su[s, pick] * (w / native_w) - 0.5, sv[s, pick] * (h / native_h) - 0.5,
                                              w, h)
                index[4 * s: 4 * s + 4, pick] = taps + self.offsets[k]
                weight[4 * s: 4 * s + 4, pick] = weights / 4
        return index, weight

    def project(self, plate_bgra: np.ndarray) -> np.ndarray:
        """The plate's rows of the delivery canvas, RGB float32, from one frame's window at the source's size
        (BGRA uint8, as :func:`.video.decode_plates` gives it)."""
        self._fill_pyramid(plate_bgra)
        band = np.zeros((self._band[0] * self._band[1], 3), np.float32)
        self._enlarge.accumulate(self._pyramid, band)
        self._reduce.accumulate(self._pyramid, band)
        return band.reshape(*self._band, 3)

    def lay(self, planes, plate_bgra: np.ndarray, alpha: np.ndarray, out: np.ndarray) -> None:
        """``out`` (uint8 RGB) = the delivery canvas (its ``planes``, R, G, B, uint8) with this frame's plate laid
        over it: ``canvas + (plate − canvas)·alpha`` over the plate's rows (``alpha`` (rows, W) float32),
        rounded; :meth:`project` and that blend in one pass, which skips the plate where ``alpha`` is 0."""
        self._fill_pyramid(plate_bgra)
        enlarge, reduce = self._enlarge, self._reduce
        kernels.lay_plate(*planes, self.rows.start, alpha, self._pyramid, self._slots[0], enlarge.index,
                          enlarge.weight, self._slots[1], reduce.index, reduce.weight, out)

    def _fill_pyramid(self, plate_bgra: np.ndarray) -> None:
        native_w, native_h = self.source_size
        if plate_bgra.shape[:2] != (native_h, native_w):
            raise ValueError(f"expected a {native_w}x{native_h} plate, got {plate_bgra.shape}")
        for k in self.used:
            w, h = self.levels[k]
            level = self._pyramid[self.offsets[k]: self.offsets[k + 1]].reshape(h, w, 3)
            if k == 0:
                level[...] = plate_bgra[..., 2::-1]
            else:
                for c, plane in enumerate(self._resizers[k](plate_bgra, w, h, PYRAMID_FILTER, "bgra")):
                    level[..., c] = plane


def _slots(taps: _Taps, pixels: int) -> np.ndarray:
    """Each band pixel's column in ``taps``, −1 where it has none."""
    slots = np.full(pixels, -1, np.int32)
    slots[taps.dst] = np.arange(len(taps.dst), dtype=np.int32)
    return slots


def _pyramid_level(scale: np.ndarray, levels: int) -> np.ndarray:
    """The level whose pixels are 1 to √2 times as far apart as the 2×2 samples of a pixel of local scale
    ``scale`` (s/2 source pixels apart): a level √2 finer leaves a visible moiré on detail just past its
    reach (measured: bars 2.2 px apart come out with a 9-level ripple instead of 1.2)."""
    level = np.ceil(np.log(np.maximum(scale / 2, 1.0)) / math.log(LEVEL_STEP) - 1e-9)
    return np.minimum(level, levels - 1).astype(int)


def _level_sizes(native: tuple[int, int]) -> list[tuple[int, int]]:
    """The pyramid: the source's size, then √2 smaller each step, down to a few pixels."""
    sizes, k = [], 0
    while True:
        w, h = (max(2, round(n / LEVEL_STEP ** k)) for n in native)
        sizes.append((w, h))
        if min(w, h) <= 4:
            return sizes
        k += 1


def _window_position(lens: Lens, x: np.ndarray, y: np.ndarray, size: CanvasSize, to_native):
    """Canvas pixel-index positions → positions in the window at the source's size (edges at 0 and its
    width); behind the camera → NaN."""
    lon, lat = pixel_to_lonlat(x, y, size.width, size.height)
    u, v, in_front = lens.to_window(lonlat_to_direction(lon, lat))
    return np.where(in_front, u * to_native[0], np.nan), np.where(in_front, v * to_native[1], np.nan)


def _inside(u: np.ndarray, v: np.ndarray, native: tuple[int, int]) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (u >= 0) & (u <= native[0]) & (v >= 0) & (v <= native[1])


def _local_scale(su: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """Source pixels spanned by one canvas pixel, along the canvas direction in which it spans most, from
    the 4 subsamples' positions (SUBSAMPLES order: 0.5 px apart in each direction)."""
    du_dx, dv_dx = (su[1] + su[3] - su[0] - su[2]), (sv[1] + sv[3] - sv[0] - sv[2])  # /2 samples, /0.5 px
    du_dy, dv_dy = (su[2] + su[3] - su[0] - su[1]), (sv[2] + sv[3] - sv[0] - sv[1])
    scale = np.maximum(np.hypot(du_dx, dv_dx), np.hypot(du_dy, dv_dy))
    return np.nan_to_num(scale, nan=REDUCE_FROM)


def _catmull_rom_taps(u: np.ndarray, v: np.ndarray, size: tuple[int, int]):
    """4×4 Catmull-Rom taps (16, n) of the source at window positions u, v, clamped at its edges."""
    w, h = size
    x, y = np.nan_to_num(u) - 0.5, np.nan_to_num(v) - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    wx, wy = catmull_rom(x - x0), catmull_rom(y - y0)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    index = np.empty((16, u.size), np.int64)
    weight = np.empty((16, u.size), np.float32)
    for j in range(4):
        row = np.clip(y0 + j - 1, 0, h - 1) * w
        for i in range(4):
            index[4 * j + i] = row + np.clip(x0 + i - 1, 0, w - 1)
            weight[4 * j + i] = wx[i] * wy[j]
    return index, weight
