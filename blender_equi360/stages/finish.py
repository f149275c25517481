"""The last step of every job: the generated 360° video becomes the delivered one, frame by frame as the
frames come (a long clip's windows are finished while the next ones are generated).

1. **Tone.** Each frame comes with its tone correction (:mod:`.tone`: gain and offset per channel and a
   drift gain field, fitted per window and blended between windows) and gets it applied.
2. **Poles.** The top and bottom caps are repaired (:mod:`..geometry.poles`).
3. **Size.** The generated canvas is upscaled (Lanczos) to the delivery canvas, e.g. 3840×1920.
4. **The plate stays the plate.** The plate is projected again from the source clip at the density each
   delivered pixel needs (:mod:`.plate`; never through the model's 1920×960), and laid over the
   generated picture with an alpha that is 1 inside the plate and falls off over a band just inside its
   edge, blurred with wrap-around so it crosses the seam correctly.

Every step runs the compiled loops of :mod:`..geometry.kernels` or swscale; the frames stream to the encoder
(:mod:`.delivery`: the video with its sound and 360° metadata, and compositing passes).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from ..geometry import kernels
from ..geometry.poles import PoleRepair
from ..geometry.projection import box_blur
from ..jobs.canvas import CanvasSize
from ..jobs.delivery_settings import DeliverySettings
from ..media.audio import audio_for
from ..media.video import PlanarResizer, decode_plates, probe
from .delivery import delivery
from .plate import PlateSampler
from .reference import Placement

FEATHER_DEG = 0.6         # width of the plate's inward blend band, in degrees of longitude


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


def resize_equirect(frame: np.ndarray, width: int, height: int, resizer: PlanarResizer, wrap: int = 8):
    """An equirect canvas resized (swscale's Lanczos) with the filter reaching across the left/right edge
    (``wrap`` columns of each side are resized with the other), so the seam stays closed: its three planes,
    R, G, B, as ``resizer`` (:class:`..media.video.PlanarResizer`) gives them."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame[..., 0], frame[..., 1], frame[..., 2]
    wrap = min(wrap, w)
    padded = np.concatenate([frame[:, -wrap:], frame, frame[:, :wrap]], axis=1)
    scale = width / w
    out_w = int(round((w + 2 * wrap) * scale))
    margin = int(round(wrap * scale))
    return tuple(plane[:, margin:margin + width] for plane in resizer(padded, out_w, height))


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


def finish(video, source: Path, placement: Placement, model_mask: np.ndarray, out: Path, fps: Fraction,
           title: str | None = None, progress=None, settings: DeliverySettings | None = None) -> Path:
    """Write the delivered video ``out`` at the settings' size; returns the video's path (``settings`` may add
    ``_360`` to its name, and passes next to it).

    ``video``: the generated clip at the model's canvas, ``len()`` frames, iterated once for ``(frame,
    correction)`` pairs (:class:`.join.GeneratedVideo`; the correction from :meth:`.tone.ToneTrack.at`);
    ``model_mask`` is the reference's mask; the plate comes from the source clip and the placement."""
    settings = settings or DeliverySettings()
    size = settings.canvas
    total = len(video)
    height, width = model_mask.shape
    poles = PoleRepair(CanvasSize(width, height))
    plate = PlateSampler(placement.camera, placement.window, size)
    alpha = plate_alpha(plate.mask, FEATHER_DEG / 360.0 * size.width)[plate.rows]
    plates = _held((bgra for _, bgra, _ in decode_plates(probe(source), placement.picture, placement.crop,
                                                         plate.source_size, placement.fps, placement.start_s,
                                                         total)), total)
    generated_region = np.ones((size.height, size.width), np.float32)
    generated_region[plate.rows] = 1.0 - alpha
    toned = np.empty((height, width, 3), np.uint8)
    delivered = np.empty((size.height, size.width, 3), np.uint8)
    upscale = PlanarResizer()
    audio = audio_for(source, placement.start_s, total / fps) if settings.audio else None
    with delivery(out, fps, settings, generated_region, title, audio) as write:
        for k, ((frame, correction), plate_bgra) in enumerate(zip(video, plates), 1):
            kernels.tone_and_drift(frame, *correction, toned)
            planes = resize_equirect(poles.apply(toned, out=toned), size.width, size.height, upscale)
            plate.lay(planes, plate_bgra, alpha, delivered)
            write(delivered)
            if progress:
                progress(k, total)
    return settings.video_path(Path(out))
