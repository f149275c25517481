# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's last stage, shared by every backend: generated frames → the delivered video, on a thread of
its own that follows the generation window by window."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from blender_equi360.jobs.job import Job, job_path, output_path
from blender_equi360.jobs.windows import Manifest, TimeWindow
from blender_equi360.media.video import read_frames
from blender_equi360.stages.finish import finish
from blender_equi360.stages.join import joined_video
from blender_equi360.stages.reference import Placement, load_placement, sidecar_path

from .protocol_io import Channel, EngineError


def placement_with_source(reference: Path) -> Placement:
    """The reference's placement, once its source clip is known to be there (checked before any window
    is made, too: the delivery needs it)."""
    placement = load_placement(reference)
    if not placement.source.is_file():
        raise EngineError("bad_input", f"the source clip {placement.source} (recorded in "
                                       f"{sidecar_path(reference).name}) is missing: the plate is laid back "
                                       "from it; put it back or rebuild the reference")
    return placement


class BackgroundFinish:
    """The finish of a job on its own thread, following the generation: each window is finished and encoded
    as soon as it is made (:class:`blender_equi360.stages.join.GeneratedVideo` waits for it), so a clip takes
    its generation plus the finishing of its last window. The compiled loops and the encoder release the
    interpreter, so the two threads really run at once.

    The main thread calls :meth:`window_made` after each window, :meth:`check` between windows (a failure of
    the finish is raised there), then :meth:`result`; or :meth:`stop` when it fails itself: the half-written
    delivery is then removed before it returns."""

    def __init__(self, job_dir: Path, job: Job, manifest: Manifest, channel: Channel, title: str | None):
        self._made = set(manifest.done)
        self._changed = threading.Condition()
        self._stopped = False
        self._error: BaseException | None = None
        self._out: Path | None = None
        reference = job_path(job_dir, job.reference)
        placement = placement_with_source(reference)
        mask = next(read_frames(job_path(job_dir, job.mask), "gray"))
        video = joined_video(manifest, reference, mask < 128, ready=self._wait_for)
        self._thread = threading.Thread(target=self._run, name="finish", daemon=True,
                                        args=(job_dir, job, video, placement, mask, channel, title))
        self._thread.start()

    def _run(self, job_dir, job, video, placement, mask, channel, title) -> None:
        try:
            self._out = deliver(job_dir, job, video, placement, mask, channel, title, self._interrupt)
        except BaseException as err:  # handed to the main thread, which reports it
            self._error = err

    def _interrupt(self) -> None:
        if self._stopped:
            raise _Stopped()

    def _wait_for(self, window: TimeWindow) -> None:
        with self._changed:
            self._changed.wait_for(lambda: window.index in self._made or self._stopped)
            if self._stopped:
                raise _Stopped()

    def window_made(self, window: TimeWindow) -> None:
        with self._changed:
            self._made.add(window.index)
            self._changed.notify_all()

    def check(self) -> None:
        """Raise the finish's failure here, if it has failed."""
        if self._error is not None and not self._thread.is_alive():
            raise self._error

    def result(self) -> Path:
        self._thread.join()
        self.check()
        return self._out

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()


class _Stopped(Exception):
    """The generation failed: the finish ends without a delivery."""


def deliver(job_dir: Path, job: Job, video, placement: Placement, mask, channel: Channel,
            title: str | None = None, interrupt=None) -> Path:
    """The generated clip (``video``, :class:`blender_equi360.stages.join.GeneratedVideo`) → the delivered
    video: tone-matched to the plate, at the job's delivery size, with the plate projected again from the
    source (``finish``). ``interrupt()``, called after each frame, may raise to stop it."""
    out = output_path(job_dir, job)
    started = time.monotonic()

    def progress(k, total):
        channel.progress("finish", k, total, started)
        channel.check_cancel()
        if interrupt:
            interrupt()
    return finish(video, placement.source, placement, mask, out, placement.frame_rate, title=title,
                  progress=progress, settings=job.delivery)
