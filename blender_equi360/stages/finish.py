"""The last step of every job: the generated 360° video becomes the delivered one.

1. **Tone.** Generated content comes back in a slightly different tone from the plate it was given. A
   gain and offset per channel are fitted where the plate is known, over the whole clip at once (one fit,
   so the correction cannot flicker), and applied to the whole generated picture. Then the drift: the
   farther from the plate, the more the generated tone wanders. Per latitude band, the low-frequency
   luma is fitted as a line in the angular distance from the plate; the sloped part (the drift) is divided
   out by a smooth gain field, again one for the whole clip.
2. **Poles.** The top and bottom caps are repaired (:mod:`..geometry.poles`).
3. **Size.** The generated canvas is upscaled (Lanczos) to the delivery canvas, e.g. 3840×1920.
4. **The plate stays the plate.** The plate is projected again from the source clip at the density each
   delivered pixel needs (:mod:`.plate`; never through the model's 1920×960), and laid over the
   generated picture with an alpha that is 1 inside the plate and falls off over a band just inside its
   edge, blurred with wrap-around so it crosses the seam correctly.

The generated frames are read three times (a re-iterable sequence: a long clip's windows are read back
from the job folder each time): the tone fit, the drift fit, and the delivery, which streams to the
encoder (:mod:`.delivery`: the video with its sound and 360° metadata, and compositing passes).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..geometry import kernels
from ..geometry.poles import PoleRepair
from ..geometry.projection import box_blur, sample_equirect
from ..jobs.canvas import CanvasSize
from ..jobs.delivery_settings import DeliverySettings
from ..media.audio import audio_for
from ..media.video import decode_plates, probe, resize
from .delivery import delivery
from .plate import PlateSampler
from .reference import Placement

FEATHER_DEG = 0.6         # width of the plate's inward blend band, in degrees of longitude
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
        generated = ~plate_cells[band]
        d, v = distance[generated], lowpass[band, generated]
        if d.size < 4 or np.ptp(d) == 0:
            continue
        slope, intercept = np.polyfit(d, v, 1)
        if intercept <= 1:
            continue
        model = intercept + slope * distance
        gain[band] = np.where(generated, intercept / np.maximum(model, 1.0), 1.0)
    return np.clip(gain, *DRIFT_GAIN_LIMITS).astype(np.float32)


def _cells(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    h, w = image.shape
    return image[: h - h % rows, : w - w % cols].reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))


def _gain_image(gain: np.ndarray, width: int, height: int) -> np.ndarray:
    """The drift gain field at full size: bilinear, wrapping in longitude (it is a small equirect)."""
    rows, cols = gain.shape
    x = (np.arange(width) + 0.5) * cols / width - 0.5
    y = (np.arange(height) + 0.5) * rows / height - 0.5
    return sample_equirect(gain, *np.meshgrid(x, y))


def plate_alpha(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """1 inside the plate, falling to 0 over ``feather_px`` just inside its edge (never outside it),
    blurred with wrap-around along the width. ``mask``: 255 generated, 0 plate."""
    known = (mask < 128).astype(np.float32)
    radius = max(1, int(round(feather_px / 2)))
    # Erode by the radius, then blur by it: the blend band ends at the plate's edge.
    eroded = known.copy()
    for axis in (0, 1):
        for shift in range(1, radius + 1):
            for sign in (1, -1):
                rolled = np.roll(known, sign * shift, axis=axis)
                if axis == 0:  # no wrap over the poles
                    (rolled[:shift] if sign > 0 else rolled[-shift:])[...] = 0
                eroded = np.minimum(eroded, rolled)
    return box_blur(eroded, radius, wrap_width=True)


def resize_equirect(frame: np.ndarray, width: int, height: int, wrap: int = 8) -> np.ndarray:
    """:func:`resize` for an equirect canvas: the filter reaches across the left/right edge (``wrap``
    columns of each side are resized with the other), so the seam stays closed."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    wrap = min(wrap, w)
    padded = np.concatenate([frame[:, -wrap:], frame, frame[:, :wrap]], axis=1)
    scale = width / w
    out_w = int(round((w + 2 * wrap) * scale))
    margin = int(round(wrap * scale))
    return resize(padded, out_w, height)[:, margin:margin + width]


def _held(frames, count: int):
    """``count`` items of ``frames``, holding the last one if it runs out (as the reference was padded)."""
    produced, last = 0, None
    for last in frames:
        if produced == count:
            return
        yield last
        produced += 1
    for _ in range(count - produced):
        yield last


def finish(generated, source: Path, placement: Placement, reference_frames, model_mask: np.ndarray,
           out: Path, fps: Fraction, title: str | None = None, progress=None,
           settings: DeliverySettings | None = None) -> Path:
    """Write the delivered video ``out`` at the settings' size from ``generated`` (a sequence of (H, W, 3) uint8
    frames at the model's canvas, re-iterable), the source clip and the reference's placement; returns
    the video's path (``settings`` may add ``_360`` to its name, and passes next to it).

    ``reference_frames`` (re-iterable, the job's reference) and ``model_mask`` drive the tone fit."""
    settings = settings or DeliverySettings()
    size = settings.canvas
    known = model_mask < 128
    tone = fit_tone((g, r, known) for g, r in zip(generated, reference_frames))
    drift = _gain_image(fit_drift(generated, tone, known), *model_mask.shape[::-1])
    total = len(generated)
    height, width = model_mask.shape
    poles = PoleRepair(CanvasSize(width, height))
    plate = PlateSampler(placement.camera, placement.window, size)
    alpha = plate_alpha(plate.mask, FEATHER_DEG / 360.0 * size.width)[plate.rows]
    plates = _held((bgra for _, bgra, _ in decode_plates(probe(source), placement.picture, placement.crop,
                                                         plate.source_size, placement.fps, placement.start_s,
                                                         total)), total)
    generated_region = np.ones((size.height, size.width), np.float32)
    generated_region[plate.rows] = 1.0 - alpha
    gain, offset = tone.gain.astype(np.float32), tone.offset.astype(np.float32)
    toned = np.empty((height, width, 3), np.uint8)
    delivered = np.empty((size.height, size.width, 3), np.uint8)
    audio = audio_for(source, placement.start_s, total / fps) if settings.audio else None
    with delivery(out, fps, settings, generated_region, title, audio) as write:
        for k, (frame, plate_bgra) in enumerate(zip(generated, plates), 1):
            kernels.tone_and_drift(frame, gain, offset, drift, drift, np.float32(0), toned)
            canvas = resize_equirect(poles.apply(toned, out=toned), size.width, size.height)
            plate.lay(canvas, plate_bgra, alpha, delivered)
            write(delivered)
            if progress:
                progress(k, total)
    return settings.video_path(Path(out))
