"""What the finished 360° frames become: a video a headset, YouTube or a 360 player shows as a sphere,
and, on request, image sequences for compositing.

- **Video**: H.264 up to 4096×2048 (the largest picture hardware decoders take), HEVC above; CRF and
  pixel format as set; the source's sound carried over in sync; V1 and V2 spherical metadata
  (:mod:`..media.mp4_spherical`); optionally ``_360`` at the end of the file name (some players only read that).
- **Passes**: one file per frame, OpenEXR (half float, linear light) or 16-bit PNG (sRGB), with the
  generated region as alpha (1 generated, 0 the source's plate) or as a separate mask sequence.

Everything is written under temporary names and renamed into place only when all of it is complete.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..jobs.atomic import atomic_folder, atomic_outputs
from ..jobs.delivery_settings import DEFAULT_CRF, DeliverySettings
from ..media.images import srgb_to_linear, write_exr, write_png16
from ..media.mp4_spherical import inject_spherical
from ..media.video import PlaybackVideoWriter


class PassWriter:
    """One image file per frame into ``folder``: ``NAME.000001.exr`` (or ``.png``), and with a separate
    mask ``NAME_mask.000001.png``; frame numbers from 1, as Blender's image sequences count."""

    def __init__(self, folder: Path, name: str, kind: str, generated: np.ndarray, alpha: str):
        self.folder, self.name, self.kind, self.alpha = folder, name, kind, alpha
        self.generated = generated.astype(np.float32)  # (H, W), 1 where generated
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        self.count += 1
        number = f"{self.count:06d}"
        with_alpha = self.alpha == "alpha"
        if self.kind == "exr":
            linear = srgb_to_linear(rgb.astype(np.float32) / 255.0)
            write_exr(self.folder / f"{self.name}.{number}.exr", linear, self.generated if with_alpha else None)
        else:
            write_png16(self.folder / f"{self.name}.{number}.png", rgb.astype(np.float32) / 255.0,
                        self.generated if with_alpha else None)
        if not with_alpha:  # the camera is static, so the mask is one image: encoded once, then copied
            mask = self.folder / f"{self.name}_mask.{number}.png"
            if self.count == 1:
                write_png16(mask, np.repeat(self.generated[..., None], 3, axis=2), None)
            else:
                shutil.copyfile(self.folder / f"{self.name}_mask.{1:06d}.png", mask)


@contextmanager
def delivery(out: Path, fps: Fraction, settings: DeliverySettings, generated: np.ndarray,
             title: str | None = None, audio=None):
    """The delivered files of one job: yields ``write(rgb)`` for each finished frame. On a clean exit the
    video (marked 360°) and the passes are renamed into place; on any failure nothing is left.

    ``generated``: (H, W) float, 1 where the picture is generated and 0 on the source's plate;
    ``audio``: the source's sound (:func:`.audio.audio_for`) or None."""
    size, codec = settings.canvas, settings.codec_name()
    crf = settings.crf if settings.crf is not None else DEFAULT_CRF[codec]
    with atomic_outputs(settings.video_path(Path(out))) as (tmp,), \
            atomic_folder(settings.passes_folder(Path(out))) as passes:
        writer = PlaybackVideoWriter(tmp, size.width, size.height, fps, crf=crf, title=title, codec=codec,
                                     pix_fmt=settings.pixel_format, audio=audio)
        pass_writer = PassWriter(passes, Path(out).stem, settings.passes, generated, settings.pass_alpha) \
            if passes else None

        def write(rgb: np.ndarray) -> None:
            writer.write(rgb)
            if pass_writer:
                pass_writer.write(rgb)
        try:
            yield write
        finally:
            writer.close()
        if settings.spherical_metadata:
            inject_spherical(tmp)
