"""Pole repair: the model's known weakness is the top and bottom caps, which come out smeared (the whole
top row of the equirect is one point on the sphere, so any variation along it becomes radial streaks) or
repeating.

Each cap is seen as it really is, through a perspective view looking straight up (or down): there the
pole is the centre of an ordinary picture. The view is cleaned with a blur whose strength grows towards the
pole (the detail the equirect cannot hold there anyway), projected back onto the canvas, and blended in
over a band of latitude, so the repaired cap meets the rest without a ring.
"""

from __future__ import annotations

import numpy as np

from ..jobs.canvas import CanvasSize
from .camera import Camera
from .projection import PlateCrop, PlateMapping, box_blur, equirect_to_perspective

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
        self.weight = (weight * weight * (3 - 2 * weight)).astype(np.float32)[:, None, None]  # smoothstep
        # Blur strength in the view: strongest at the pole, none beyond CLEAN_DEG.
        c = (np.arange(self.view_px) + 0.5) - self.view_px / 2
        radius_deg = np.degrees(np.arctan(np.hypot(*np.meshgrid(c, c)) /
                                          self.cameras["top"].focal_px(self.view_px)))
        self.clean = np.clip(1.0 - radius_deg / CLEAN_DEG, 0.0, 1.0).astype(np.float32)[..., None]

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """A copy of ``frame`` (H, W, 3) uint8 at this canvas size with both caps repaired."""
        out = frame.astype(np.float32)
        for side, camera in self.cameras.items():
            view = equirect_to_perspective(frame, (self.view_px, self.view_px), camera)
            cleaned = view * (1 - self.clean) + _blur_twice(view, max(2, self.view_px // 12)) * self.clean
            bgra = np.zeros((self.view_px, self.view_px, 4), np.uint8)
            bgra[..., :3] = np.clip(cleaned[..., ::-1] + 0.5, 0, 255).astype(np.uint8)
            projected = self.mappings[side].project(bgra)[..., 2::-1].astype(np.float32)
            rows = slice(0, self.rows) if side == "top" else slice(self.size.height - self.rows, None)
            weight = self.weight if side == "top" else self.weight[::-1]
            out[rows] = out[rows] * (1 - weight) + projected[rows] * weight
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _blur_twice(image: np.ndarray, radius: int) -> np.ndarray:
    """A box blur applied twice: close to a Gaussian."""
    return box_blur(box_blur(image, radius), radius)
