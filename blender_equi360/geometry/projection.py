"""Flat plate ↔ equirect canvas geometry, and the fast per-frame projection.

The mapping from a plate to the canvas depends only on the camera, the plate window and the canvas
size, so :class:`PlateMapping` computes it once (inverse mapping from every canvas pixel centre, in
row blocks so memory stays small) and keeps, for the canvas pixels inside the footprint only, the
four bilinear taps and their 8-bit weights. Projecting a frame is then four gathers and a few integer
operations on those pixels: each plate pixel is held as four 16-bit lanes of one uint64, so one
multiply-add blends all channels at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..jobs.canvas import CanvasSize
from ..jobs.errors import Equi360Error
from .camera import Camera

_ROW_BLOCK = 64  # canvas rows per block while building a mapping: bounds its memory
_LANE_MASK = np.uint64(0x00FF00FF00FF00FF)
_COLOUR_LANES = np.uint64(0x000000FF00FF00FF)  # the three colour lanes; the 4th (alpha) cleared
_LANE_HALF = np.uint64(0x0080008000800080)  # +0.5 in every lane after a ×256 weight: rounds, not truncates
_EIGHT = np.uint64(8)


@dataclass(frozen=True)
class PlateCrop:
    """The part of the source picture used as the plate: ``(x, y, width, height)`` in source pixels,
    inside a picture of ``picture_width`` × ``picture_height`` (the frame without letterbox bars)."""

    x: float
    y: float
    width: float
    height: float
    picture_width: float
    picture_height: float

    @classmethod
    def whole(cls, width: float, height: float) -> "PlateCrop":
        return cls(0.0, 0.0, width, height, width, height)


def pixel_to_lonlat(x, y, width: int, height: int):
    """Canvas pixel-index coordinates (centres at integers) → (lon, lat) in radians."""
    lon = ((np.asarray(x, dtype=np.float64) + 0.5) / width - 0.5) * 2.0 * math.pi
    lat = (0.5 - (np.asarray(y, dtype=np.float64) + 0.5) / height) * math.pi
    return lon, lat


def lonlat_to_pixel(lon, lat, width: int, height: int):
    """(lon, lat) in radians → canvas pixel-index coordinates (centres at integers)."""
    x = (np.asarray(lon, dtype=np.float64) / (2.0 * math.pi) + 0.5) * width - 0.5
    y = (0.5 - np.asarray(lat, dtype=np.float64) / math.pi) * height - 0.5
    return x, y


def lonlat_to_direction(lon, lat) -> np.ndarray:
    """Unit vectors (..., 3) in the canvas frame (forward, right, up)."""
    lon, lat = np.broadcast_arrays(lon, lat)
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def direction_to_lonlat(d: np.ndarray):
    lon = np.arctan2(d[..., 1], d[..., 0])
    lat = np.arctan2(d[..., 2], np.hypot(d[..., 0], d[..., 1]))
    return lon, lat


class Lens:
    """Pinhole intrinsics of a window: canvas-frame directions ↔ window pixel coordinates (edges at 0 and
    width, pixel centres at +0.5)."""

    def __init__(self, camera: Camera, window: PlateCrop):
        self.rotation = camera.rotation()
        self.focal = camera.focal_px(window.picture_width)
        # A lens shifted right/up shows more of the right/top: the optical axis lands left/below centre.
        self.cx = window.picture_width / 2.0 - camera.shift_x * window.picture_width - window.x
        self.cy = window.picture_height / 2.0 + camera.shift_y * window.picture_width - window.y
        self.width = window.width
        self.height = window.height

    def to_window(self, d: np.ndarray):
        """Directions (..., 3) → (u, v, in_front)."""
        local = d @ self.rotation  # rows · columns(forward, right, up) = components in camera axes
        forward = local[..., 0]
        in_front = forward > 1e-9
        safe = np.where(in_front, forward, 1.0)
        u = self.cx + self.focal * local[..., 1] / safe
        v = self.cy - self.focal * local[..., 2] / safe
        return u, v, in_front

    def to_direction(self, u, v) -> np.ndarray:
        local = np.stack(
            [np.ones_like(u), (u - self.cx) / self.focal, -(v - self.cy) / self.focal], axis=-1
        )
        local /= np.linalg.norm(local, axis=-1, keepdims=True)
        return local @ self.rotation.T


def prefiltered_plate_size(camera: Camera, window: PlateCrop, size: CanvasSize) -> tuple[int, int]:
    """Plate size after the area prefilter: the plate's pixels match the canvas's density averaged over
    the footprint (a 1920-px plate at 100° becomes ≈533 px on a 1920-wide canvas), never upscaled."""
    plate_hfov = 2.0 * math.atan(window.width / 2.0 / camera.focal_px(window.picture_width))
    target_w = size.width * plate_hfov / (2.0 * math.pi)
    scale = min(1.0, target_w / window.width)
    return max(2, round(window.width * scale)), max(2, round(window.height * scale))


class PlateMapping:
    """Where each canvas pixel of the footprint samples a plate of ``plate_size`` (the window, prefiltered).

    ``mask`` is the canvas-sized uint8 mask of the region to generate: 255 unknown, 0 known (values in
    between inside an inward feather band)."""

    def __init__(self, camera: Camera, window: PlateCrop, size: CanvasSize,
                 plate_size: tuple[int, int], feather_px: float = 0.0):
        plate_w, plate_h = plate_size
        if plate_w < 2 or plate_h < 2:
            raise Equi360Error(f"the plate is too small to project ({plate_w}x{plate_h} px)")
        self.size = size
        self.plate_size = plate_size
        lens = Lens(camera, window)
        sx_scale, sy_scale = plate_w / window.width, plate_h / window.height

        dst, taps, weights = [], [], []
        cols = np.arange(size.width)
        first_row, end_row = footprint_rows(lens, size)
        for row0 in range(first_row, end_row, _ROW_BLOCK):
            rows = np.arange(row0, min(row0 + _ROW_BLOCK, end_row))
            lon, lat = pixel_to_lonlat(cols[None, :], rows[:, None], size.width, size.height)
            u, v, in_front = lens.to_window(lonlat_to_direction(lon, lat))
            inside = in_front & (u >= 0) & (u <= lens.width) & (v >= 0) & (v <= lens.height)
            if not inside.any():
                continue
            flat = np.flatnonzero(inside)
            pu, pv = u.ravel()[flat] * sx_scale, v.ravel()[flat] * sy_scale  # prefiltered-plate coords
            t, w = bilinear_taps(pu - 0.5, pv - 0.5, plate_w, plate_h)
            if feather_px > 0:
                edge_distance = np.minimum.reduce([pu, plate_w - pu, pv, plate_h - pv])
                w = w * np.clip(edge_distance / feather_px, 0.0, 1.0)
            dst.append(flat + row0 * size.width)
            taps.append(t)
            weights.append(w)
        if not dst:
            raise Equi360Error("the plate lands nowhere on the canvas: check the camera angles")

        self.dst = np.concatenate(dst)
        self.taps = np.concatenate(taps, axis=1)
        self.weights = _quantise_weights(np.concatenate(weights, axis=1))
        coverage = self.weights.sum(axis=0, dtype=np.uint64)  # 256 = fully known
        mask = np.full(size.width * size.height, 255, dtype=np.uint8)
        mask[self.dst] = 255 - ((coverage * np.uint64(255) + np.uint64(128)) >> _EIGHT).astype(np.uint8)
        self.mask = mask.reshape(size.height, size.width)

        self._lanes = np.zeros((plate_w * plate_h, 4), dtype=np.uint16)
        self._canvas = np.zeros((size.height, size.width, 4), dtype=np.uint8)
        self._canvas_words = self._canvas.reshape(-1).view(np.uint32)

    @property
    def footprint_pixels(self) -> int:
        return int(self.dst.size)

    def project(self, plate: np.ndarray) -> np.ndarray:
        """Project one prefiltered plate (plate_h, plate_w, 4) uint8 onto the canvas.

        The channel order of the plate is kept (send BGRA in, get BGRA out; the 4th channel comes out 0).
        Returns the canvas (H, W, 4) uint8, a buffer reused by the next call; outside the footprint it is
        exactly 0."""
        plate_w, plate_h = self.plate_size
        if plate.shape != (plate_h, plate_w, 4) or plate.dtype != np.uint8:
            raise ValueError(f"expected a {plate_w}x{plate_h} 4-channel uint8 plate, got {plate.shape}")
        np.copyto(self._lanes, plate.reshape(-1, 4))  # contiguous widening copy: fast
        lanes = self._lanes.reshape(-1).view(np.uint64)
        lanes &= _COLOUR_LANES
        acc = lanes[self.taps[0]] * self.weights[0]
        for k in (1, 2, 3):
            acc += lanes[self.taps[k]] * self.weights[k]
        acc += _LANE_HALF
        acc >>= _EIGHT
        acc &= _LANE_MASK
        self._canvas_words[self.dst] = acc.view(np.uint16).reshape(-1, 4).astype(np.uint8).view(np.uint32)[:, 0]
        return self._canvas


def footprint_rows(lens: Lens, size: CanvasSize) -> tuple[int, int]:
    """The canvas rows the window can reach: from the latitudes along its border (a great-circle arc
    between border samples can bulge past them, hence the margin), or up to a pole it contains."""
    edge = np.linspace(0.0, 1.0, 257)
    u = np.concatenate([edge, np.ones_like(edge), edge, np.zeros_like(edge)]) * lens.width
    v = np.concatenate([np.zeros_like(edge), edge, np.ones_like(edge), edge]) * lens.height
    _, lat = direction_to_lonlat(lens.to_direction(u, v))
    top, bottom = lat.max(), lat.min()
    for pole in (1.0, -1.0):
        pu, pv, in_front = lens.to_window(np.array([0.0, 0.0, pole]))
        if in_front and 0 <= pu <= lens.width and 0 <= pv <= lens.height:
            top, bottom = (math.pi / 2, bottom) if pole > 0 else (top, -math.pi / 2)
    margin = 2
    first = int(np.floor(lonlat_to_pixel(0.0, top, size.width, size.height)[1])) - margin
    last = int(np.ceil(lonlat_to_pixel(0.0, bottom, size.width, size.height)[1])) + margin
    return max(first, 0), min(last + 1, size.height)


def bilinear_taps(sx: np.ndarray, sy: np.ndarray, width: int, height: int):
    """Flat indices of the 4 taps (4, N) and float weights (4, N) for sample positions in pixel-index
    coordinates (centres at integers), clamped to the plate."""
    sx = np.clip(sx, 0.0, width - 1.0)
    sy = np.clip(sy, 0.0, height - 1.0)
    x0 = np.minimum(np.floor(sx).astype(np.intp), width - 2)
    y0 = np.minimum(np.floor(sy).astype(np.intp), height - 2)
    fx, fy = sx - x0, sy - y0
    i00 = y0 * width + x0
    taps = np.stack([i00, i00 + 1, i00 + width, i00 + width + 1])
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    return taps, weights


def _quantise_weights(w: np.ndarray) -> np.ndarray:
    """Float weights (4, N) → uint64 weights in 1/256 whose sum per pixel is exactly round(256·Σw)."""
    total = np.rint(w.sum(axis=0) * 256.0)
    q = np.floor(w * 256.0)
    remainder = total - q.sum(axis=0)  # 0..3: hand it to the largest weights
    order = np.argsort(-(w * 256.0 - q), axis=0)
    for k in range(4):
        q[order[k], np.arange(q.shape[1])] += remainder > k
    return q.astype(np.uint64)


def equirect_to_perspective(canvas: np.ndarray, size_out: tuple[int, int], camera: Camera,
                            window: PlateCrop | None = None, cubic: bool = False) -> np.ndarray:
    """Render the view of ``camera`` from an equirect canvas (H, W, C): bilinear (or Catmull-Rom with
    ``cubic``), wrapping in longitude.

    ``size_out`` is (width, height) of the output; ``window`` places it inside the camera's picture
    (default: the whole picture of that size). Returns float32 (h, w, C) in the canvas's value range."""
    x, y = perspective_to_canvas(size_out, camera, window, canvas.shape[1], canvas.shape[0])
    return (sample_equirect_cubic if cubic else sample_equirect)(canvas, x, y)


