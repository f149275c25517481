# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine run JOB_DIR``: read the job, pick a backend, make the clip window by window, deliver
it, report events.

A clip longer than one model window is made in overlapping windows (:mod:`blender_equi360.jobs.windows`),
each written to the job folder as soon as it is done, so a job that dies halfway continues where it
stopped when it is run again. The backends are generators of windows (:mod:`engine.generators`).
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from blender_equi360.jobs.atomic import atomic_outputs
from blender_equi360.jobs.canvas import CanvasSize
from blender_equi360.jobs.errors import Equi360Error, IncompatibleJob
from blender_equi360.jobs.job import LOCK_FILE, LOG_FILE, Job, check_job_folder, job_path, load_job
from blender_equi360.jobs.protocol import EXIT_CODES
from blender_equi360.jobs.windows import (
    Manifest,
    TimeWindow,
    fingerprint,
    open_manifest,
    plan_windows,
    remove_partials,
)
from blender_equi360.media.video import LosslessVideoWriter, probe, read_frames
from blender_equi360.stages.reference import build_reference, built_from, settings_for

from . import draft, ltx
from .deliver import BackgroundFinish, placement_with_source
from .device import has_device
from .protocol_io import Channel, EngineError, JobProgress

GENERATORS = {"draft": draft.DraftGenerator, "ltx": ltx.LtxGenerator}  # backend → its generator (generators.py)
# Rough seconds per frame of each part of a job (the finish's at 3840×1920), only to weigh the parts against
# each other in the job's progress: the draft and finish measured on 2 cores (docs/BENCHMARKS.md), LTX a guess
# until it is measured on a GPU.
PART_SECONDS_PER_FRAME = {"reference": 0.05, "draft": 0.5, "ltx": 1.0, "finish": 0.2}
LTX_PREPARE_S = 90.0  # loading the models and encoding the prompt
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def choose_backend(job: Job, channel: Channel) -> str:
    """``auto`` is LTX when CUDA and the model files are there, else the draft with a warning."""
    if job.backend == "draft":
        return "draft"
    if job.backend == "ltx":
        return "ltx"  # without CUDA, the LTX generator says so (no_cuda)
    has_cuda = has_device()
    if has_cuda and job.models.configured():
        return "ltx"
    why = "no CUDA GPU is visible" if not has_cuda else "the model files are not all configured"
    channel.warning("draft_fallback", f"{why}: making a DRAFT (classical fill, no model) instead")
    return "draft"


def generation_inputs(job_dir: Path, job: Job, backend: str) -> dict:
    """Everything a window's frames depend on (the job's generation fields, the backend, the input files):
    a finished window is reused only while these stay the same (the delivery settings, such as the output
    name or size, are not among them)."""
    settings = {name: asdict(value) if is_dataclass(value) else value
                for name, value in ((name, getattr(job, name)) for name in Job.generation_fields())}
    models = {name: _file_identity(job_path(job_dir, path)) if path else None
              for name, path in asdict(job.models).items()} if backend == "ltx" else None
    return {**settings, "backend": backend, "models": models,
            "reference": _file_identity(job_path(job_dir, job.reference)),
            "mask": _file_identity(job_path(job_dir, job.mask))}


def _file_identity(path: Path) -> list | None:
    """Name and size: survives a copy to the farm's storage (a modified time would not)."""
    try:
        return [path.name, path.stat().st_size]
    except OSError:
        return None  # the backend reports a missing file in its own words


def window_reference(reference: Path, window: TimeWindow) -> np.ndarray:
    """The reference's frames for ``window``, its last frame held up to the model's length."""
    frames = list(itertools.islice(read_frames(reference, start=window.start), window.frames))
    if len(frames) != window.frames:
        raise EngineError("bad_input", f"{reference}: has {window.start + len(frames)} frames, fewer than the "
                                       f"{window.end} the job needs: rebuild the reference")
    frames += [frames[-1]] * (window.length - window.frames)
    return np.stack(frames)


def conditioning_frames(previous_file: Path, previous: TimeWindow, window: TimeWindow) -> np.ndarray:
    """The previous window's output over the frames it shares with ``window``, read from its file (so a
    resumed job conditions on exactly what an uninterrupted one did)."""
    offset = window.start - previous.start
    return np.stack(list(itertools.islice(read_frames(previous_file, start=offset), window.overlap)))


