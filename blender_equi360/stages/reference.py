"""Build the masked equirect *reference video* the VR-360 IC-LoRA expects from a flat clip.

Streaming: each output frame is decoded, prefiltered (swscale's bilinear downscale), projected and
encoded before the next one is read, so memory does not depend on the clip's length.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

from ..geometry.camera import Camera
from ..geometry.projection import PlateCrop, PlateMapping, prefiltered_plate_size
from ..jobs.atomic import atomic_outputs, write_json_atomically
from ..jobs.canvas import CanvasSize
from ..jobs.errors import Equi360Error
from ..jobs.job import CROPS, JOB_FILE, LOG_FILE, SourceSpec, delivered_path, load_job
from ..jobs.lora_versions import DEFAULT_LORA_VERSION, LoraVersion, lora_version
from ..jobs.timing import frame_rate, round_up_frame_count, valid_frame_count
from ..media.video import (
    DEFAULT_LOSSLESS_CODEC,
    LOSSLESS_CODECS,
    LosslessVideoWriter,
    PictureBox,
    SourceInfo,
    decode_plates,
    describe_orientation,
    detect_picture,
    probe,
    write_held_image,
)

TARGET_ASPECT = 2.39  # the shape v0.1 of the LoRA was trained on, and what the crop makes
MAX_CANVAS = CanvasSize(4096, 2048)  # the model's canvas: already 2.6× the tokens of 2560×1280 per frame
DEFAULT_FRAMES = 121
MODEL_FPS = 24.0  # what the model is trained at; other rates work, with the timing kept


@dataclass(frozen=True)
class ReferenceSettings:
    camera: Camera = field(default_factory=Camera)
    lora_version: str = DEFAULT_LORA_VERSION  # the VR-360 LoRA the reference is for: the defaults below
    crop: str | None = None         # to 2.39:1, keeping the centre/top/bottom rows; "none" keeps the aspect
    size: CanvasSize | None = None  # None: the LoRA version's canvas (and crop)
    frames: int | None = DEFAULT_FRAMES  # 8k+1; None = the whole clip from start_s, padded up to 8k+1
    fps: float | None = None        # None: the clip's own rate (the delivery then times like the source)
    start_s: float = 0.0
    feather_px: float = 0.0         # inward feather of the plate edge, in canvas pixels (0 = hard edge)
    detect_letterbox: bool = True
    codec: str = DEFAULT_LOSSLESS_CODEC

    def __post_init__(self):
        if self.size is None:
            object.__setattr__(self, "size", self.version.canvas)
        if self.crop is None:
            object.__setattr__(self, "crop", self.version.crop)
        if self.crop not in CROPS:
            raise Equi360Error(f"crop {self.crop!r} is not one of {', '.join(CROPS)}")
        if self.size.width > MAX_CANVAS.width:
            raise Equi360Error(f"canvas {self.size} is larger than the model's largest, {MAX_CANVAS} (the VR-360 "
                               "LoRA is made at 1920x960 and 2560x1280)")
        if self.frames is not None and self.frames < 1:
            raise Equi360Error(f"{self.frames} frames: the reference needs at least 1 (8k+1: 1, 9, …, 121)")
        if self.frames is not None and not valid_frame_count(self.frames):
            lower = round_up_frame_count(self.frames) - 8
            raise Equi360Error(
                f"{self.frames} frames is not a length the model accepts: it needs 8k+1 frames "
                f"(e.g. {max(lower, 1)} or {round_up_frame_count(self.frames)})"
            )
        if self.fps is not None and not (0 < self.fps <= 240):
            raise Equi360Error(f"fps {self.fps:g} is out of range (0 < fps ≤ 240; the model is trained at "
                               f"{MODEL_FPS:g})")
        if self.start_s < 0:
            raise Equi360Error("start must be 0 seconds or later")
        if self.feather_px < 0:
            raise Equi360Error("feather must be 0 pixels or more")
        if self.codec not in LOSSLESS_CODECS:
            raise Equi360Error(f"codec {self.codec!r} is not one of {', '.join(LOSSLESS_CODECS)}")

    @property
    def version(self) -> LoraVersion:
        return lora_version(self.lora_version)


@dataclass
class ReferenceResult:
    video: Path
    mask: Path
    source: SourceInfo
    settings: ReferenceSettings
    picture: PictureBox          # the frame without letterbox bars
    window: PlateCrop               # the plate inside the picture (after the crop to 2.39:1)
    plate_size: tuple[int, int]  # the plate after the area prefilter
    frames_written: int
    padded_frames: int
    notes: list[str]
    footprint_fraction: float    # of the canvas pixels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["video"], d["mask"] = str(self.video), str(self.mask)
        d["source"] = {**asdict(self.source), "path": str(self.source.path), "fps": float(self.source.fps)}
        d["settings"]["size"] = str(self.settings.size)
        return d


def plate_crop(picture: PictureBox, crop: str) -> tuple[int, int, int, int]:
    """The window ``(x, y, w, h)`` inside the picture: at most 2.39:1 tall-wise and wide-wise."""
    w, h = picture.width, picture.height
    if crop == "none":
        return 0, 0, w, h
    aspect = w / h
    if abs(aspect - TARGET_ASPECT) <= 0.01 * TARGET_ASPECT:
        return 0, 0, w, h
    if aspect > TARGET_ASPECT:  # wider than 2.39: keep the centre columns
        cw = 2 * round(h * TARGET_ASPECT / 2)
        return 2 * ((w - cw) // 4), 0, cw, h
    ch = 2 * round(w / TARGET_ASPECT / 2)
    y = {"top": 0, "center": 2 * ((h - ch) // 4), "bottom": h - ch}[crop]
    return 0, y, w, ch


def _check_outputs(source: Path, video: Path, mask: Path) -> None:
    if source.resolve() in (video.resolve(), mask.resolve()):
        raise Equi360Error("the output would overwrite the source clip: choose another name")
    if video.resolve() == mask.resolve():
        raise Equi360Error("the mask must be a different file from the reference video")
    for p in (video, mask):
        if p.suffix.lower() != ".mkv":
            raise Equi360Error(f"{p}: write the reference and its mask as .mkv (lossless Matroska)")


def default_mask_path(video: Path) -> Path:
    return video.with_name(f"{video.stem}_mask{video.suffix}")


def build_reference(source, output, mask=None, settings: ReferenceSettings | None = None,
                    progress: Callable[[int, int | None], None] | None = None) -> ReferenceResult:
    """Project the flat clip ``source`` onto the equirect canvas; write the reference video ``output``
    (.mkv, lossless; unknown region exactly black) and the mask (.mkv, white = region to generate).

    ``progress(done, total)`` is called after each frame (``total`` is None while unknown)."""
    settings = settings or ReferenceSettings()
    # Absolute from here on: the placement record names the source for the engine, batch and score, which
    # run from other folders. (Outputs are made absolute without following links, which atomic_outputs refuses.)
    source, output = Path(source).resolve(), Path(os.path.abspath(output))
    mask = Path(os.path.abspath(mask)) if mask is not None else default_mask_path(output)
    _check_outputs(source, output, mask)
    info = probe(source)
    if settings.fps is None:
        settings = replace(settings, fps=float(info.fps))
    if settings.start_s >= info.duration_s > 0:
        raise Equi360Error(f"start {settings.start_s:g} s is past the end of the clip ({info.duration_s:.2f} s)")

    notes: list[str] = []
    if info.orientation:
        notes.append(f"shown {describe_orientation(info.orientation)}, as the file's display matrix asks: the "
                     f"picture is {info.width}x{info.height}")
    span_s = None if settings.frames is None else settings.frames / settings.fps
    picture = (detect_picture(info, settings.start_s, span_s) if settings.detect_letterbox
               else PictureBox(0, 0, info.width, info.height))
    # (An odd size alone loses its last row or column, which keeps 4:2:0 chroma aligned: not bars.)
    if picture.x or picture.y or picture.width < info.width - 1 or picture.height < info.height - 1:
        notes.append(f"letterbox/pillarbox bars removed: picture is {picture.width}x{picture.height} "
                     f"at ({picture.x}, {picture.y}) of {info.width}x{info.height}")
    cx, cy, cw, ch = plate_crop(picture, settings.crop)
    if (cw, ch) != (picture.width, picture.height):
        notes.append(f"cropped to 2.39:1 ({settings.crop}): {cw}x{ch} of {picture.width}x{picture.height}")
    window = PlateCrop(cx, cy, cw, ch, picture.width, picture.height)
    camera = settings.camera
    notes += settings.version.sweet_spot_warnings(camera.hfov_deg, cw / ch)
    if abs(float(info.fps) - settings.fps) > 1e-3:
        notes.append(f"frame rate resampled from {float(info.fps):.3f} to {settings.fps:g} fps (nearest frame)")

    plate_size = prefiltered_plate_size(camera, window, settings.size)
    mapping = PlateMapping(camera, window, settings.size, plate_size, settings.feather_px)
    fps = frame_rate(settings.fps)

    total = settings.frames
    written = 0
    with atomic_outputs(output, mask) as (tmp_video, tmp_mask):
        writer = LosslessVideoWriter(tmp_video, settings.size.width, settings.size.height, fps, settings.codec)
        try:
            canvas = None
            for k, plate, repeated in decode_plates(info, picture, (cx, cy, cw, ch), plate_size,
                                                    settings.fps, settings.start_s, settings.frames):
                if not repeated:
                    canvas = mapping.project(plate)
                writer.write(canvas)
                written += 1
                if progress:
                    progress(written, total)
            if written == 0:
                raise Equi360Error(f"{source}: no frames at or after {settings.start_s:g} s")
            target = settings.frames if settings.frames is not None else round_up_frame_count(written)
            padded = target - written
            for _ in range(padded):  # hold the last frame: the model needs 8k+1 frames
                writer.write(canvas)
                written += 1
                if progress:
                    progress(written, target)
        finally:
            writer.close()
        # The camera is static, so the mask is one image; written after the video so the two encoders
        # never hold memory at the same time.
        write_held_image(tmp_mask, mapping.mask, written, fps)
    if settings.frames is None and written - padded < info.frame_count - 1 and not settings.start_s:
        notes.append(f"the file holds {written - padded} of the {info.frame_count} frames its header announces "
                     "(cut short or damaged): those were used")
    if padded:
        notes.append(f"the clip gave {target - padded} frames: padded to {target} by holding the last frame")
    elif settings.frames is not None and info.duration_s - settings.start_s > span_s + 0.5 / settings.fps:
        notes.append(f"trimmed: used {span_s:.2f} s from {settings.start_s:g} s of a "
                     f"{info.duration_s:.2f} s clip ({settings.frames} frames at {settings.fps:g} fps)")
    result = ReferenceResult(output, mask, info, settings, picture, window, plate_size, written, padded, notes,
                             mapping.footprint_pixels / (settings.size.width * settings.size.height))
    write_json_atomically(sidecar_path(output), result.to_dict())
    return result


def sidecar_path(video: Path) -> Path:
    """Where the reference's placement is recorded (camera, picture box, window, plate size, timing),
    so that its output can be scored against the source later: ``reference.json`` next to ``reference.mkv``."""
    return Path(video).with_suffix(".json")


@dataclass(frozen=True)
class Placement:
    """A reference's sidecar, read back: everything needed to put a 360° output back on the source."""
    source: Path
    camera: Camera
    picture: PictureBox
    window: PlateCrop
    plate_size: tuple[int, int]
    fps: float
    start_s: float
    frames: int          # in the reference (8k+1)
    padded: int          # of those, held copies of the clip's last frame
    source_size: tuple[int, int] | None = None  # the clip's picture as shown, when the record says

    @property
    def source_frames(self) -> int:
        """The frames that come from the clip (the delivery keeps these, not the padding)."""
        return self.frames - self.padded

    @property
    def frame_rate(self) -> Fraction:
        """The reference's frame rate, exactly as its video was written."""
        return frame_rate(self.fps)

    @property
    def crop(self) -> tuple[int, int, int, int]:
        return int(self.window.x), int(self.window.y), int(self.window.width), int(self.window.height)


