# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's last stage, shared by every backend: generated frames → the delivered video."""

from __future__ import annotations

import time
from pathlib import Path

from blender_equi360.jobs.job import Job, job_path, output_path
from blender_equi360.media.video import read_frames
from blender_equi360.stages.finish import finish
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


def deliver(job_dir: Path, job: Job, frames, channel: Channel, title: str | None = None) -> Path:
    """The generated frames (at the model's canvas; a re-iterable sequence, one per delivered frame) →
    the delivered video: tone-matched to the plate, at the job's delivery size, with the plate projected
    again from the source (``finish``)."""
    reference = job_path(job_dir, job.reference)
    placement = placement_with_source(reference)
    mask = next(read_frames(job_path(job_dir, job.mask), "gray"))
    out = output_path(job_dir, job)
    started = time.monotonic()

    def progress(k, total):
        channel.progress("finish", k, total, started)
        channel.check_cancel()
    return finish(frames, placement.source, placement, read_frames(reference), mask, out, placement.frame_rate,
                  title=title, progress=progress, settings=job.delivery)