def check_inputs(job_dir: Path, job: Job) -> None:
    """The reference and its mask belong together, on a canvas the model takes, before any work."""
    reference, mask = probe(job_path(job_dir, job.reference)), probe(job_path(job_dir, job.mask))
    try:
        CanvasSize(reference.width, reference.height)
    except Equi360Error as err:
        raise EngineError("bad_input", f"{reference.path}: {err}: rebuild the reference") from None
    if job.canvas and f"{reference.width}x{reference.height}" != job.canvas:
        raise EngineError("bad_input", f"the reference {reference.path.name} is {reference.width}x{reference.height} "
                                       f"but the job's canvas is {job.canvas}: rebuild the reference at {job.canvas}, "
                                       "or set canvas to null to generate at the reference's size")
    if (mask.width, mask.height) != (reference.width, reference.height):
        raise EngineError("bad_input", f"the mask {mask.path.name} is {mask.width}x{mask.height} but the reference "
                                       f"{reference.path.name} is {reference.width}x{reference.height}: name the "
                                       "mask built with this reference")


def open_windows(job_dir: Path, job: Job, backend: str, channel: Channel) -> Manifest:
    """The job's plan of windows and which of them are made already (windows.json)."""
    placement = placement_with_source(job_path(job_dir, job.reference))
    total = min(placement.source_frames, job.output_frames or placement.source_frames)
    windows = plan_windows(total, job.window_frames, job.window_overlap)
    manifest, notes = open_manifest(job_dir, windows, fingerprint(generation_inputs(job_dir, job, backend)))
    for note in notes:
        channel.log(note)
    channel.log(f"{total} frames in {len(windows)} window(s) of up to {job.window_frames} "
                f"(overlap {job.window_overlap}); {len(manifest.pending())} to make")
    return manifest


def make_windows(job_dir: Path, job: Job, manifest: Manifest, generator, channel: Channel, finishing) -> None:
    """Make every window the manifest does not have yet, telling ``finishing`` (:class:`.deliver.BackgroundFinish`)
    of each, and checking it between windows."""
    reference = job_path(job_dir, job.reference)
    frame_rate = placement_with_source(reference).frame_rate
    windows, pending = manifest.windows, manifest.pending()
    if not pending:
        channel.job.advance("prepare", 1.0)
        channel.job.advance("generate", 1.0)
        return
    generator.prepare()
    channel.job.advance("prepare", 1.0)
    channel.job.advance("generate", pending[0].index / len(windows))  # the windows made before
    for window in pending:
        finishing.check()
        channel.window = (window.index + 1, len(windows))
        frames = window_reference(reference, window)
        height, width = frames.shape[1:3]
        condition = None
        if window.overlap:
            previous = windows[window.index - 1]
            condition = conditioning_frames(manifest.window_path(previous), previous, window)
        made = generator.generate(window, frames, condition, job.seed + window.index)
        del frames, condition
        with atomic_outputs(manifest.window_path(window)) as (tmp,):
            writer = LosslessVideoWriter(tmp, width, height, frame_rate)
            try:
                for frame in itertools.islice(made, window.frames):
                    writer.write_rgb(frame)
            finally:
                writer.close()
            channel.check_cancel()  # a cancel during the write leaves no window file
        manifest.mark_done(window)
        finishing.window_made(window)
        channel.log(f"window {window.index + 1}/{len(windows)} done (frames {window.start}–{window.end - 1})")
    channel.window = None


@contextmanager
def job_lock(job_dir: Path):
    """Held while the job runs: a second engine on the same folder (a double start, a farm retry while
    the first worker still runs) is refused instead of mixing their files. The OS drops the lock when
    the process dies, however it dies."""
    handle = os.fdopen(os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644),
                       "r+b")
    try:
        try:
            if os.name == "nt":
                import msvcrt
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EngineError("job_busy", f"{job_dir}: another engine is running this job; wait for it or "
                                          "stop it, then run the job again") from None
        yield
    finally:
        handle.close()


def make_reference(job_dir: Path, job: Job, channel: Channel) -> None:
    """Stage ``reference``: the job's reference, mask and placement record built from its ``source``,
    unless they already were (a job run again)."""
    try:
        settings = settings_for(job.source)
    except Equi360Error as err:
        raise EngineError("bad_job", f"source: {err}") from None
    clip, reference, mask = (job_path(job_dir, p) for p in (job.source.path, job.reference, job.mask))
    if built_from(reference, mask, clip, settings):
        channel.log(f"reference: {reference.name} is already built from {clip.name}")
        channel.job.advance("reference", 1.0)
        return
    started = time.monotonic()

    def progress(done: int, total: int | None) -> None:
        channel.progress("reference", done, total or done, started)
        channel.check_cancel()
    result = build_reference(clip, reference, mask, settings, progress)
    channel.log(f"reference: {result.frames_written} frames, {settings.size}, plate {result.window.width}x"
                f"{result.window.height} → {result.footprint_fraction:.1%} of the canvas")
    for note in result.notes:
        channel.log(f"reference: {note}")


