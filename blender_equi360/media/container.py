"""Opening a video file and finding one's way in it: its first video stream, when its frames are, seeking."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from ..jobs.errors import Equi360Error


def open_video(path: Path):
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise Equi360Error(f"{path}: no such file") from None
    except av.error.EOFError:
        raise Equi360Error(f"{path}: the video has no frames (the file ends before its first one)") from None
    except (av.error.InvalidDataError, av.error.FFmpegError) as err:
        raise Equi360Error(f"{path}: not a readable video ({err.strerror or err})") from None
    if not container.streams.video:
        container.close()
        raise Equi360Error(f"{path}: has no video stream")
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe, …
        container.close()
        raise Equi360Error(f"{path}: a still image, not a video: Equi360 converts clips (make a clip of the still "
                           "first, e.g. as an image strip in Blender's Video Sequencer rendered to a movie)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def frame_time(frame, stream, origin: float, index: int, fps: Fraction) -> float:
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base) - origin
    return index / float(fps)


def stream_origin(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def seek(container, stream, t: float) -> None:
    if t > 0 and stream.time_base is not None:
        container.seek(int((t + stream_origin(stream)) / stream.time_base), stream=stream, backward=True)
    else:
        container.seek(0)
