"""The tone of the generated picture matched to the plate, fitted window by window so the finish can
stream: each window's frames are finished as soon as it is made, while the next one is generated.

- **Gain and offset.** Generated content comes back in a slightly different tone from the plate it was
  given. Per channel, a least-squares gain and offset map the generated frames onto the plate where the
  plate is known, over all of a window's frames at once (:func:`fit_tone`).
- **Drift.** The farther from the plate, the more the generated tone wanders. Per latitude band, the
  window's low-frequency luma is fitted as a line in the angular distance from the plate; the sloped part is
  divided out by a smooth gain field (:func:`fit_drift`).
- **No flicker.** A frame gets the fits of the windows it is made of, in the proportions the join mixes
  their pictures: its own window's fit, or over a cross-fade the two windows' fits blended with the
  pictures' weights. The correction follows the picture instead of stepping where one window's fit ends, and
  every frame's correction is known as soon as its window is: nothing waits for the end of the clip. A clip
  of one window gets one fit for all its frames, as a whole-clip fit would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..geometry import kernels
from ..geometry.projection import sample_equirect
from ..jobs.windows import TimeWindow

TONE_SAMPLE_STRIDE = 3    # pixels sampled for the tone fit, in each direction
TONE_GAIN_LIMITS = (0.7, 1.4)
DRIFT_GRID = (32, 64)           # latitude bands × longitude cells of the drift fit
DRIFT_GAIN_LIMITS = (0.8, 1.25)


@dataclass(frozen=True)
class Tone:
    gain: np.ndarray    # (3,)
    offset: np.ndarray  # (3,)

    @classmethod
    def identity(cls) -> "Tone":
        return cls(np.ones(3), np.zeros(3))

    def apply(self, frame: np.ndarray) -> np.ndarray:
        return np.clip(frame.astype(np.float32) * self.gain.astype(np.float32) + self.offset.astype(np.float32),
                       0, 255)


def fit_tone(pairs) -> Tone:
    """Least-squares gain and offset per channel mapping generated → plate, over ``(generated, plate,
    known)`` triples (frames at one size; ``known`` a boolean mask), all frames at once."""
    sums = np.zeros((3, 5))  # Σx, Σy, Σxx, Σxy, n per channel
    for generated, plate, known in pairs:
        pick = known[::TONE_SAMPLE_STRIDE, ::TONE_SAMPLE_STRIDE]
        x = generated[::TONE_SAMPLE_STRIDE, ::TONE_SAMPLE_STRIDE][pick].astype(np.float64)
        y = plate[::TONE_SAMPLE_STRIDE, ::TONE_SAMPLE_STRIDE][pick].astype(np.float64)
        sums += np.stack([x.sum(0), y.sum(0), (x * x).sum(0), (x * y).sum(0), np.full(3, len(x))], axis=1)
    sx, sy, sxx, sxy, n = sums.T
    if n[0] < 100:
        return Tone.identity()
    var = sxx / n - (sx / n) ** 2
    gain = np.where(var > 1.0, (sxy / n - sx * sy / n / n) / np.maximum(var, 1e-9), 1.0)
    gain = np.clip(gain, *TONE_GAIN_LIMITS)
    offset = sy / n - gain * sx / n
    return Tone(gain, offset)


def fit_drift(generated, tone: Tone, known: np.ndarray) -> np.ndarray:
    """A gain field (DRIFT_GRID, float32) that removes, per latitude band, the part of the generated
    region's low-frequency luma (of the frames after ``tone``) that grows linearly with angular distance
    from the plate."""
    rows, cols = DRIFT_GRID
    total, count = np.zeros(DRIFT_GRID), 0
    gain, offset = tone.gain.astype(np.float32), tone.offset.astype(np.float32)
    for frame in generated:
        kernels.toned_luma_cells(frame, gain, offset, rows, cols, total)
        count += 1
    if count == 0 or not known.any():
        return np.ones(DRIFT_GRID, np.float32)
    lowpass = total / count
    plate_cells = _cells(known.astype(np.float32), rows, cols) > 0.5
    plate_cols = np.flatnonzero(plate_cells.any(axis=0))
    if plate_cols.size == 0:
        return np.ones(DRIFT_GRID, np.float32)
    offsets = np.abs(np.arange(cols)[:, None] - plate_cols[None, :])
    distance = np.minimum(offsets, cols - offsets).min(axis=1) * (360.0 / cols)  # degrees around the sphere
    gain = np.ones(DRIFT_GRID)
    for band in range(rows):
        generated_cells = ~plate_cells[band]
        d, v = distance[generated_cells], lowpass[band, generated_cells]
        if d.size < 4 or np.ptp(d) == 0:
            continue
        slope, intercept = np.polyfit(d, v, 1)
        if intercept <= 1:
            continue
        model = intercept + slope * distance
        gain[band] = np.where(generated_cells, intercept / np.maximum(model, 1.0), 1.0)
    return np.clip(gain, *DRIFT_GAIN_LIMITS).astype(np.float32)


def _cells(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    h, w = image.shape
    return image[: h - h % rows, : w - w % cols].reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))


def gain_image(gain: np.ndarray, width: int, height: int) -> np.ndarray:
    """The drift gain field at full size: bilinear, wrapping in longitude (it is a small equirect)."""
    rows, cols = gain.shape
    x = (np.arange(width) + 0.5) * cols / width - 0.5
    y = (np.arange(height) + 0.5) * rows / height - 0.5
    return sample_equirect(gain, *np.meshgrid(x, y))  # float64


@dataclass(frozen=True)
class WindowTone:
    """One window's fit: gain and offset (float32, as the finish applies them) and the drift gain at the
    model's canvas size ((H, W) float64)."""
    gain: np.ndarray
    offset: np.ndarray
    drift: np.ndarray


