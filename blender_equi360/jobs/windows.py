"""Clips longer than one model window: the window plan and the job folder's record of it (the windows are
joined into the clip by :mod:`blender_equi360.stages.join`).

A clip of N frames is cut into overlapping windows of at most ``window`` frames (8k+1, the model's
lengths), each starting ``window − overlap`` frames after the previous one. Each window after the first
is conditioned on the previous window's output over their ``overlap`` shared frames, and in those frames
the two outputs are cross-faded, so the generated region carries on across the boundary instead of
jumping.

The job folder records the plan and each window's state in ``windows.json``; each window's output is a
lossless video in ``windows/``, written under a temporary name and renamed, and only then marked done.
Running a job again skips the windows marked done, and because every window reads its conditioning
from the previous window's *file* (never from memory), a resumed job makes the same frames as one that
ran straight through.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import PARTIAL_GLOB, write_json_atomically
from .errors import Equi360Error, IncompatibleJob
from .timing import round_up_frame_count, valid_frame_count

MANIFEST_FILE = "windows.json"
WINDOWS_DIR = "windows"
MANIFEST_VERSION = 1
WINDOW_FRAMES = 121   # 5 s at 24 fps: what the model is trained on
OVERLAP_FRAMES = 25   # 1 s: three latent frames of conditioning after the first
MIN_OVERLAP = 9       # one latent frame of conditioning after the first
MIN_WINDOW = round_up_frame_count(2 * MIN_OVERLAP)  # 25: room for the smallest overlap twice
MAX_WINDOW = 257      # 10.7 s at 24 fps: twice the model's training length, already more than a GPU holds


def check_window_settings(window: int, overlap: int) -> None:
    """Raises Equi360Error unless ``window`` and ``overlap`` are lengths the model and the crossfade take."""
    if not (isinstance(window, int) and valid_frame_count(window) and MIN_WINDOW <= window <= MAX_WINDOW):
        raise Equi360Error(f"window_frames {window!r} must be 8k+1 frames from {MIN_WINDOW} to {MAX_WINDOW} "
                           "(e.g. 121)")
    if not (isinstance(overlap, int) and valid_frame_count(overlap) and overlap >= MIN_OVERLAP):
        raise Equi360Error(f"window_overlap {overlap!r} must be 8k+1 frames and at least {MIN_OVERLAP} (e.g. 25)")
    if 2 * overlap > window:
        largest = 1 + 8 * ((window // 2 - 1) // 8)  # the longest 8k+1 that is at most half the window
        raise Equi360Error(f"window_overlap {overlap} must be at most half of window_frames {window} "
                           f"(e.g. {largest})")


@dataclass(frozen=True)
class TimeWindow:
    index: int
    start: int    # its first frame, in the clip
    frames: int   # frames of the clip it covers
    length: int   # frames the model makes: ``frames`` rounded up to 8k+1 (the clip's last frame held)
    overlap: int  # its first ``overlap`` frames are also the previous window's last ones (0 for the first)

    @property
    def end(self) -> int:
        return self.start + self.frames

    @property
    def file_name(self) -> str:
        return window_file_name(self.index)


def window_file_name(index: int) -> str:
    return f"window_{index:04d}.mkv"


def plan_windows(total: int, window: int = WINDOW_FRAMES, overlap: int = OVERLAP_FRAMES) -> list[TimeWindow]:
    """Overlapping windows that cover frames ``0 .. total``; a clip of one window or less is one window."""
    if total < 1:
        raise Equi360Error("a clip needs at least one frame")
    check_window_settings(window, overlap)
    windows, start = [], 0
    while True:
        frames = min(window, total - start)
        windows.append(TimeWindow(len(windows), start, frames, round_up_frame_count(frames), overlap if start else 0))
        if start + frames >= total:
            return windows
        start += window - overlap


def fingerprint(settings: dict) -> str:
    """A short hash of everything a window's output depends on."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """``windows.json``: the plan, what it was made from, and which windows are done."""
    path: Path
    inputs: str                 # fingerprint of the settings the windows were made with
    windows: list[TimeWindow]
    done: set[int]

    @property
    def folder(self) -> Path:
        return self.path.parent / WINDOWS_DIR

    def window_path(self, window: TimeWindow) -> Path:
        return self.folder / window.file_name

    def pending(self) -> list[TimeWindow]:
        return [w for w in self.windows if w.index not in self.done]

    def mark_done(self, window: TimeWindow) -> None:
        self.done.add(window.index)
        self.save()

    def save(self) -> None:
        write_json_atomically(self.path, {
            "version": MANIFEST_VERSION, "inputs": self.inputs,
            "windows": [{**asdict(w), "file": f"{WINDOWS_DIR}/{w.file_name}",
                         "state": "done" if w.index in self.done else "pending"} for w in self.windows]})



def open_manifest(job_dir, windows: list[TimeWindow], inputs: str) -> tuple[Manifest, list[str]]:
    """The job's manifest, continued when it was made from the same inputs with the same plan, else new.

    Returns it with notes for the user (what was kept or discarded). A window marked done whose file is
    gone runs again. A manifest this version cannot read raises :class:`IncompatibleJob` and changes
    nothing."""
    path = Path(job_dir) / MANIFEST_FILE
    manifest, notes = Manifest(path, inputs, windows, set()), []
    manifest.folder.mkdir(exist_ok=True)
    if not path.exists():
        manifest.save()
        return manifest, notes
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data["version"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise IncompatibleJob(f"{path}: unreadable ({err}); delete it and the {WINDOWS_DIR} folder to start "
                              "the job over") from None
    if version != MANIFEST_VERSION:
        raise IncompatibleJob(f"{path.parent}: made by another version of Equi360 (windows manifest version "
                              f"{version}; this one reads {MANIFEST_VERSION}): continue it with that version, "
                              f"or delete {MANIFEST_FILE} and {WINDOWS_DIR}/ to start it over")
    try:
        recorded = [TimeWindow(**{k: w[k] for k in ("index", "start", "frames", "length", "overlap")})
                    for w in data["windows"]]
        recorded_done = {w["index"] for w in data["windows"] if w["state"] == "done"}
    except (KeyError, TypeError) as err:
        raise IncompatibleJob(f"{path}: damaged ({err!r}); delete it and the {WINDOWS_DIR} folder to start "
                              "the job over") from None
    if data.get("inputs") != inputs or recorded != windows:
        for stale in recorded_done:
            (manifest.folder / window_file_name(stale)).unlink(missing_ok=True)
        if recorded_done:
            notes.append(f"the job changed since {len(recorded_done)} window(s) were made: starting over")
    else:
        manifest.done = {i for i in recorded_done if manifest.window_path(windows[i]).is_file()}
        if manifest.done:
            notes.append(f"continuing: {len(manifest.done)} of {len(windows)} windows already done")
        if len(manifest.done) < len(recorded_done):
            notes.append(f"{len(recorded_done) - len(manifest.done)} window file(s) were missing: made again")
    manifest.save()
    return manifest, notes


def remove_partials(job_dir: Path) -> None:
    """Temporary files and folders a killed run left behind in the job folder and its windows folder (call
    it holding the job's lock: a running job's temporary files look the same). A link is removed, never
    followed."""
    for folder in (job_dir, job_dir / WINDOWS_DIR):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for leftover in folder.glob(PARTIAL_GLOB):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
