"""What the finished 360° frames become: a video a headset, YouTube or a 360 player shows as a sphere,
and, on request, image sequences for compositing.

- **Video**: H.264 up to 4096×2048 (the largest picture hardware decoders take), HEVC above; CRF and
  pixel format as set; the source's sound carried over in sync; V1 and V2 spherical metadata
  (:mod:`.spherical`); optionally ``_360`` at the end of the file name (some players only read that).
- **Passes**: one file per frame, OpenEXR (half float, linear light) or 16-bit PNG (sRGB), with the
  generated region as alpha (1 generated, 0 the source's plate) or as a separate mask sequence.

Everything is written under temporary names and renamed into place only when all of it is complete.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import Equi360Error
from .projection import CanvasSize
from .spherical import inject_spherical
from .video import PlaybackVideoWriter, atomic_outputs, encode_image

H264_MAX = (4096, 2048)
CODECS = ("auto", "h264", "hevc")
PIXEL_FORMATS = ("yuv420p", "yuv420p10le")
PASSES = ("exr", "png16")
PASS_ALPHA = ("alpha", "separate")
# Measured on a synthetic clip with near-Nyquist detail (H.264): the plate comes back at 39.7 dB over the
# output with CRF 16, 41.6 with 12 (+45 % bytes), 42.3 with 10. HEVC at the same CRF keeps more.
DEFAULT_CRF = {"h264": 12, "hevc": 14}


@dataclass(frozen=True)
class DeliverySettings:
    codec: str = "auto"             # auto: H.264 up to 4096×2048, HEVC above
    crf: int | None = None          # None: DEFAULT_CRF for the codec
    pixel_format: str = "yuv420p"   # yuv420p10le: 10-bit (HEVC, or H.264 High 10, which few players decode)
    spherical_metadata: bool = True
    suffix_360: bool = False        # result.mp4 → result_360.mp4
    audio: bool = True              # the source's sound, when it has some
    passes: str | None = None       # "exr" | "png16": an image sequence for compositing as well
    pass_alpha: str = "alpha"       # the generated region as the passes' alpha, or a "separate" mask sequence

    def __post_init__(self):
        _check(self.codec in CODECS, f"codec {self.codec!r} is not one of {', '.join(CODECS)}")
        _check(self.crf is None or (isinstance(self.crf, int) and 0 <= self.crf <= 51), "crf must be 0 to 51")
        _check(self.pixel_format in PIXEL_FORMATS,
               f"pixel format {self.pixel_format!r} is not one of {', '.join(PIXEL_FORMATS)}")
        _check(self.passes is None or self.passes in PASSES, f"passes {self.passes!r} is not one of "
                                                             f"{', '.join(PASSES)} (or null)")
        _check(self.pass_alpha in PASS_ALPHA, f"pass alpha {self.pass_alpha!r} is not one of {', '.join(PASS_ALPHA)}")

    def codec_for(self, size: CanvasSize) -> str:
        if self.codec != "auto":
            return self.codec
        return "h264" if size.width <= H264_MAX[0] and size.height <= H264_MAX[1] else "hevc"

    def video_path(self, out: Path) -> Path:
        return out.with_name(f"{out.stem}_360{out.suffix}") if self.suffix_360 and not out.stem.endswith("_360") \
            else out

    def passes_folder(self, out: Path) -> Path | None:
        return out.with_name(f"{out.stem}_passes") if self.passes else None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise Equi360Error(f"delivery: {message}")


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function undone (0..1 in, 0..1 out): Blender reads video as sRGB, EXR as linear."""
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


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


