"""Still images: the compositing passes' files (OpenEXR half float in linear light, 16-bit PNG), image
sequences as Blender numbers them, and luma."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from .video import encode_image


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function undone (0..1 in, 0..1 out): Blender reads video as sRGB, EXR as linear."""
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


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


def luma(image: np.ndarray) -> np.ndarray:
    """Rec. 709 luma as float32; a 2-D array is taken as luma already."""
    f = np.asarray(image, dtype=np.float32)
    return f @ np.array([0.2126, 0.7152, 0.0722], np.float32) if f.ndim == 3 else f
