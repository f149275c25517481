# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine run JOB_DIR``: read the job, pick a backend, write the result, report events."""

from __future__ import annotations

import os
import time
from pathlib import Path

from blender_equi360.errors import Equi360Error
from blender_equi360.job import LOG_FILE, Job, job_path, load_job, output_path
from blender_equi360.protocol import EXIT_CODES
from blender_equi360.video import probe, read_frames

from . import draft, ltx
from .deliver import deliver
from .protocol_io import Channel, EngineError


def cuda_available() -> bool:
    if os.environ.get(ltx.DEVICE_ENV) == "cpu":
        return True  # the real pipeline on the CPU, for tests and debugging
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def choose_backend(job: Job, channel: Channel) -> str:
    """``auto`` is LTX when CUDA and the model files are there, else the draft with a warning."""
    if job.backend == "draft":
        return "draft"
    if job.backend == "ltx":
        return "ltx"  # without CUDA, ltx.run_ltx says so (no_cuda)
    has_cuda = cuda_available()
    if has_cuda and job.models.configured():
        return "ltx"
    why = "no CUDA GPU is visible" if not has_cuda else "the model files are not all configured"
    channel.warning("draft_fallback", f"{why}: making a DRAFT (classical fill, no model) instead")
    return "draft"


def run_draft(job_dir: Path, job: Job, channel: Channel) -> dict:
    reference, mask = job_path(job_dir, job.reference), job_path(job_dir, job.mask)
    total = probe(reference).frame_count
    started = time.monotonic()
    frames = []
    for k, (frame, matte) in enumerate(zip(read_frames(reference), read_frames(mask, "gray")), 1):
        channel.check_cancel()
        frames.append(draft.fill_frame(frame, matte))
        channel.progress("draft", k, total, started)
    return {"outputs": {"video": str(deliver(job_dir, job, frames, channel, draft.DRAFT_TITLE))},
            "peak_vram_gb": None}


def run(job_dir, channel: Channel) -> int:
    """Run one job; returns the process exit status. Every outcome ends with a ``done`` or ``error``."""
    job_dir = Path(job_dir)
    started = time.monotonic()
    try:
        if not job_dir.is_dir():
            raise EngineError("bad_job", f"{job_dir}: no such job folder")
        try:
            job = load_job(job_dir)
            output_path(job_dir, job)  # refuse an output outside the folder before any work
        except Equi360Error as err:
            raise EngineError("bad_job", str(err)) from None
        channel.log(f"job {job_dir}: backend {job.backend}, preset {job.preset}")
        backend = choose_backend(job, channel)
        result = (run_draft if backend == "draft" else ltx.run_ltx)(job_dir, job, channel)
        channel.emit("done", **result, seconds=round(time.monotonic() - started, 2), backend=backend,
                     draft=backend == "draft")
        return 0
    except EngineError as err:
        channel.log(f"error [{err.code}]: {err}")
        channel.emit("error", code=err.code, message=str(err))
        return EXIT_CODES[err.code]
    except Equi360Error as err:  # unreadable inputs named by the job
        channel.emit("error", code="bad_input", message=str(err))
        return EXIT_CODES["bad_input"]
    except Exception as err:  # a bug: say so on the protocol too, then keep the traceback in the log
        channel.emit("error", code="internal", message=f"internal error: {err!r}; see {LOG_FILE}")
        raise


def log_path(job_dir) -> Path | None:
    path = Path(job_dir)
    return path / LOG_FILE if path.is_dir() else None
