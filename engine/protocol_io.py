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


class Channel:
    """Everything the engine says goes through here; ``check_cancel()`` is called between steps."""

    def __init__(self, out=None):
        self._out = out or sys.stdout
        self._log = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.window: tuple[int, int] | None = None  # (1-based window, windows) while making one, for progress

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
        elapsed = time.monotonic() - started
        eta = elapsed / step * (total - step) if step else None
        where = {"window": self.window[0], "windows": self.window[1]} if self.window else {}
        self.emit("progress", stage=stage, step=step, total=total, eta_s=None if eta is None else round(eta, 1),
                  **where)

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