def fit_window(frames: Callable[[], Iterable[np.ndarray]], reference: Iterable[np.ndarray],
               known: np.ndarray) -> WindowTone:
    """The fit of one window from its generated frames (``frames()`` gives them, each call anew: they are
    read twice, for the tone, then for the drift after it) and the reference's frames over the same span."""
    tone = fit_tone((g, r, known) for g, r in zip(frames(), reference))
    drift = gain_image(fit_drift(frames(), tone, known), known.shape[1], known.shape[0])
    return WindowTone(tone.gain.astype(np.float32), tone.offset.astype(np.float32), drift)


class ToneTrack:
    """The windows' fits along the clip, added in order as the windows are read. A frame gets the fits of the
    windows it is made of, in the proportions the join mixes them (:func:`crossfade_weight`): the
    fit of its window alone, or across a cross-fade the previous window's fit blended into this one's as
    the pictures are."""

    def __init__(self):
        self.windows: list[TimeWindow] = []
        self.fits: list[WindowTone] = []

    def add(self, window: TimeWindow, fit: WindowTone) -> None:
        self.windows.append(window)
        self.fits.append(fit)

    def at(self, frame: int):
        """``(gain, offset, drift_a, drift_b, mix)`` for :func:`.kernels.tone_and_drift`."""
        k = max(i for i, w in enumerate(self.windows) if w.start <= frame or i == 0)
        window, fit = self.windows[k], self.fits[k]
        shared = frame - window.start
        if k == 0 or shared >= window.overlap:
            return fit.gain, fit.offset, fit.drift, fit.drift, np.float32(0.0)
        before, mix = self.fits[k - 1], crossfade_weight(shared, window.overlap)
        gain = (before.gain * (1.0 - mix) + fit.gain * mix).astype(np.float32)
        offset = (before.offset * (1.0 - mix) + fit.offset * mix).astype(np.float32)
        return gain, offset, before.drift, fit.drift, np.float32(mix)


def crossfade_weight(j: int, overlap: int) -> float:
    """The newer window's share of shared frame ``j`` (0-based): rising linearly, never 0 or 1."""
    return (j + 1) / (overlap + 1)
