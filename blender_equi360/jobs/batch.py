"""``python -m blender_equi360 batch JOB_DIR...``: run a list of job folders through the engine, one after
the other (a night's worth of shots on one machine).

A job whose result is already there and newer than its ``job.json`` is skipped, so running the same batch
again after a crash or a kill continues where it stopped. A failing job is reported and the batch goes on;
the exit status says whether every job succeeded. Ctrl+C cancels the running job (it writes nothing) and
stops the batch.

With ``remote`` (a :class:`.remote.RemoteHost`), each job runs on that machine over SSH instead
(:class:`.remote.RemoteEngineProcess`): its source uploaded, its result downloaded into the local job folder.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .engine_process import EngineProcess
from .errors import Equi360Error
from .job import JOB_FILE, delivered_path, load_job

ENGINE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the ``engine`` package


@dataclass
class Outcome:
    job_dir: Path
    status: str          # done | skipped | failed | cancelled
    detail: str = ""
    seconds: float = 0.0


def is_done(job_dir: Path) -> bool:
    """The job's result exists and was written after its job.json (a changed job runs again)."""
    try:
        out = delivered_path(job_dir, load_job(job_dir))
    except Equi360Error:
        return False
    return out.is_file() and out.stat().st_mtime >= (job_dir / JOB_FILE).stat().st_mtime


def run_batch(job_dirs, python: str = sys.executable, log=print, remote=None, prepare_source=None) -> list[Outcome]:
    """Each job in turn, through the engine run by ``python`` here, or on ``remote`` (a RemoteHost) with
    ``prepare_source`` (see RemoteEngineProcess)."""
    outcomes = []
    job_dirs = [Path(d).resolve() for d in job_dirs]  # the engine runs in its own folder
    for n, job_dir in enumerate(job_dirs, 1):
        prefix = f"[{n}/{len(job_dirs)}] {job_dir}"
        if is_done(job_dir):
            outcomes.append(Outcome(job_dir, "skipped", "already done"))
            log(f"{prefix}: already done, skipped")
            continue
        started = time.monotonic()
        if remote is not None:
            from .remote import RemoteEngineProcess
            process = RemoteEngineProcess(remote, job_dir, prepare_source=prepare_source)
        else:
            process = EngineProcess(python, job_dir, cwd=ENGINE_ROOT)
        last_stage = None

        def on_event(event):
            nonlocal last_stage
            if event["event"] == "progress" and event["stage"] != last_stage:
                last_stage = event["stage"]
                log(f"{prefix}: {last_stage}…")
            elif event["event"] == "warning":
                log(f"{prefix}: warning: {event['message']}")
            elif event["event"] == "log" and remote is not None and event["message"].startswith(
                    ("uploaded ", "uploading ", "downloaded ", "remote engine ready", "the source clip is already")):
                log(f"{prefix}: {event['message']}")
        try:
            final = process.wait(on_event)
        except KeyboardInterrupt:  # wait() cancels the engine on the first Ctrl+C; a second one lands here
            process.kill()
            final = None
        seconds = time.monotonic() - started
        if final and final["event"] == "done":
            outcomes.append(Outcome(job_dir, "done", final["outputs"]["video"], seconds))
            log(f"{prefix}: done in {seconds:.0f} s → {final['outputs']['video']}")
        else:
            code = final["code"] if final else "cancelled"
            message = final["message"] if final else "interrupted"
            outcomes.append(Outcome(job_dir, "cancelled" if code == "cancelled" else "failed",
                                    f"[{code}] {message}", seconds))
            log(f"{prefix}: {'cancelled' if code == 'cancelled' else 'FAILED'} [{code}] {message}")
            if code == "cancelled":
                break
    return outcomes
