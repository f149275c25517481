"""Measures of how well a 360° equirect frame holds together as a sphere: the seam where its left and
right edges meet, its poles, tone drift away from the plate, and flicker inside the plate.

All take float or uint8 frames (H, W, 3) in 0–255 and, where a region matters, the reference's mask
(H, W) uint8 with 255 = generated, 0 = plate.
"""

from __future__ import annotations

import numpy as np

from ..media.images import luma as to_luma

POLE_CAP_DEG = 15.0      # the caps measured by the pole metrics
LATITUDE_BANDS = 6       # tone drift: bands of 30°


def seam_ratio(frame: np.ndarray) -> float:
    """mean |last column − first column| / mean |column − next column| over the rest of the frame.
    1.0 is seamless (the edges differ as much as any neighbours); a visible seam is several times that."""
    f = np.asarray(frame, dtype=np.float32)
    seam = np.abs(f[:, -1] - f[:, 0]).mean()
    adjacent = np.abs(np.diff(f, axis=1)).mean()
    return float(seam / adjacent) if adjacent > 0 else (1.0 if seam == 0 else float("inf"))


def pole_spread(frame: np.ndarray) -> dict:
    """Longitudinal spread (std over the row, in levels) of the top and bottom rows: a pole is one
    point, so a correct equirect's first and last rows are nearly constant."""
    y = to_luma(frame)
    return {"top": float(y[0].std()), "bottom": float(y[-1].std())}


def cap_discontinuity(frame: np.ndarray, cap_deg: float = POLE_CAP_DEG) -> dict:
    """How much the picture jumps across the boundary of each polar cap, relative to how much it changes
    between neighbouring rows elsewhere (1.0 = no visible ring, as :func:`seam_ratio`)."""
    y = to_luma(frame)
    h = y.shape[0]
    row = max(1, int(round(h * cap_deg / 180.0)))
    typical = np.abs(np.diff(y, axis=0)).mean()
    if typical == 0:
        return {"top": 1.0, "bottom": 1.0}
    top = np.abs(y[row] - y[row - 1]).mean() / typical
    bottom = np.abs(y[h - row] - y[h - row - 1]).mean() / typical
    return {"top": float(top), "bottom": float(bottom)}


def tone_drift(frame: np.ndarray, mask: np.ndarray, bands: int = LATITUDE_BANDS) -> list[dict]:
    """Per latitude band: mean luma of the generated region minus that of the plate in the same band
    (None where a band has no plate). Generated content that darkens away from the plate shows here."""
    y, generated = to_luma(frame), np.asarray(mask) >= 128
    h = y.shape[0]
    out = []
    for b in range(bands):
        rows = slice(h * b // bands, h * (b + 1) // bands)
        gen, plate = y[rows][generated[rows]], y[rows][~generated[rows]]
        lat_top = 90.0 - 180.0 * b / bands
        out.append({"lat_deg": [lat_top - 180.0 / bands, lat_top],
                    "generated": float(gen.mean()) if gen.size else None,
                    "plate": float(plate.mean()) if plate.size else None,
                    "drift": float(gen.mean() - plate.mean()) if gen.size and plate.size else None})
    return out


VISIBLE_CHANGE = 1.0  # levels of mean frame-to-frame change below which a join cannot be seen


class FrameChanges:
    """Mean absolute luma change from each frame to the next inside ``region`` (a boolean H×W mask), fed
    one frame at a time: ``changes[k − 1]`` is the change from frame k − 1 to frame k."""

    def __init__(self, region: np.ndarray):
        self.region = np.asarray(region, bool)
        self.previous, self.changes = None, []

    def add(self, frame: np.ndarray) -> None:
        inside = to_luma(frame)[self.region]
        if self.previous is not None:
            self.changes.append(float(np.abs(inside - self.previous).mean()))
        self.previous = inside


class Flicker(FrameChanges):
    """Mean absolute frame-to-frame change inside the plate (levels); the plate's own motion counts too,
    so compare against the source's value."""

    def __init__(self, mask: np.ndarray):
        super().__init__(np.asarray(mask) < 128)

    @property
    def value(self) -> float:
        return float(np.mean(self.changes)) if self.changes else 0.0


def boundary_jump(changes, windows) -> float:
    """How visible the joins between a long clip's windows are: the largest frame-to-frame change across
    any window's shared (cross-faded) frames, over the median change everywhere else. About 1 (or less)
    when windows join as smoothly as frames follow each other inside one; several times that at a jump.
    ``changes`` as :class:`FrameChanges` gives them over the generated region; ``windows`` the plan.
    Changes below a level (encoding noise on still content) count as one level: nobody sees them."""
    changes = np.asarray(changes, np.float64)
    joins = np.zeros(changes.size, bool)
    for window in windows[1:]:  # the change into frame k is changes[k − 1]
        joins[max(window.start - 1, 0):window.start + window.overlap] = True
    if not joins.any():
        return 1.0
    elsewhere = np.median(changes[~joins]) if (~joins).any() else np.median(changes)
    return float(changes[joins].max() / max(elsewhere, VISIBLE_CHANGE))
