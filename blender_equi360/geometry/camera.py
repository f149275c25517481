"""The flat camera that shot the plate, and the equirect canvas it is placed on.

Conventions (shared by the whole project, and by Blender's world mapping):

* The canvas is **world-level**: the horizon is the middle row. Its centre column faces the camera's
  heading (``yaw`` moves the plate away from the centre), longitude grows to the right, latitude upwards.
  A canvas pixel ``(x, y)`` has its centre at ``lon = ((x + 0.5) / W - 0.5) * 360°`` and
  ``lat = (0.5 - (y + 0.5) / H) * 180°``.
* Directions are written in the canvas frame ``(forward, right, up)``: ``forward`` is the canvas centre
  (lon 0, lat 0), ``right`` is lon +90°, ``up`` is the zenith. In Blender's world, with the default
  equirect mapping, forward = +X, right = -Y, up = +Z.
* ``yaw > 0`` turns the camera to the right, ``pitch > 0`` tilts it up, ``roll > 0`` rotates it
  counter-clockwise as seen from behind the camera. They apply in the order roll, pitch, yaw (roll about
  the lens axis, then tilt, then heading).
* ``hfov`` is the horizontal field of view of the picture area of the source (after letterbox or
  pillarbox bars are removed, before any crop to 2.39:1). Pixels are square; the principal point is the
  picture centre plus ``shift_x``/``shift_y`` (fractions of the picture width, as Blender's lens shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..jobs.errors import Equi360Error

MIN_HFOV_DEG = 1.0
MAX_HFOV_DEG = 179.0


@dataclass(frozen=True)
class Camera:
    hfov_deg: float = 100.0
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0

    def __post_init__(self):
        if not (MIN_HFOV_DEG < self.hfov_deg < MAX_HFOV_DEG) or not math.isfinite(self.hfov_deg):
            raise Equi360Error(
                f"horizontal FOV {self.hfov_deg:g}° is out of range: it must be between "
                f"{MIN_HFOV_DEG:g}° and {MAX_HFOV_DEG:g}° (exclusive); the model works best near 100°"
            )
        for name in ("yaw_deg", "pitch_deg", "roll_deg", "shift_x", "shift_y"):
            if not math.isfinite(getattr(self, name)):
                raise Equi360Error(f"{name.removesuffix('_deg')} must be a finite number")
        if abs(self.pitch_deg) > 90.0:
            raise Equi360Error(f"pitch {self.pitch_deg:g}° is out of range: it must be within ±90°")

    @classmethod
    def from_focal_length(cls, focal_mm: float, sensor_width_mm: float, **kwargs) -> "Camera":
        """A camera given as a focal length and the width of the sensor area the picture covers."""
        if focal_mm <= 0 or sensor_width_mm <= 0:
            raise Equi360Error("focal length and sensor width must be positive (millimetres)")
        return cls(hfov_deg=math.degrees(2.0 * math.atan(sensor_width_mm / (2.0 * focal_mm))), **kwargs)

    def focal_px(self, picture_width: float) -> float:
        """Focal length in pixels of a picture ``picture_width`` pixels wide."""
        return (picture_width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    def vfov_deg(self, picture_width: float, picture_height: float) -> float:
        return math.degrees(2.0 * math.atan((picture_height / 2.0) / self.focal_px(picture_width)))

    def rotation(self) -> np.ndarray:
        """3×3 matrix whose columns are the camera's forward, right and up axes in the canvas frame."""
        return yaw_matrix(self.yaw_deg) @ pitch_matrix(self.pitch_deg) @ roll_matrix(self.roll_deg)


def _plane_rotation(deg: float, a: int, b: int) -> np.ndarray:
    """Rotation taking axis ``a`` towards axis ``b`` by ``deg`` degrees (frame: forward, right, up)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = np.eye(3)
    m[a, a], m[b, a] = c, s
    m[a, b], m[b, b] = -s, c
    return m


def yaw_matrix(deg: float) -> np.ndarray:
    return _plane_rotation(deg, 0, 1)  # forward turns towards right


def pitch_matrix(deg: float) -> np.ndarray:
    return _plane_rotation(deg, 0, 2)  # forward tilts towards up


def roll_matrix(deg: float) -> np.ndarray:
    return _plane_rotation(deg, 1, 2)  # right turns towards up: counter-clockwise seen from behind


def canvas_to_blender(v: np.ndarray) -> np.ndarray:
    """Canvas-frame vectors (..., 3) as Blender world vectors: forward=+X, right=-Y, up=+Z."""
    v = np.asarray(v, dtype=np.float64)
    return np.stack([v[..., 0], -v[..., 1], v[..., 2]], axis=-1)