def perspective_to_canvas(size_out: tuple[int, int], camera: Camera, window: PlateCrop | None, canvas_width: int,
                          canvas_height: int):
    """Where each pixel centre of a ``size_out`` view of ``window`` (default: the whole picture of that size)
    lands on a canvas, in pixel-index coordinates: (x, y), each (h, w) float64."""
    out_w, out_h = size_out
    window = window or PlateCrop.whole(out_w, out_h)
    lens = Lens(camera, window)
    u = (np.arange(out_w) + 0.5) * (window.width / out_w)
    v = (np.arange(out_h) + 0.5) * (window.height / out_h)
    lon, lat = direction_to_lonlat(lens.to_direction(*np.meshgrid(u, v)))
    return lonlat_to_pixel(lon, lat, canvas_width, canvas_height)


def sample_equirect(canvas: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of an equirect image at pixel-index coordinates, wrapping across the seam."""
    h, w = canvas.shape[:2]
    img = canvas.astype(np.float32).reshape(h, w, -1)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.floor(x).astype(np.intp)
    y0 = np.minimum(np.floor(y).astype(np.intp), h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    xa, xb = x0 % w, (x0 + 1) % w
    top = img[y0, xa] * (1 - fx) + img[y0, xb] * fx
    bottom = img[y0 + 1, xa] * (1 - fx) + img[y0 + 1, xb] * fx
    out = top * (1 - fy) + bottom * fy
    return out if canvas.ndim == 3 else out[..., 0]


def sample_equirect_cubic(canvas: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Catmull-Rom samples (4×4 taps) of an equirect image, wrapping across the seam, clamped at the poles.
    Sharper than bilinear at 1:1; measurements use it so that their own resampling costs little."""
    h, w = canvas.shape[:2]
    img = canvas.astype(np.float32).reshape(h, w, -1)
    y = np.clip(y, 0.0, h - 1.0)
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    wx, wy = catmull_rom(np.float32(1) * (x - x0)), catmull_rom(np.float32(1) * (y - y0))
    out = 0.0
    for j in range(4):
        rows = np.clip(y0 + j - 1, 0, h - 1)
        line = sum(img[rows, (x0 + i - 1) % w] * wx[i][..., None] for i in range(4))
        out = out + line * wy[j][..., None]
    return out if canvas.ndim == 3 else out[..., 0]


def catmull_rom(t: np.ndarray) -> list[np.ndarray]:
    t = t.astype(np.float32)
    t2, t3 = t * t, t * t * t
    return [(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2, (-3 * t3 + 4 * t2 + t) / 2, (t3 - t2) / 2]


def box_blur(image: np.ndarray, radius: int, wrap_width: bool = False) -> np.ndarray:
    """One separable box blur of (H, W) or (H, W, C) ``image`` over (2·radius+1)²; rows are edge-clamped,
    columns too unless ``wrap_width`` (an equirect canvas, whose left and right edges meet). float32."""
    out = np.asarray(image, dtype=np.float32)
    size = 2 * radius + 1
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)]
        padded = np.pad(out, pad, mode="wrap" if axis == 1 and wrap_width else "edge")
        cumulative = np.cumsum(padded, axis=axis, dtype=np.float64)
        cumulative = np.concatenate([np.zeros_like(np.take(cumulative, [0], axis=axis)), cumulative], axis=axis)
        n = out.shape[axis]
        out = ((np.take(cumulative, np.arange(size, size + n), axis=axis)
                - np.take(cumulative, np.arange(0, n), axis=axis)) / size).astype(np.float32)
    return out
