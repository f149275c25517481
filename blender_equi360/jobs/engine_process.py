"""The add-on's side of the engine subprocess: start it, read its events, cancel it, reap it.

Blender-free and thread-safe in the one way Blender needs: a reader thread turns stdout lines into
events on a queue and never touches anything else; the owner (a modal operator's timer, or a blocking
loop in background mode) drains the queue on its own thread with :meth:`EngineProcess.poll`.

Cancelling asks politely first (``cancel`` on stdin and SIGINT: the engine stops after the step in
progress and writes nothing), then terminates and kills the whole process group, so no child is left.

:class:`EngineQuery` runs the engine's short commands that print one JSON document (``models find``,
``models sets``) the same way: in its own process group, read on a thread, killed with the others.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from .errors import Equi360Error
from .protocol import ProtocolError, parse_event

CANCEL_GRACE_S = 10.0     # the engine finishes its denoising step; a step can take seconds on a GPU
TERMINATE_GRACE_S = 3.0
QUERY_TIMEOUT_S = 120.0   # models find reads headers only (seconds); a hung one must not wait forever
_RUNNING: set = set()     # every EngineProcess and EngineQuery still running


def _start(python: str, args: list[str], cwd, env: dict | None, stdin=subprocess.PIPE) -> subprocess.Popen:
    """``python -m engine ARGS`` in a new process group (so that a kill reaches its children too)."""
    session = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    try:
        return subprocess.Popen([python, "-m", "engine", *args], cwd=str(cwd), env=env, stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                bufsize=1, **session)
    except OSError as err:
        raise Equi360Error(f"could not start the engine with {python!r} ({err.strerror or err}): set the "
                           "engine's Python to the interpreter of the engine's environment") from None


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the process's whole group, then kill it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
            proc.wait()
    if os.name == "posix":  # children that outlived the leader
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


class EngineProcess:
    """One ``python -m engine run JOB_DIR``, or with ``args`` another command on the same protocol
    (``models fetch SET DIR``; ``job_dir`` None). Events are protocol dicts; a crash (an exit without an
    ``error`` or ``done`` event, or a line that is not JSON) becomes an ``error`` event with code
    ``crashed`` and the tail of stderr."""

    def __init__(self, python: str, job_dir, cwd, env: dict | None = None, args: list[str] | None = None):
        self.job_dir = Path(job_dir) if job_dir is not None else None
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: deque = deque(maxlen=20)
        self._finished = False
        self._final = None
        self._proc = _start(python, args or ["run", str(self.job_dir)], cwd, env)
        _RUNNING.add(self)
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True, name="equi360-engine-stderr")
        self._stderr_reader.start()
        threading.Thread(target=self._read_stdout, daemon=True, name="equi360-engine-stdout").start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                self._events.put(parse_event(line))
            except ProtocolError:
                self._events.put({"event": "log", "message": f"engine said (not protocol): {line.strip()[:200]}"})
        self._proc.wait()
        self._stderr_reader.join(timeout=5)  # so that a crash's last words are in the tail
        self._events.put(None)  # end of stream

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr_tail.append(line.rstrip())

    def poll(self) -> list[dict]:
        """The events that arrived since the last call (never blocks). After the stream ends, one last
        synthetic ``error`` event explains an exit without a final event."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event is None:
                self._finish(events)
                return events
            if event["event"] in ("done", "error"):
                self._final = event
            events.append(event)

    def _finish(self, events: list) -> None:
        self._finished = True
        _RUNNING.discard(self)
        code = self._proc.returncode
        if self._final is None:
            tail = " | ".join(line for line in list(self._stderr_tail)[-3:] if line)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self._final = {"event": "error", "code": "crashed",
                           "message": f"the engine {how} without a result{': ' + tail if tail else ''}"}
            events.append(self._final)
        elif self._final["event"] == "done" and code != 0:
            self._final = {"event": "error", "code": "crashed", "message": f"the engine exited with status {code}"}
            events.append(self._final)

    @property
    def finished(self) -> bool:
        return self._finished

    def wait(self, on_event, interval: float = 0.1) -> dict | None:
        """Blocking loop (background mode): passes each event to ``on_event`` until the engine ends;
        returns the final ``done``/``error`` event. Ctrl+C cancels the engine."""
        return wait_for(self, on_event, interval)

    @property
    def final_event(self) -> dict | None:
        return self._final

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Ask the engine to stop; if it has not within ``grace_s``, terminate, then kill, its group.
        Blocks until the process is gone (at most ``grace_s`` + a few seconds)."""
        if self._proc.poll() is None:
            self.ask_to_stop()
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._drain_until_end()

    def ask_to_stop(self) -> None:
        """The polite half of :meth:`cancel`, without waiting: ``cancel`` on stdin and SIGINT. The engine ends
        with an ``error`` event ``cancelled``; a caller that must not block kills it if that does not come."""
        if self._proc.poll() is not None:
            return
        try:
            self._proc.stdin.write("cancel\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
        _signal_group(self._proc, signal.SIGINT if os.name == "posix" else signal.CTRL_BREAK_EVENT)

    def kill(self) -> None:
        """Terminate the whole process group, then kill it."""
        _kill_group(self._proc)

    def _drain_until_end(self, timeout: float = 5.0) -> None:
        """Wait (briefly) for the reader to see the end of the stream; events stay queued for poll()."""
        deadline = time.monotonic() + timeout
        while self._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)


def wait_for(process, on_event, interval: float = 0.1) -> dict | None:
    """Blocking loop over an engine process (this machine's or a remote one): each event to ``on_event``
    until it ends; returns its final event. Ctrl+C cancels it, and its last events still come."""
    def drain():
        while not process.finished:
            for event in process.poll():
                on_event(event)
            time.sleep(interval)
    try:
        drain()
    except KeyboardInterrupt:
        process.cancel()
        drain()
    return process.final_event


class EngineQuery:
    """One engine command that prints one JSON document and ends (``models find``, ``models sets``). Its
    output is read on a thread, so a timer can look at :attr:`finished` without Blender ever waiting;
    :meth:`wait` blocks instead (background mode)."""

    def __init__(self, python: str, args: list[str], cwd, env: dict | None = None,
                 timeout_s: float = QUERY_TIMEOUT_S):
        self.command = " ".join(args[:2])  # "models find", for the messages
        self._timeout_s = timeout_s
        self._output: tuple[str, str, bool] | None = None  # stdout, stderr, timed out
        self._proc = _start(python, args, cwd, env, stdin=subprocess.DEVNULL)
        _RUNNING.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True, name="equi360-engine-query")
        self._reader.start()

    def _read(self) -> None:
        timed_out = False
        try:
            out, err = self._proc.communicate(timeout=self._timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            out, err = self._proc.communicate()
        _RUNNING.discard(self)
        self._output = (out, err, timed_out)

    @property
    def finished(self) -> bool:
        return self._output is not None

    def wait(self) -> dict:
        self._reader.join()
        return self.result()

    def result(self) -> dict:
        """The command's JSON document, once :attr:`finished`; Equi360Error says why there is none."""
        out, err, timed_out = self._output
        if timed_out:
            raise Equi360Error(f"the engine's {self.command} took more than {self._timeout_s:.0f} s and was stopped")
        if self._proc.returncode != 0:
            lines = err.strip().splitlines()
            why = lines[-1] if lines else f"exit status {self._proc.returncode}"
            raise Equi360Error(f"the engine's {self.command} failed: {why}")
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise Equi360Error(f"the engine's {self.command} printed no report: is the engine's Python the "
                               "interpreter of the engine's environment?") from None

    def kill(self) -> None:
        _kill_group(self._proc)


def kill_all() -> None:
    """Kill every engine still running (Blender quitting, the add-on unregistering)."""
    for process in list(_RUNNING):
        process.kill()
        _RUNNING.discard(process)


atexit.register(kill_all)
