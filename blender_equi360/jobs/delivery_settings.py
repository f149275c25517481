"""What the delivered 360° video is: its size, codec, quality and pixel format, its 360° metadata and name,
its sound, and compositing passes. Declared once, here: ``job.json`` carries these flat, under the names in
each field's ``job`` metadata (an API: the add-on's preferences use the same names)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .canvas import CanvasSize
from .errors import Equi360Error, require

H264_MAX = (4096, 2048)  # the largest picture hardware H.264 decoders take
MAX_SIZE = CanvasSize(8192, 4096)  # HEVC level 6.2 ends at 8192×4320
CODECS = ("auto", "h264", "hevc")
PIXEL_FORMATS = ("yuv420p", "yuv420p10le")
PASSES = ("exr", "png16")
PASS_ALPHA = ("alpha", "separate")
# Measured on a synthetic clip with near-Nyquist detail (H.264): the plate comes back at 39.7 dB over the
# output with CRF 16, 41.6 with 12 (+45 % bytes), 42.3 with 10. HEVC at the same CRF keeps more.
DEFAULT_CRF = {"h264": 12, "hevc": 14}
# The delivery sizes the add-on offers, with what each is for.
SIZES = {"1920x960": "The canvas of the LoRA v0.1", "2560x1280": "The canvas of the LoRA 1.0",
         "3840x1920": "The usual 360° delivery; the plate is laid back at this density",
         "4096x2048": "The largest H.264 hardware decoders take", "5760x2880": "Above 4096×2048 the Auto codec is HEVC",
         "7680x3840": "What YouTube wants for its sharpest 360° streams"}


def _json(name: str, default, doc: str):
    return field(default=default, metadata={"job": name, "doc": doc})


@dataclass(frozen=True)
class DeliverySettings:
    size: str = _json("delivery_size", "3840x1920", "the delivered canvas; the plate is projected again at its "
                                                    "density")
    codec: str = _json("delivery_codec", "auto", "auto: H.264 up to 4096×2048, HEVC above")
    crf: int | None = _json("delivery_crf", None, "quality; None: DEFAULT_CRF for the codec")
    pixel_format: str = _json("delivery_pixel_format", "yuv420p", "yuv420p10le: 10-bit (HEVC, or H.264 High 10, "
                                                                  "which few players decode)")
    spherical_metadata: bool = _json("spherical_metadata", True, "V1 + V2 360° metadata in the MP4")
    suffix_360: bool = _json("suffix_360", False, "result.mp4 → result_360.mp4")
    audio: bool = _json("audio", True, "the source's sound, in sync, when it has some")
    passes: str | None = _json("passes", None, '"exr" | "png16": an image sequence for compositing as well')
    pass_alpha: str = _json("pass_alpha", "alpha", 'the generated region as the passes\' alpha, or a "separate" '
                                                   "mask sequence")

    def __post_init__(self):
        require(isinstance(self.size, str), "delivery_size must be text like 3840x1920")
        try:
            check_size(self.canvas)
        except Equi360Error as err:
            raise Equi360Error(f"delivery_size: {err}") from None
        require(self.codec in CODECS, f"codec {self.codec!r} is not one of {', '.join(CODECS)}")
        require(self.crf is None or (isinstance(self.crf, int) and not isinstance(self.crf, bool)
                                    and 0 <= self.crf <= 51), "delivery_crf must be a whole number from 0 to 51 "
                                                              "(or null)")
        require(self.pixel_format in PIXEL_FORMATS,
               f"pixel format {self.pixel_format!r} is not one of {', '.join(PIXEL_FORMATS)}")
        for name in ("spherical_metadata", "suffix_360", "audio"):
            require(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        require(self.passes is None or self.passes in PASSES, f"passes {self.passes!r} is not one of "
                                                             f"{', '.join(PASSES)} (or null)")
        require(self.pass_alpha in PASS_ALPHA, f"pass alpha {self.pass_alpha!r} is not one of {', '.join(PASS_ALPHA)}")

    @classmethod
    def job_names(cls) -> dict[str, str]:
        """job.json's name of each field."""
        return {f.metadata["job"]: f.name for f in fields(cls)}

    @property
    def canvas(self) -> CanvasSize:
        return CanvasSize.parse(self.size)

    def codec_name(self) -> str:
        if self.codec != "auto":
            return self.codec
        size = self.canvas
        return "h264" if size.width <= H264_MAX[0] and size.height <= H264_MAX[1] else "hevc"

    def video_path(self, out: Path) -> Path:
        return out.with_name(f"{out.stem}_360{out.suffix}") if self.suffix_360 and not out.stem.endswith("_360") \
            else out

    def passes_folder(self, out: Path) -> Path | None:
        return out.with_name(f"{out.stem}_passes") if self.passes else None


def check_size(size: CanvasSize) -> None:
    """A delivery size the encoders take and this machine's memory can finish."""
    if size.width > MAX_SIZE.width:
        raise Equi360Error(f"{size} is larger than the largest delivery, {MAX_SIZE} (8K): choose 7680x3840 or less")
    need, have = finish_memory_gb(size), memory_gb()
    if have is not None and need > 0.8 * have:
        raise Equi360Error(f"{size} needs about {need:.0f} GB of memory to finish and this machine has "
                           f"{have:.0f} GB: choose a smaller delivery")


def finish_memory_gb(size: CanvasSize) -> float:
    """What the finish holds at a delivery size. Measured (peak resident memory of the draft engine, a
    1920×804 source, 2026-12-05): 0.55 GB at 3840×1920, 1.85 GB at 7680×3840, 63 bytes a delivered pixel
    more; with room to spare, 0.5 GB and 80 bytes a pixel."""
    return 0.5 + 80 * size.width * size.height / 2**30


def memory_gb() -> float | None:
    """This machine's physical memory, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        return None
