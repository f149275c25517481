"""``python -m blender_equi360 preview OUT -o sheet.png``: the whole sphere at a glance.

One PNG: the equirect frame across the top, and below it six 90° perspective views — front (the plate's
heading), left, right, back, up, down — each labelled, with the plate (the part that is the source, not
generated) outlined in yellow wherever it shows.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np

from ..geometry.camera import Camera
from ..geometry.projection import equirect_to_perspective
from ..jobs.atomic import atomic_outputs
from ..jobs.errors import Equi360Error
from ..jobs.job import JOB_FILE, job_path, load_job
from ..media.video import encode_image, probe, read_frames, resize, resize_nearest

VIEWS = (("FRONT", 0.0, 0.0), ("LEFT", -90.0, 0.0), ("RIGHT", 90.0, 0.0),
         ("BACK", 180.0, 0.0), ("UP", 0.0, 90.0), ("DOWN", 0.0, -90.0))  # name, yaw, pitch
VIEW_FOV_DEG = 90.0
VIEW_SIZES = (64, 2048)  # pixels: smaller is unreadable, larger makes a sheet of hundreds of MB
OUTLINE = np.array([255, 220, 0], np.uint8)
GAP = 8
BACKGROUND = 24

# A 5×7 bitmap font, just the letters the labels need.
_GLYPHS = {
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01111 10000 10000 10000 10000 10000 01111", "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01111 10000 10000 10011 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111", "N": "10001 11001 10101 10011 10001 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "R": "11110 10001 10001 11110 10100 10010 10001", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "W": "10001 10001 10001 10101 10101 10101 01010",
    " ": "00000 00000 00000 00000 00000 00000 00000",
}


def _label(image: np.ndarray, text: str, scale: int = 3) -> None:
    """Draw ``text`` in white with a dark box, at the top-left corner of ``image`` (in place)."""
    pad = 2 * scale
    width, height = len(text) * 6 * scale + pad, 7 * scale + 2 * pad
    image[:height, :width] = image[:height, :width] // 3
    for k, char in enumerate(text):
        rows = np.array([[c == "1" for c in row] for row in _GLYPHS[char].split()])
        big = rows.repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = pad, pad + k * 6 * scale
        image[y:y + big.shape[0], x:x + big.shape[1]][big] = 255


def _outline(region: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of boolean ``region`` within ``width`` of its edge."""
    inner = region.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return region & ~inner


def _job_mask(job_dir: Path | None) -> np.ndarray | None:
    """The job's mask (255 generated, 0 plate), or None without a job."""
    if job_dir is None:
        return None
    job = load_job(job_dir)
    return next(read_frames(job_path(job_dir, job.mask), "gray"))


def _job_of(video: Path) -> Path | None:
    return video.parent if (video.parent / JOB_FILE).is_file() else None


def preview_sheet(video, output, frame: int | None = None, job_dir=None, view_size: int = 480) -> Path:
    """Write the preview sheet of frame ``frame`` (default: the middle one) of the equirect ``video``;
    ``job_dir`` (default: the video's folder when it holds a job) gives the plate outline."""
    video, output = Path(video), Path(output)
    if output.suffix.lower() != ".png":
        raise Equi360Error(f"{output}: the preview sheet is a PNG: name it .png")
    if not (isinstance(view_size, int) and VIEW_SIZES[0] <= view_size <= VIEW_SIZES[1]):
        raise Equi360Error(f"the view size must be {VIEW_SIZES[0]} to {VIEW_SIZES[1]} pixels")
    if frame is not None and (not isinstance(frame, int) or frame < 0):
        raise Equi360Error(f"frame {frame} is not a frame number: count from 0")
    info = probe(video)
    if abs(info.width - 2 * info.height) > 1:
        raise Equi360Error(f"{video}: {info.width}×{info.height} is not an equirect video (2:1)")
    index = info.frame_count // 2 if frame is None else frame
    picture = next(itertools.islice(read_frames(video), index, None), None)
    if picture is None:
        raise Equi360Error(f"{video}: has no frame {index} (it has {info.frame_count}: 0 to {info.frame_count - 1})")
    job_dir = Path(job_dir) if job_dir is not None else _job_of(video)
    mask = _job_mask(job_dir)
    plate = resize_nearest(mask, info.width, info.height) < 128 if mask is not None else None

    v = view_size
    sheet = np.full((int(1.5 * v) + 2 * v + 4 * GAP, 3 * v + 4 * GAP, 3), BACKGROUND, np.uint8)
    top = resize(picture, 3 * v, int(1.5 * v), interpolation="AREA")
    if mask is not None:
        top[_outline(resize_nearest(mask, top.shape[1], top.shape[0]) < 128)] = OUTLINE
    sheet[GAP:GAP + top.shape[0], GAP:GAP + top.shape[1]] = top
    for k, (name, yaw, pitch) in enumerate(VIEWS):
        camera = Camera(VIEW_FOV_DEG, yaw_deg=yaw, pitch_deg=pitch)
        view = np.clip(equirect_to_perspective(picture, (v, v), camera) + 0.5, 0, 255).astype(np.uint8)
        if plate is not None:
            inside = equirect_to_perspective(plate.astype(np.float32)[..., None], (v, v), camera)[..., 0] > 0.5
            view[_outline(inside)] = OUTLINE
        _label(view, name)
        y = 2 * GAP + top.shape[0] + (k // 3) * (v + GAP)
        x = GAP + (k % 3) * (v + GAP)
        sheet[y:y + v, x:x + v] = view
    write_png(output, sheet)
    return output


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG, written under a temporary name and renamed."""
    with atomic_outputs(path) as (tmp,):
        encode_image(tmp, "png", av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
