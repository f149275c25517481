# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's side of the protocol: JSON events on stdout, logs on stderr and in the job's log file,
and cancellation by SIGINT or a ``cancel`` line on stdin."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from blender_equi360.jobs.protocol import EXIT_CODES, event_line


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


class EngineError(Exception):
    """A failure the user can act on: ``code`` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str):
        assert code in EXIT_CODES, code
        super().__init__(message)
        self.code = code


class Cancelled(EngineError):
    def __init__(self):
        super().__init__("cancelled", "cancelled by the user; the windows already made are kept (run the job "
                                      "again to continue), nothing half-written is left")


# Each stage's part of the job (its progress events carry the stage's name), and for the stages that make
# one window, the part of the window they cover.
JOB_PARTS = {"reference": "reference", "load": "prepare", "encode_prompt": "prepare", "draft": "generate",
             "denoise": "generate", "decode": "generate", "finish": "finish"}
WINDOW_SPANS = {"draft": (0.0, 1.0), "denoise": (0.0, 0.9), "decode": (0.9, 1.0)}
PREPARE_SPANS = {"load": (0.0, 0.8), "encode_prompt": (0.8, 1.0)}
TERMINAL_EVERY_S = 5.0  # a progress line on the terminal at most this often per stage (and at each stage's end)


class JobProgress:
    """The whole job's share done, which only grows, and its time left, which only shrinks, over parts that
    may run at once (the finish follows the generation). ``weights``: each part's expected seconds, only to
    weigh the parts against each other; a part that does not run has none."""

    def __init__(self, weights: dict[str, float]):
        total = sum(weights.values()) or 1.0
        self.shares = {part: w / total for part, w in weights.items() if w > 0}
        self.done = dict.fromkeys(self.shares, 0.0)
        self.started = time.monotonic()
        self.fraction = 0.0
        self._eta: tuple[float, float] | None = None  # (seconds left, when) as last said

    def advance(self, part: str, fraction: float) -> tuple[float, float | None]:
        """The part has done ``fraction`` of itself: the job's fraction and seconds left."""
        if part in self.done:
            self.done[part] = max(self.done[part], min(1.0, fraction))
        self.fraction = max(self.fraction, sum(self.shares[p] * f for p, f in self.done.items()))
        now = time.monotonic()
        elapsed = now - self.started
        if self.fraction < 0.02 or elapsed < 0.5:
            return self.fraction, None  # too early to say
        estimate = elapsed * (1.0 - self.fraction) / self.fraction
        if self._eta is not None:  # never more than the last one said, less the time since
            estimate = min(estimate, max(0.0, self._eta[0] - (now - self._eta[1])))
        self._eta = (estimate, now)
        return self.fraction, estimate


class Channel:
    """Everything the engine says goes through here; ``check_cancel()`` is called between steps."""

    def __init__(self, out=None):
        self._out = out or sys.stdout
        self._log = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.window: tuple[int, int] | None = None  # (1-based window, windows) while making one, for progress
        self.job: JobProgress | None = None         # set by ``run``: progress events carry the job's share
        self._said: dict[str, float] = {}           # stage → when its last terminal line was printed

    def open_log(self, path: Path) -> None:
        """Append the log to ``path`` too; never through a symbolic link (the engine writes only inside its
        job folder). Raises OSError (a read-only folder, a link) for the caller to report."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._log = os.fdopen(os.open(path, flags, 0o644), "a", encoding="utf-8")

    def emit(self, event: str, **fields) -> None:
        with self._lock:
            self._out.write(event_line(event, **fields) + "\n")
            self._out.flush()

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, file=sys.stderr, flush=True)
        if self._log:
            self._log.write(line + "\n")
            self._log.flush()
        self.emit("log", message=message)

    def warning(self, code: str, message: str) -> None:
        self.log(f"warning: {message}")
        self.emit("warning", code=code, message=message)

    def progress(self, stage: str, step: int, total: int, started: float) -> None:
        """One stage's progress (``step`` of ``total``; any thread), with the job's share and time left when
        a job runs, also as a line on the terminal every few seconds."""
        elapsed = time.monotonic() - started
        eta = elapsed / step * (total - step) if step else None
        fields = {"stage": stage, "step": step, "total": total, "eta_s": None if eta is None else round(eta, 1)}
        making = self.window if stage in WINDOW_SPANS else None
        if making:
            fields.update(window=making[0], windows=making[1])
        if self.job and stage in JOB_PARTS:
            fraction, job_eta = self.job.advance(JOB_PARTS[stage], self._part_fraction(stage, step / max(total, 1)))
            fields.update(job_fraction=round(fraction, 4), job_eta_s=None if job_eta is None else round(job_eta, 1))
        self.emit("progress", **fields)
        self._tell_terminal(fields, making)

    def _part_fraction(self, stage: str, fraction: float) -> float:
        if stage in PREPARE_SPANS:
            low, high = PREPARE_SPANS[stage]
            return low + (high - low) * fraction
        if stage in WINDOW_SPANS and self.window:
            low, high = WINDOW_SPANS[stage]
            return (self.window[0] - 1 + low + (high - low) * fraction) / self.window[1]
        return fraction

    def _tell_terminal(self, fields: dict, making) -> None:
        now, stage = time.monotonic(), fields["stage"]
        if fields["step"] < fields["total"] and now - self._said.get(stage, 0.0) < TERMINAL_EVERY_S:
            return
        self._said[stage] = now
        where = f"window {making[0]}/{making[1]} " if making else ""
        line = f"{time.strftime('%H:%M:%S')} {where}{stage} {fields['step']}/{fields['total']}"
        if "job_fraction" in fields:
            left = fields["job_eta_s"]
            line += f" · job {fields['job_fraction']:.0%}" + (f", about {_duration(left)} left" if left else "")
        print(line, file=sys.stderr, flush=True)

    def listen_for_cancel(self) -> None:
        """SIGINT, or the line ``cancel`` on stdin, asks the run to stop at its next step."""
        signal.signal(signal.SIGINT, lambda *_: self._cancel.set())

        def read_stdin():
            for line in sys.stdin:
                if line.strip() == "cancel":
                    self._cancel.set()
                    return
        threading.Thread(target=read_stdin, daemon=True, name="stdin-cancel").start()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        """As if ``cancel`` had come (a command's own signal handlers: ``setup`` takes SIGTERM as a cancel)."""
        self._cancel.set()

    def close(self) -> None:
        if self._log:
            self._log.close()
