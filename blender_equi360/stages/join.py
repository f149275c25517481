"""A long clip's windows joined into the clip: in order, cross-faded where they overlap (the plan and the
record are :mod:`blender_equi360.jobs.windows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..jobs.errors import Equi360Error
from ..jobs.windows import WINDOWS_DIR, Manifest, TimeWindow
from ..media.video import read_frames


def crossfade_weight(j: int, overlap: int) -> float:
    """The newer window's share of shared frame ``j`` (0-based): rising linearly, never 0 or 1."""
    return (j + 1) / (overlap + 1)


def assemble(windows: list[TimeWindow], frames_of: Callable[[TimeWindow], Iterable[np.ndarray]]
             ) -> Iterator[np.ndarray]:
    """The clip's frames, in order, from the windows' outputs, cross-faded where they overlap. Streams:
    only the frames a window shares with the next are held until the next window is read."""
    held: list[np.ndarray] = []
    for k, window in enumerate(windows):
        hand_over = windows[k + 1].start - window.start if k + 1 < len(windows) else window.frames
        passed, new_held = 0, []
        for j, frame in enumerate(frames_of(window)):
            if j >= window.frames:
                break
            passed += 1
            if j >= hand_over:
                new_held.append(frame)
                continue
            if j < len(held):
                w = crossfade_weight(j, len(held))
                frame = np.clip(held[j] * (1.0 - w) + frame * w + 0.5, 0, 255).astype(np.uint8)
            yield frame
        if passed != window.frames:
            raise Equi360Error(f"window {window.index} has {passed} frames instead of {window.frames}: "
                               f"delete {WINDOWS_DIR}/{window.file_name} and run the job again")
        held = new_held


class JoinedVideo:
    """The assembled clip as a re-iterable sequence (every pass reads the window files again)."""

    def __init__(self, windows: list[TimeWindow], folder: Path):
        self.windows, self.folder = windows, Path(folder)

    def __len__(self) -> int:
        return self.windows[-1].end

    def __iter__(self) -> Iterator[np.ndarray]:
        return assemble(self.windows, lambda w: read_frames(self.folder / w.file_name))


def joined_video(manifest: Manifest) -> JoinedVideo:
    """The clip a job's finished windows make, read back from their files each time it is iterated."""
    return JoinedVideo(manifest.windows, manifest.folder)