def job_progress(job_dir: Path, job: Job, backend: str | None) -> JobProgress:
    """The job's parts weighed by their expected time: the reference (when the job gives its source), the
    models, the windows, the finish."""
    reference = job_path(job_dir, job.reference)
    try:
        if reference.is_file():
            frames = probe(reference).frame_count
        elif job.source:
            frames = job.source.frames or probe(job_path(job_dir, job.source.path)).frame_count
        else:
            frames = 0
    except (Equi360Error, OSError):
        frames = 0  # the stage that reads the file says what is wrong with it
    frames = max(1, min(frames or 1, job.output_frames or frames or 1))
    weights = {"reference": PART_SECONDS_PER_FRAME["reference"] * frames if job.source else 0.0}
    if job.stop_after == "delivery":
        size = job.delivery.canvas
        weights.update(prepare=LTX_PREPARE_S if backend == "ltx" else 0.0,
                       generate=PART_SECONDS_PER_FRAME[backend] * frames,
                       finish=PART_SECONDS_PER_FRAME["finish"] * frames * size.width * size.height / (3840 * 1920))
    return JobProgress(weights)


def run_job(job_dir: Path, job: Job, backend: str, channel: Channel) -> dict:
    """Build the reference when the job gives its source, make the windows that are not made yet, then
    deliver; returns the ``done`` event's fields."""
    channel.log(f"job {job_dir}: backend {backend}, preset {job.preset}")
    channel.job = job_progress(job_dir, job, backend)
    with job_lock(job_dir):
        remove_partials(job_dir)
        if job.source:
            make_reference(job_dir, job, channel)
        if job.stop_after == "reference":
            return {"outputs": {"reference": str(job_path(job_dir, job.reference)),
                                "mask": str(job_path(job_dir, job.mask))},
                    "peak_vram_gb": None, "memory_plan_gb": None, "backend": None, "draft": False}
        check_inputs(job_dir, job)
        generator = GENERATORS[backend](job_dir, job, channel)
        manifest = open_windows(job_dir, job, backend, channel)
        finishing = BackgroundFinish(job_dir, job, manifest, channel, generator.title)
        try:
            make_windows(job_dir, job, manifest, generator, channel, finishing)
        except BaseException:
            finishing.stop()  # no delivery is left half-written
            raise
        finally:
            generator.close()
        out = finishing.result()
    return {"outputs": {"video": str(out)}, **generator.report(), "backend": backend, "draft": backend == "draft"}


def run(job_dir, channel: Channel) -> int:
    """Run one job; returns the process exit status. Every outcome ends with a ``done`` or ``error``."""
    job_dir = Path(job_dir)
    started = time.monotonic()
    try:
        if not job_dir.is_dir():
            raise EngineError("bad_job", f"{job_dir}: no such job folder")
        job_dir = job_dir.resolve()
        try:
            channel.open_log(job_dir / LOG_FILE)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise EngineError("bad_job", f"{LOG_FILE} in {job_dir} is a symbolic link: the engine writes only "
                                             "inside the job folder; remove the link") from None
            raise
        try:
            job = load_job(job_dir)
            check_job_folder(job_dir, job)  # before any work: names, the folder's bounds, links
        except IncompatibleJob as err:
            raise EngineError("incompatible_job", str(err)) from None
        except Equi360Error as err:
            raise EngineError("bad_job", str(err)) from None
        backend = choose_backend(job, channel) if job.stop_after == "delivery" else None
        result = run_job(job_dir, job, backend, channel)
        channel.emit("done", **result, seconds=round(time.monotonic() - started, 2))
        return 0
    except EngineError as err:
        return _fail(channel, err.code, str(err))
    except IncompatibleJob as err:
        return _fail(channel, "incompatible_job", str(err))
    except Equi360Error as err:  # unreadable inputs named by the job
        return _fail(channel, "bad_input", str(err))
    except OSError as err:
        return _fail(channel, *_io_error(job_dir, err))
    except Exception as err:  # a bug: say so on the protocol too, then keep the traceback in the log
        channel.emit("error", code="internal", message=f"internal error: {err!r}; see {LOG_FILE}")
        raise


def _io_error(job_dir: Path, err: OSError) -> tuple[str, str]:
    where = Path(err.filename).parent if err.filename else job_dir  # the folder: a file's name may be temporary
    kept = "the windows already made are kept"
    if err.errno in NO_ROOM:
        return "disk_full", f"no room left to write {where} ({err.strerror}): free some space and run the job " \
                            f"again; {kept}"
    if err.errno in NO_PERMISSION:
        return "permission_denied", f"not allowed to write {where} ({err.strerror}): make the job folder " \
                                    f"writable for this user and run the job again; {kept}"
    return "bad_input", f"{where}: {err.strerror or err}"


def _fail(channel: Channel, code: str, message: str) -> int:
    channel.log(f"error [{code}]: {message}")
    channel.emit("error", code=code, message=message)
    return EXIT_CODES[code]
