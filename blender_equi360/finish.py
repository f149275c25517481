"""The last step of every job: the generated 360° video becomes the delivered one.

1. **Tone.** Generated content comes back in a slightly different tone from the plate it was given. A
   gain and offset per channel are fitted where the plate is known, over the whole clip at once (one fit,
   so the correction cannot flicker), and applied to the whole generated picture.
2. **Poles.** The top and bottom caps are repaired (:mod:`.poles`).
3. **Size.** The generated canvas is upscaled (Lanczos) to the delivery canvas, e.g. 3840×1920.
4. **The plate stays the plate.** The plate is projected again from the source clip, at the delivery
   canvas's own density (not through the model's 1920×960), and laid over the generated picture with an
   alpha that is 1 inside the plate and falls off over a band just inside its edge, blurred with
   wrap-around so it crosses the seam correctly.

Frames stream through; only the small tone statistics are gathered in a first pass over the generated
frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .poles import PoleRepair
from .projection import CanvasSize, PlateMapping, prefiltered_plate_size
from .reference import Placement
from .video import PlaybackVideoWriter, atomic_outputs, decode_plates, probe

FEATHER_DEG = 0.6         # width of the plate's inward blend band, in degrees of longitude
TONE_SAMPLE_STRIDE = 3    # pixels sampled for the tone fit, in each direction
TONE_GAIN_LIMITS = (0.7, 1.4)


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
    return _box_blur_wrapped(eroded, radius)


def _box_blur_wrapped(image: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    padded = np.concatenate([image[:, -radius:], image, image[:, :radius]], axis=1)
    cumulative = np.cumsum(np.pad(padded, ((0, 0), (1, 0))), axis=1)
    horizontal = (cumulative[:, size:] - cumulative[:, :-size]) / size
    padded = np.pad(horizontal, ((radius, radius), (0, 0)), mode="edge")
    cumulative = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    return ((cumulative[size:] - cumulative[:-size]) / size).astype(np.float32)


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return image.reformat(width=width, height=height, interpolation="LANCZOS").to_ndarray()


def finish(generated, source: Path, placement: Placement, reference_frames, model_mask: np.ndarray,
           out: Path, size: CanvasSize, fps: Fraction, title: str | None = None, progress=None) -> None:
    """Write the delivered video ``out`` at ``size`` from ``generated`` (a sequence of (H, W, 3) uint8
    frames at the model's canvas, re-iterable), the source clip and the reference's placement.

    ``reference_frames`` (re-iterable, the job's reference) and ``model_mask`` drive the tone fit."""
    known = model_mask < 128
    tone = fit_tone((g, r, known) for g, r in zip(generated, reference_frames))
    plate_size = prefiltered_plate_size(placement.camera, placement.window, size)
    mapping = PlateMapping(placement.camera, placement.window, size, plate_size)
    feather_px = FEATHER_DEG / 360.0 * size.width
    alpha = plate_alpha(mapping.mask, feather_px)[..., None]
    total = len(generated)
    height, width = model_mask.shape
    poles = PoleRepair(CanvasSize(width, height))
    plates = decode_plates(probe(source), placement.picture, placement.crop, plate_size, placement.fps,
                           placement.start_s, total)
    with atomic_outputs(out) as (tmp,):
        writer = PlaybackVideoWriter(tmp, size.width, size.height, fps, title=title)
        try:
            for k, (frame, (_, plate_bgra, _)) in enumerate(zip(generated, plates), 1):
                toned = np.clip(tone.apply(frame) + 0.5, 0, 255).astype(np.uint8)
                canvas = resize(poles.apply(toned), size.width, size.height)
                projected = mapping.project(plate_bgra)[..., 2::-1]
                delivered = canvas * (1 - alpha) + projected * alpha
                writer.write(np.clip(delivered + 0.5, 0, 255).astype(np.uint8))
                if progress:
                    progress(k, total)
        finally:
            writer.close()