def load_placement(reference_video) -> Placement:
    path = sidecar_path(Path(reference_video))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        settings = data["settings"]
        return Placement(Path(data["source"]["path"]), Camera(**settings["camera"]), PictureBox(**data["picture"]),
                         PlateCrop(**data["window"]), tuple(data["plate_size"]), float(settings["fps"]),
                         float(settings["start_s"]), int(data["frames_written"]), int(data["padded_frames"]),
                         (int(data["source"]["width"]), int(data["source"]["height"])))
    except FileNotFoundError:
        raise Equi360Error(f"{path}: no placement record next to the reference (build the reference again "
                           "with this version)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise Equi360Error(f"{path}: damaged placement record ({err})") from None


def settings_for(source: SourceSpec) -> ReferenceSettings:
    """The reference a job's ``source`` asks for."""
    camera = Camera(hfov_deg=source.hfov_deg, yaw_deg=source.yaw_deg, pitch_deg=source.pitch_deg,
                    roll_deg=source.roll_deg, shift_x=source.shift_x, shift_y=source.shift_y)
    return ReferenceSettings(camera=camera, lora_version=source.lora_version, crop=source.crop,
                             size=CanvasSize.parse(source.size) if source.size else None, frames=source.frames,
                             fps=source.fps, start_s=source.start_s)


def built_from(reference: Path, mask: Path, source: Path, settings: ReferenceSettings) -> bool:
    """Whether ``reference`` and ``mask`` are there, built from ``source`` with ``settings`` (as their
    placement record says; an unset frame rate is the clip's own): a job run again does not rebuild them."""
    try:
        data = json.loads(sidecar_path(reference).read_text(encoding="utf-8"))
        recorded, built_source = data["settings"], Path(data["source"]["path"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False
    wanted = json.loads(json.dumps({**asdict(settings), "size": str(settings.size)}))
    if settings.fps is None:
        recorded = {**recorded, "fps": None}
    return (recorded == wanted and built_source == Path(source).resolve() and reference.is_file()
            and mask.is_file())


def unfinished_job(root: Path, job) -> Path | None:
    """A job folder under ``root`` that the same conversion (the same job: its source, settings and
    reference) left half-made (Blender or the engine was killed): converting again continues it from its
    last finished window instead of starting over. The newest such folder, or None."""
    for folder in sorted((p.parent for p in root.glob(f"*/{JOB_FILE}")), reverse=True):  # names end in a time
        try:
            # (An engine has run there: a folder made for another strip of this batch is not a leftover.)
            if (folder / LOG_FILE).exists() and load_job(folder) == job and not delivered_path(folder, job).exists():
                return folder
        except Equi360Error:
            continue
    return None
