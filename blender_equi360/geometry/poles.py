"""Pole repair: the model's known weakness is the top and bottom caps, which come out smeared (the whole
top row of the equirect is one point on the sphere, so any variation along it becomes radial streaks) or
repeating.

Each cap is seen as it really is, through a perspective view looking straight up (or down): there the
pole is the centre of an ordinary picture. The view is cleaned with a blur whose strength grows towards the
pole (the detail the equirect cannot hold there anyway), projected back onto the canvas, and blended in
over a band of latitude, so the repaired cap meets the rest without a ring.

The sampling positions, weights and projections are worked out once per canvas size; each frame then runs
the compiled loops of :mod:`.kernels` (bilinear view, a box blur twice, the blend back), which do the arithmetic
of the array formulas ``tests/test_kernels.py`` keeps.
"""

from __future__ import annotations

import numpy as np

from ..jobs.canvas import CanvasSize
from . import kernels
from .camera import Camera
from .projection import PlateCrop, PlateMapping, perspective_to_canvas

CAP_DEG = 20.0          # the repaired cap reaches this far from the pole...
BLEND_DEG = 8.0         # ...blending in over the outer part of it
CLEAN_DEG = 12.0        # the blur fades out this far from the pole
VIEW_MARGIN_DEG = 2.0


class PoleRepair:
    """Built once per canvas size (the projections are precomputed), then applied to each frame."""

    def __init__(self, size: CanvasSize, cap_deg: float = CAP_DEG, blend_deg: float = BLEND_DEG):
        self.size, self.cap_deg = size, cap_deg
        hfov = 2 * (cap_deg + VIEW_MARGIN_DEG)
        # A view pixel is half a canvas row: the view carries all the cap's detail.
        self.view_px = 2 * int(np.ceil(hfov * size.height / 180.0))
        self.cameras = {"top": Camera(hfov, pitch_deg=90.0), "bottom": Camera(hfov, pitch_deg=-90.0)}
        window = PlateCrop.whole(self.view_px, self.view_px)
        self.mappings = {side: PlateMapping(cam, window, size, (self.view_px, self.view_px))
                         for side, cam in self.cameras.items()}
        self.rows = int(np.ceil(size.height * cap_deg / 180.0))
        # Latitude weight of the repaired cap: 1 near the pole, 0 at the cap's edge.
        distance = (np.arange(self.rows) + 0.5) * 180.0 / size.height  # degrees from the pole
        weight = np.clip((cap_deg - distance) / blend_deg, 0.0, 1.0)
        self.weight = (weight * weight * (3 - 2 * weight)).astype(np.float32)  # smoothstep, per row
        # Blur strength in the view: strongest at the pole, none beyond CLEAN_DEG.
        c = (np.arange(self.view_px) + 0.5) - self.view_px / 2
        radius_deg = np.degrees(np.arctan(np.hypot(*np.meshgrid(c, c)) /
                                          self.cameras["top"].focal_px(self.view_px)))
        self.clean = np.clip(1.0 - radius_deg / CLEAN_DEG, 0.0, 1.0).astype(np.float32)
        self.blur_radius = max(2, self.view_px // 12)
        self.view_taps = {side: _bilinear_taps(cam, self.view_px, size) for side, cam in self.cameras.items()}

    def apply(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``frame`` (H, W, 3) uint8 at this canvas size with both caps repaired: a copy, or ``out`` (which may be
        ``frame`` itself: each cap is read whole before it is written, and the caps do not overlap)."""
        if out is None:
            out = frame.copy()
        elif out is not frame:
            np.copyto(out, frame)
        view = np.empty((self.view_px * self.view_px, 3), np.float64)
        picture = np.empty((self.view_px, self.view_px, 4), np.uint8)
        for side, mapping in self.mappings.items():
            # The view of the cap (bilinear, float64), softened towards the pole, as the picture to project back.
            kernels.bilinear_rgb(frame, *self.view_taps[side], view)
            square = view.reshape(self.view_px, self.view_px, 3)
            kernels.soften_to_bgra(square, _blur_twice(square.astype(np.float32), self.blur_radius), self.clean,
                                   picture)
            first_row = 0 if side == "top" else self.size.height - self.rows
            weight = self.weight if side == "top" else self.weight[::-1].copy()
            kernels.blend_projected_cap(frame, picture.reshape(-1, 4), mapping.dst, mapping.taps, mapping.weights,
                                        first_row, weight, out)
        return out


def _bilinear_taps(camera: Camera, view_px: int, size: CanvasSize):
    """Where each view pixel samples the canvas, as :func:`.kernels.bilinear_rgb` takes it: the columns left
    and right (wrapping across the seam), the row above (the row below is the next) and the weights."""
    x, y = (a.ravel() for a in perspective_to_canvas((view_px, view_px), camera, None, size.width, size.height))
    y = np.clip(y, 0.0, size.height - 1.0)
    x0 = np.floor(x).astype(np.intp)
    y0 = np.minimum(np.floor(y).astype(np.intp), size.height - 2)
    return x0 % size.width, (x0 + 1) % size.width, y0, x - x0, y - y0


def _blur_twice(image: np.ndarray, radius: int) -> np.ndarray:
    """A box blur (2·radius + 1 wide, edges clamped) applied twice: close to a Gaussian. float32."""
    scratch, out = np.empty_like(image), np.empty_like(image)
    for _ in range(2):  # down the columns, then along the rows (the same loop on the transposed views)
        kernels.box_blur_rows(image, radius, scratch)
        kernels.box_blur_rows(scratch.transpose(1, 0, 2), radius, out.transpose(1, 0, 2))
        image = out
    return out