def write_exr(path: Path, rgb: np.ndarray, alpha: np.ndarray | None) -> None:
    """A half-float OpenEXR (ZIP compressed) of linear ``rgb`` (H, W, 3) float, with ``alpha`` (H, W) if given."""
    planes = [rgb[..., 1], rgb[..., 2], rgb[..., 0]] + ([alpha] if alpha is not None else [])  # FFmpeg's G, B, R, A
    frame = av.VideoFrame(rgb.shape[1], rgb.shape[0], "gbrapf32le" if alpha is not None else "gbrpf32le")
    for plane, values in zip(frame.planes, planes):
        _fill_plane(plane, np.ascontiguousarray(values, np.float32), 4)
    encode_image(path, "exr", frame, {"format": "half", "compression": "zip16"})


def write_png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None) -> None:
    """A 16-bit PNG of ``rgb`` (H, W, 3) in 0..1, with ``alpha`` (H, W) if given."""
    channels = rgb if alpha is None else np.concatenate([rgb, alpha[..., None]], axis=2)
    values = np.clip(np.rint(channels * 65535), 0, 65535).astype(np.uint16)  # PyAV orders the bytes
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(values), format="rgba64be" if alpha is not None
                                       else "rgb48be")
    encode_image(path, "png", frame)


def _fill_plane(plane, values: np.ndarray, itemsize: int) -> None:
    height, width = values.shape
    if plane.line_size == width * itemsize:
        plane.update(values)
    else:  # rows padded for alignment
        rows = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)
        rows[:, : width * itemsize] = values.view(np.uint8).reshape(height, -1)


def read_exr(path) -> np.ndarray:
    """An EXR written by :func:`write_exr`, back as float32 (H, W, 3 or 4) RGB(A)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    dtype = np.float16 if "f16" in frame.format.name else np.float32
    planes = [np.frombuffer(p, dtype).reshape(frame.height, -1)[:, :frame.width] for p in frame.planes]
    order = [2, 0, 1] + ([3] if len(planes) == 4 else [])
    return np.stack([planes[i] for i in order], axis=-1).astype(np.float32)


def read_png16(path) -> np.ndarray:
    """A PNG back as float32 (H, W, C) in 0..1."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    deep = frame.format.name in ("rgb48be", "rgba64be", "gray16be")
    values = frame.to_ndarray()
    return values.astype(np.float32) / (65535.0 if deep else 255.0)


SEQUENCE_SUFFIXES = (".exr", ".png")


def image_sequence(path) -> list[Path] | None:
    """The frames of an image sequence named by one of its files (``NAME.000001.exr``) or by its folder
    (the passes folder: its picture frames, not the masks), in order; None when ``path`` is not one."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SEQUENCE_SUFFIXES
                       and p.stem.rpartition(".")[2].isdigit() and not p.stem.rpartition(".")[0].endswith("_mask"))
        return image_sequence(files[0]) if files else None
    prefix, dot, number = path.stem.rpartition(".")
    if path.suffix.lower() not in SEQUENCE_SUFFIXES or not dot or not number.isdigit() or not path.is_file():
        return None
    frames = sorted(path.parent.glob(f"{prefix}.{'[0-9]' * len(number)}{path.suffix}"))
    return frames


@contextmanager
def _atomic_folder(folder: Path | None):
    """A temporary folder next to ``folder``, renamed to it (replacing it) only if the block succeeds."""
    if folder is None:
        yield None
        return
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def delivery(out: Path, size: CanvasSize, fps: Fraction, settings: DeliverySettings, generated: np.ndarray,
             title: str | None = None, audio=None):
    """The delivered files of one job: yields ``write(rgb)`` for each finished frame. On a clean exit the
    video (marked 360°) and the passes are renamed into place; on any failure nothing is left.

    ``generated``: (H, W) float, 1 where the picture is generated and 0 on the source's plate;
    ``audio``: the source's sound (:func:`.audio.audio_for`) or None."""
    codec = settings.codec_for(size)
    crf = settings.crf if settings.crf is not None else DEFAULT_CRF[codec]
    with atomic_outputs(settings.video_path(Path(out))) as (tmp,), \
            _atomic_folder(settings.passes_folder(Path(out))) as passes:
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
