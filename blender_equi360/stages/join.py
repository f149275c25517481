"""A long clip's windows joined into the clip: in order, cross-faded where they overlap (the plan and the
record are :mod:`blender_equi360.jobs.windows`), each frame with its tone correction (:mod:`.tone`)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..jobs.errors import Equi360Error
from ..jobs.windows import WINDOWS_DIR, Manifest, TimeWindow
from ..media.video import read_frames
from .tone import ToneTrack, crossfade_weight, fit_window


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


class GeneratedVideo:
    """The generated clip, window by window, iterated once: ``(frame, correction)`` in order, the frames
    joined (:func:`assemble`) and each window's tone fitted when it is first read (:func:`.tone.fit_window`).

    ``frames_of(window)`` and ``reference_of(window)`` give a window's generated frames and the reference's
    from its first frame on (each call anew); ``ready(window)``, when given, is called before a window is
    read and returns once it is made: the finish then streams behind the generation."""

    def __init__(self, windows: list[TimeWindow], frames_of: Callable[[TimeWindow], Iterable[np.ndarray]],
                 reference_of: Callable[[TimeWindow], Iterable[np.ndarray]], known: np.ndarray,
                 ready: Callable[[TimeWindow], None] | None = None):
        self.windows, self.frames_of, self.reference_of, self.known = windows, frames_of, reference_of, known
        self.ready = ready

    def __len__(self) -> int:
        return self.windows[-1].end

    def __iter__(self) -> Iterator[tuple[np.ndarray, tuple]]:
        track = ToneTrack()

        def window_frames(window: TimeWindow) -> Iterable[np.ndarray]:
            if self.ready:
                self.ready(window)
            fit = fit_window(lambda: itertools.islice(self.frames_of(window), window.frames),
                             itertools.islice(self.reference_of(window), window.frames), self.known)
            track.add(window, fit)
            return self.frames_of(window)
        for t, frame in enumerate(assemble(self.windows, window_frames)):
            yield frame, track.at(t)


def joined_video(manifest: Manifest, reference: Path, known: np.ndarray,
                 ready: Callable[[TimeWindow], None] | None = None) -> GeneratedVideo:
    """The clip a job's windows make, read from their files (``ready``: see :class:`GeneratedVideo`)."""
    return GeneratedVideo(manifest.windows, lambda w: read_frames(manifest.window_path(w)),
                          lambda w: read_frames(reference, start=w.start), known, ready)


def whole_clip(frames: list[np.ndarray], reference_frames: list[np.ndarray], known: np.ndarray) -> GeneratedVideo:
    """Frames held in memory, as a clip of one window (one tone fit for all of them)."""
    window = TimeWindow(0, 0, len(frames), len(frames), 0)
    return GeneratedVideo([window], lambda _: iter(frames), lambda _: iter(reference_frames), known)
