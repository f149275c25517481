"""The engine on another machine, over SSH: :class:`RemoteEngineProcess` runs a local job folder's job there and
behaves as :class:`.engine_process.EngineProcess` does (the same events, ``poll``/``wait``/``cancel``/
``ask_to_stop``/``kill``), so the add-on's progress bar, Esc and ``batch`` work unchanged.

It uses the system's OpenSSH client (``ssh``: Windows 10+, macOS and Linux have one), never a password: key
authentication only (``BatchMode=yes``), the host key recorded on first use (``StrictHostKeyChecking=accept-new``)
and checked ever after. Everything slow runs on the object's own thread, never on the caller's:

1. **check** (stage ``connect``): ``python -m engine check`` on the remote machine; an engine that is missing
   or lacks what the job needs ends here (``remote_not_ready``), before any upload.
2. **upload** (stage ``upload``, in bytes): what the job needs, and nothing else: the source clip (or, with a
   ``prepare_source`` hook, only the span the job uses, cut without re-encoding) and ``job.json``, rewritten to
   name the uploaded clip. The local ``job.json`` is not touched. A clip the remote job folder already has
   (the same file, span and settings, as its upload record says) is not sent again.
3. **run**: ``python -m engine run`` there, its events streamed back as they come. The remote job folder is
   the local one's name under the remote jobs folder, so running the job again (after a dropped connection,
   a crash, a cancel) continues the remote job from its last finished window. The remote side stops the
   engine when the connection goes (:mod:`.remote_agent`), so no engine is left holding the job.
4. **download** (stage ``download``, in bytes): the delivered video, its passes and the placement record
   (or, for a reference-only job, the reference and its mask) into the local job folder, each under a
   temporary name until complete; the ``done`` event then names the local files, and adds ``remote``,
   ``remote_job_dir``, ``uploaded_bytes`` and ``downloaded_bytes``.

The engine's log lines are appended to the local job folder's ``engine.log`` too. Failures are ``error``
events with the client codes of :mod:`.protocol` (``remote_unreachable``, ``remote_auth``, …), each saying what
to do; the engine's own errors keep their codes, their messages saying which machine.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import queue
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import partial_path
from .engine_process import _RUNNING, _kill_group, wait_for
from .errors import Equi360Error
from .job import JOB_FILE, LOG_FILE, Job, SourceSpec, job_path, load_job
from .protocol import ProtocolError, parse_event

DEFAULT_PYTHON = "~/equi360/.venv/bin/python"   # what `python -m engine setup ~/equi360/.venv` makes
DEFAULT_ROOT = "~/equi360"                      # the unpacked extension (or a checkout): engine/, blender_equi360/
DEFAULT_JOBS = "~/equi360/jobs"
CONNECT_TIMEOUT_S = 15
ALIVE_INTERVAL_S, ALIVE_COUNT = 15, 4    # ssh gives up on a silent connection after a minute
HEARTBEAT_S = 10.0                       # the client tells the remote side it is there this often…
REMOTE_TIMEOUT_S = 90.0                  # …which stops the engine after this long without a word
SHORT_TIMEOUT_S = 300.0                  # check, prepare: an engine check imports torch (seconds, a minute cold)
SPACE_MARGIN = 256 * 2**20               # free space the upload must leave on the remote disk
CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.2
AGENT_SOURCE = Path(__file__).with_name("remote_agent.py")
MARKER = ".equi360_upload.json"          # remote_agent.MARKER
BOOT = "import base64,sys,zlib;exec(zlib.decompress(base64.b64decode(sys.argv.pop(1))))"

# (code, the ssh client's words) for a connection that could not be made: the first match decides.
SSH_FAILURES = (
    ("remote_host_key", ("host key verification failed", "remote host identification has changed",
                         "no matching host key")),
    ("remote_auth", ("permission denied", "too many authentication failures", "no supported authentication",
                     "authentication failed", "no such identity", "load key", "unprotected private key",
                     "bad permissions", "invalid format", "incorrect passphrase")),
    ("remote_unreachable", ("could not resolve", "name or service not known", "nodename nor servname",
                            "connection refused", "connection timed out", "operation timed out",
                            "no route to host", "network is unreachable", "host is down")),
)
KEY_FILE_WORDS = ("load key", "unprotected", "bad permissions", "invalid format", "no such identity", "passphrase")


class RemoteError(Equi360Error):
    """A failure of the remote set-up or connection; ``code`` is one of protocol.CLIENT_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _Stopped(Exception):
    """The user cancelled (or the process was killed) during a step of the client's own."""


def parse_destination(text: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` (also ``host``, an ``~/.ssh/config`` alias, and ``user@[v6 address]:port``) as
    (user, host, port)."""
    text = (text or "").strip()
    user, _, host = text.rpartition("@")
    port = None
    match = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\](?::(\d+))?", host)
    if match:
        host, port = match.group(1), match.group(2)
    elif host.count(":") == 1:
        host, port = host.split(":")
    ok = (host and not host.startswith("-") and not re.search(r"[\s'\"\\;|&$`<>()]", text)
          and (port is None or (port.isdigit() and 0 < int(port) < 65536)))
    if not ok or (user == "" and "@" in text):
        raise Equi360Error(f"{text!r} is not an SSH destination: write user@host, or user@host:port (e.g. "
                           "ada@gpu-box.local:2222)")
    return user or None, host, int(port) if port else None


def shell_word(text: str) -> str:
    """``text`` for the remote (POSIX) shell, a leading ``~/`` left for it to expand."""
    if text == "~":
        return "~"
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:]) if text[2:] else "~/"
    return shlex.quote(text)


@dataclass(frozen=True)
class RemoteHost:
    """Where and how the remote engine runs. ``python``, ``root`` and ``jobs`` are paths on the remote machine
    (``~`` is its user's home): the engine's Python, the folder that holds ``engine/``, and the folder the remote
    job folders go into. ``identity``: the private key (None: ssh's own choice: its config, its agent, its default
    keys). ``known_hosts``: the file ssh records and checks host keys in, or several (a tuple: each is checked, a
    new host is recorded in the first; None: the user's own, ``~/.ssh/known_hosts``)."""
    destination: str
    python: str = DEFAULT_PYTHON
    root: str = DEFAULT_ROOT
    jobs: str = DEFAULT_JOBS
    identity: str | None = None
    known_hosts: str | tuple[str, ...] | None = None
    ssh: str = "ssh"
    connect_timeout_s: int = CONNECT_TIMEOUT_S

    def __post_init__(self):
        parse_destination(self.destination)
        for name in ("python", "root", "jobs"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value.strip()) or "\0" in value or "\n" in value:
                raise Equi360Error(f"the remote engine's {name} must be a path on the remote machine")
        if self.identity and not Path(self.identity).expanduser().is_file():
            raise Equi360Error(f"the identity file {self.identity} is not there: name the private key (not the "
                               ".pub file) that the remote machine accepts")

    def check_client(self) -> None:
        """This machine has the ssh client (Equi360Error saying how to get one otherwise)."""
        if shutil.which(self.ssh) is None:
            raise Equi360Error(f"no SSH client ({self.ssh}) on this machine: install OpenSSH's client (Windows: "
                               "Settings › System › Optional features › OpenSSH Client; Linux: the openssh-client "
                               "package), or run the engine on this machine")

    @property
    def user(self) -> str | None:
        return parse_destination(self.destination)[0]

    @property
    def host(self) -> str:
        return parse_destination(self.destination)[1]

    @property
    def port(self) -> int | None:
        return parse_destination(self.destination)[2]

    @property
    def shown(self) -> str:
        """The host as messages name it."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def ssh_command(self, remote_command: str) -> list[str]:
        """The argv that runs ``remote_command`` (a POSIX shell line) on the remote machine with the system's ssh."""
        argv = [self.ssh, "-T", "-x", "-a",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"ConnectTimeout={int(self.connect_timeout_s)}",
                "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
                "-o", "LogLevel=ERROR"]
        if self.identity:
            argv += ["-i", str(Path(self.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            files = [self.known_hosts] if isinstance(self.known_hosts, (str, os.PathLike)) else self.known_hosts
            argv += ["-o", "UserKnownHostsFile=" + " ".join(f'"{Path(f).expanduser()}"' for f in files)]
        if self.port:
            argv += ["-p", str(self.port)]
        user, host, _ = parse_destination(self.destination)
        return argv + [f"{user}@{host}" if user else host, remote_command]

    def agent_command(self, *args: str) -> str:
        """The remote shell line that runs the helper (:mod:`.remote_agent`) in the remote engine's Python."""
        payload = base64.b64encode(zlib.compress(AGENT_SOURCE.read_bytes(), 9)).decode("ascii")
        return " ".join([shell_word(self.python), "-c", shlex.quote(BOOT), payload, *map(shlex.quote, args)])

    def job_dir_for(self, local_job_dir) -> str:
        """The remote job folder of a local one: its name, under the remote jobs folder."""
        return posixpath.join(self.jobs, Path(local_job_dir).name)


def ssh_failure(remote: RemoteHost, stderr: str, running: bool = False) -> RemoteError:
    """ssh's exit status 255 (ssh failed, not the remote command) in the user's terms. ``running``: the
    connection had been made, so anything but a refusal is the connection lost."""
    said = stderr.lower()
    last = next((line.strip() for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    host = remote.shown
    who = f"{remote.user}@{host}" if remote.user else host
    code = next((code for code, words in SSH_FAILURES if any(word in said for word in words)), None)
    if code is None and running:
        return RemoteError("remote_connection_lost", f"the connection to {host} was lost ({last or 'no reason given'})"
                                                     ": the remote engine stops and keeps its finished windows; "
                                                     "convert again to continue where it stopped")
    if code == "remote_host_key":
        message = (f"{host}'s host key does not match the one recorded for it ({last}): if the machine was "
                   f"reinstalled, remove the old key (ssh-keygen -R {remote.host}) and connect once with ssh "
                   "to check and accept the new one; otherwise something is intercepting the connection")
    elif code == "remote_auth" and any(word in said for word in KEY_FILE_WORDS):
        message = (f"the identity file {remote.identity or '(ssh default)'} cannot be used ({last}): name a "
                   "private key that only you can read (chmod 600), without a passphrase or loaded in ssh-agent")
    elif code == "remote_auth":
        key = remote.identity or "ssh's default key"
        message = (f"{who} refused the key {key} ({last}): add its public key ({key}.pub) to ~/.ssh/authorized_keys "
                   f"on {host}, e.g. ssh-copy-id -i {key}.pub {who}; only keys are used, never passwords")
    else:
        code = "remote_unreachable"
        message = (f"cannot reach {host} ({last or 'ssh failed'}): check the host name and port, that the machine "
                   "is on and its SSH server runs, and the network (VPN, firewall)")
    return RemoteError(code, message)


def readiness(report: dict, job: Job) -> tuple[list[str], list[str]]:
    """From the remote ``engine check``: what stops the job there, and what is worth saying."""
    packages, gpu = report.get("packages") or {}, report.get("gpu") or {}
    needed = ["numpy", "av"]
    notes = []
    if job.stop_after == "delivery" and job.backend == "ltx":
        needed += ["torch", "diffusers", "transformers", "safetensors", "peft"]
    problems = [f"its engine environment lacks {', '.join(n for n in needed if not packages.get(n))}"] \
        if any(not packages.get(n) for n in needed) else []
    if job.stop_after == "delivery" and job.backend == "ltx" and not gpu.get("cuda"):
        problems.append(f"its engine sees no CUDA GPU ({gpu.get('why', 'none')})")
    elif job.stop_after == "delivery" and job.backend == "auto" and not gpu.get("cuda"):
        notes.append(f"its engine sees no CUDA GPU ({gpu.get('why', 'none')}): backend Auto makes a draft")
    if gpu.get("cuda"):
        notes.append(f"GPU {gpu.get('name')} ({gpu.get('memory_gb')} GB)")
    return problems, notes


def _session() -> dict:
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}


class _Call:
    """One ssh command: its binary pipes, its stderr's last lines (read on a thread), an optional deadline."""

    def __init__(self, argv: list[str], timeout_s: float | None = None):
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         **_session())
        except OSError as err:
            raise RemoteError("remote_unreachable", f"could not start the SSH client {argv[0]!r} "
                                                    f"({err.strerror or err}): install OpenSSH's client") from None
        self.tail: deque = deque(maxlen=40)
        self.timed_out = False
        self._lock = threading.Lock()
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True, name="equi360-ssh-stderr")
        self._stderr.start()
        self._timer = None
        if timeout_s:
            self._timer = threading.Timer(timeout_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.tail.append(line.decode("utf-8", "replace").rstrip())

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def write(self, data: bytes) -> bool:
        with self._lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def close_stdin(self) -> None:
        with self._lock:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def wait(self) -> int:
        code = self.proc.wait()
        self._stderr.join(5)
        if self._timer:
            self._timer.cancel()
        return code

    def stderr(self) -> str:
        return "\n".join(self.tail)

    def kill(self) -> None:
        _kill_group(self.proc)


def agent_result(lines) -> dict | None:
    """The helper's JSON result among a command's output lines (a login shell may print before it)."""
    for line in reversed(list(lines)):
        try:
            data = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("equi360_agent") == 1:
            return data
    return None


SourceHook = Callable[[Path, SourceSpec, Path], "tuple[Path, float] | None"]


class RemoteEngineProcess:
    """``python -m engine run`` of the local job folder ``job_dir`` on ``remote``, through ssh. Same interface as
    EngineProcess. ``prepare_source(clip, spec, folder)``: optional; returns a shorter file written in ``folder``
    holding the span the job uses, and the job's ``start_s`` in it, or None to upload the whole clip (the add-on
    and the command line pass one that cuts the span without re-encoding; this layer cannot read video)."""

    def __init__(self, remote: RemoteHost, job_dir, prepare_source: SourceHook | None = None,
                 heartbeat_s: float = HEARTBEAT_S, remote_timeout_s: float = REMOTE_TIMEOUT_S):
        remote.check_client()
        self.remote = remote
        self.job_dir = Path(job_dir).resolve()
        self.remote_job_dir = remote.job_dir_for(self.job_dir)
        self.prepare_source = prepare_source
        self.heartbeat_s, self.remote_timeout_s = heartbeat_s, remote_timeout_s
        self.uploaded_bytes = 0
        self.downloaded_bytes = 0
        self._events: queue.Queue = queue.Queue()
        self._final = None
        self._finished = False
        self._cancel = threading.Event()
        self._killed = threading.Event()
        self._call: _Call | None = None     # the ssh command in progress
        self._running = False               # the call in progress is the engine's run
        self._log_file = None
        _RUNNING.add(self)
        self._thread = threading.Thread(target=self._work, daemon=True, name="equi360-remote")
        self._thread.start()

    # --- the interface EngineProcess has ----------------------------------------------------------------

    def poll(self) -> list[dict]:
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event is None:
                self._finished = True
                _RUNNING.discard(self)
                if self._final is None:
                    self._final = {"event": "error", "code": "crashed", "message": "the remote run ended without a "
                                                                                   "result"}
                    events.append(self._final)
                return events
            if event["event"] in ("done", "error"):
                self._final = event
            events.append(event)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def final_event(self) -> dict | None:
        return self._final

    def wait(self, on_event, interval: float = 0.1) -> dict | None:
        """Blocking loop (background mode, scripts): each event to ``on_event`` until the end; Ctrl+C cancels."""
        return wait_for(self, on_event, interval)

    def cancel(self, grace_s: float = 10.0) -> None:
        """Ask the remote engine to stop; if the run has not ended within ``grace_s``, kill it. Blocks."""
        self.ask_to_stop()
        self._thread.join(grace_s)
        if self._thread.is_alive():
            self.kill()
            self._thread.join(10)

    def ask_to_stop(self) -> None:
        """Never blocks: ``cancel`` to the remote engine (it stops after its step and keeps its finished windows),
        or, during the client's own steps (check, upload, download), their ssh command ended."""
        self._cancel.set()
        call = self._call
        if call is None:
            return
        if self._running:
            call.write(b"cancel\n")
        else:
            threading.Thread(target=call.kill, daemon=True).start()

    def kill(self) -> None:
        """End at once: the remote engine killed with its children (``kill``, then the connection closed, which
        the remote side also takes as the end), the local ssh killed."""
        self._killed.set()
        self._cancel.set()
        call = self._call
        if call is None:
            return
        if self._running and call.write(b"kill\n"):
            call.close_stdin()
            try:
                call.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        call.kill()

    # --- the work, on the object's thread ------------------------------------------------------------------

    def _work(self) -> None:
        final = None
        try:
            self._open_log()
            self._progress("connect", 0, 1, None)
            job = load_job(self.job_dir)
            self._check(job)
            self._progress("connect", 1, 1, None)
            self._upload(job)
            final = self._run()
            if final["event"] == "done":
                final = self._download(final, job)
        except _Stopped:
            final = {"event": "error", "code": "cancelled",
                     "message": "cancelled by the user; the remote job keeps its finished windows (convert again to "
                                "continue)"}
        except RemoteError as err:
            final = {"event": "error", "code": err.code, "message": str(err)}
        except Equi360Error as err:
            final = {"event": "error", "code": "bad_job", "message": str(err)}
        except OSError as err:
            final = {"event": "error", "code": "remote_failed",
                     "message": f"{err.filename or self.job_dir}: {err.strerror or err}"}
        except Exception as err:  # a bug: say so rather than hang the caller
            final = {"event": "error", "code": "internal", "message": f"internal error in the remote client: {err!r}"}
        finally:
            self._call, self._running = None, False
            if final is not None:
                if final["event"] == "error":
                    self._log(f"error [{final['code']}]: {final['message']}", emit=False)
                self._events.put(final)
            self._close_log()
            self._events.put(None)

    def _stopped(self) -> None:
        if self._cancel.is_set():
            raise _Stopped()

    def _start(self, *args: str, timeout_s: float | None = None) -> _Call:
        self._stopped()
        call = _Call(self.remote.ssh_command(self.remote.agent_command(*args)), timeout_s)
        self._call = call
        if self._cancel.is_set():  # asked while it started
            call.kill()
        return call

    def _short(self, *args: str, stdin: bytes = b"") -> dict:
        """A helper command that prints one result line: the result; RemoteError for anything else."""
        call = self._start(*args, timeout_s=SHORT_TIMEOUT_S)
        call.write(stdin)
        call.close_stdin()
        out = call.proc.stdout.read()
        code = call.wait()
        self._call = None
        self._stopped()
        result = agent_result(out.decode("utf-8", "replace").splitlines())
        if result is None:
            raise self._failure(call, code, args[0])
        if "error" in result:
            raise RemoteError(result["error"], f"on {self.remote.shown}: {result['message']}")
        return result

    def _failure(self, call: _Call, code: int, what: str) -> RemoteError:
        """Why a helper command gave no result."""
        said = call.stderr()
        host = self.remote.shown
        if call.timed_out:
            return RemoteError("remote_failed", f"{host} did not answer within {SHORT_TIMEOUT_S:.0f} s ({what}): "
                                                "check the machine and convert again")
        if code == 255:
            return ssh_failure(self.remote, said, running=what == "run")
        last = next((line for line in reversed(said.splitlines()) if line.strip()), f"exit status {code}")
        if code in (126, 127) or "no such file" in said.lower() or "not found" in said.lower():
            return RemoteError("remote_not_ready", f"{host} cannot run the remote engine's Python "
                                                   f"{self.remote.python} ({last}): set it to the Python that "
                                                   "`python -m engine setup` made there (e.g. "
                                                   f"{DEFAULT_PYTHON})")
        return RemoteError("remote_failed", f"on {host}, the remote {what} failed ({last})")

    # 1. check
    def _check(self, job: Job) -> None:
        self._log(f"connecting to {self.remote.destination}; checking the remote engine in {self.remote.root}")
        result = self._short("check", self.remote.root)
        problems, notes = readiness(result["check"], job)
        if problems:
            raise RemoteError("remote_not_ready", f"the engine on {self.remote.shown} is not ready: "
                                                  f"{'; '.join(problems)}: run `python -m engine setup ENV_DIR` "
                                                  f"in {result.get('root', self.remote.root)} there (and check its "
                                                  "GPU driver), then convert again")
        self._log(f"remote engine ready on {self.remote.shown} ({result.get('python')}"
                  f"{'; ' + '; '.join(notes) if notes else ''})")

    # 2. upload
    def _upload(self, job: Job) -> None:
        prepared = self._short("prepare", self.remote_job_dir)
        self.remote_job_abs = prepared["job_dir"]
        previous = prepared.get("uploaded") if isinstance(prepared.get("uploaded"), dict) else {}
        previous = previous.get("files") if isinstance(previous.get("files"), dict) else {}
        there = prepared.get("sizes") or {}
        previous = {key: entry for key, entry in previous.items()  # what is still there, whole
                    if isinstance(entry, dict) and there.get(entry.get("name")) == entry.get("size")}
        remote_job = job.to_dict()
        record, sends = {}, []  # what the remote job folder will hold; (name, local path or bytes)
        with tempfile.TemporaryDirectory(prefix="equi360-upload-") as scratch:
            if job.source is not None:
                name, start_s, send = self._source(job.source, previous.get("source"), Path(scratch))
                record["source"] = {"identity": self._identity(job.source), "name": name, "start_s": start_s,
                                    "size": previous["source"]["size"] if send is None else send.stat().st_size}
                remote_job["source"] = {**remote_job["source"], "path": name, "start_s": start_s}
                if send is not None:
                    sends.append((name, send))
            else:  # a job with its reference already made: the reference, its mask, its placement record
                for field in ("reference", "mask"):
                    local = job_path(self.job_dir, getattr(job, field))
                    remote_job[field] = local.name
                    files = [local] + ([local.with_suffix(".json")] if field == "reference" else [])
                    for path in files:
                        if not path.is_file():
                            if path.suffix == ".json" and field == "reference":
                                continue
                            raise RemoteError("remote_failed", f"{path}: the job's {field} is not there")
                        identity = [str(path), path.stat().st_size, path.stat().st_mtime_ns]
                        record[path.name] = {"identity": identity, "name": path.name, "size": identity[1]}
                        if (previous.get(path.name) or {}).get("identity") != identity:
                            sends.append((path.name, path))
            sends.append((JOB_FILE, json.dumps(remote_job, indent=2).encode("utf-8")))
            sends.append((MARKER, json.dumps({"local_job": str(self.job_dir), "files": record}).encode("utf-8")))
            total = sum(len(d) if isinstance(d, bytes) else d.stat().st_size for _, d in sends)
            if prepared["free"] < total + SPACE_MARGIN:
                raise RemoteError("remote_disk_full", f"{self.remote.shown} has {_size(prepared['free'])} free in "
                                                      f"{self.remote_job_abs} and the upload needs {_size(total)} "
                                                      "plus room for the job: free some space there (or choose "
                                                      "another remote jobs folder) and convert again")
            self._send(sends, total)

    def _identity(self, spec: SourceSpec) -> list:
        clip = job_path(self.job_dir, spec.path)
        stat = clip.stat()
        return [str(clip), stat.st_size, stat.st_mtime_ns, spec.start_s, spec.frames, spec.fps]

    def _source(self, spec: SourceSpec, before: dict | None, scratch: Path):
        """The clip's name on the remote side, the job's start in it, and what to send (None: it is there)."""
        clip = job_path(self.job_dir, spec.path)
        if not clip.is_file():
            raise RemoteError("remote_failed", f"the job's source clip {clip} is not there: it is uploaded from "
                                               "this machine")
        if isinstance(before, dict) and before.get("identity") == self._identity(spec) and before.get("name"):
            self._log(f"the source clip is already on {self.remote.shown} ({before['name']})")
            return before["name"], before["start_s"], None
        cut = None
        if self.prepare_source is not None:
            self._progress("upload", 0, 1, None)
            try:
                cut = self.prepare_source(clip, spec, scratch)
            except Exception as err:  # the whole clip then: a span that cannot be cut is no reason to fail
                self._log(f"the span could not be cut from {clip.name} ({err}); uploading the whole clip")
            self._stopped()
        whole = clip.stat().st_size
        if cut is not None:
            path, start_s = cut
            self._log(f"uploading the span the job uses, cut from {clip.name} without re-encoding: "
                      f"{_size(path.stat().st_size)} of {_size(whole)}")
            return "source_span" + path.suffix.lower(), start_s, path
        self._log(f"uploading the whole clip {clip.name}: {_size(whole)}")
        return "source" + clip.suffix.lower(), spec.start_s, clip

    def _send(self, sends: list, total: int) -> None:
        call = self._start("receive", self.remote_job_dir)
        started, shown, done = time.monotonic(), 0.0, 0
        self._progress("upload", 0, total, None)
        for name, data in sends:
            size = len(data) if isinstance(data, bytes) else data.stat().st_size
            ok = call.write(json.dumps({"name": name, "size": size}).encode("utf-8") + b"\n")
            if isinstance(data, bytes):
                ok = ok and call.write(data)
                done += size
            else:
                with open(data, "rb") as f:
                    while ok and (chunk := f.read(CHUNK)):
                        ok = call.write(chunk)
                        done += len(chunk)
                        if time.monotonic() - shown > PROGRESS_EVERY_S:
                            shown = time.monotonic()
                            self._progress("upload", done, total, started)
                        self._stopped_call(call)
            if not ok:
                break
        if ok:
            call.write(b'{"end": true}\n')
        call.close_stdin()
        out = call.proc.stdout.read()
        code = call.wait()
        self._call = None
        self._stopped()
        result = agent_result(out.decode("utf-8", "replace").splitlines())
        if result is None:
            raise self._failure(call, code, "upload")
        if "error" in result:
            raise RemoteError(result["error"], f"on {self.remote.shown}: {result['message']}; free some space "
                              "there (or choose another remote jobs folder) and convert again"
                              if result["error"] == "remote_disk_full" else f"on {self.remote.shown}: "
                              f"{result['message']}")
        self.uploaded_bytes += done
        self._progress("upload", total, total, started)
        self._log(f"uploaded {_size(done)} ({done} bytes) to {self.remote.shown}:{self.remote_job_abs}")

    def _stopped_call(self, call: _Call) -> None:
        if self._cancel.is_set():
            call.kill()
            raise _Stopped()

    # 3. run
    def _run(self) -> dict:
        self._log(f"running the job on {self.remote.shown} in {self.remote_job_abs}")
        call = self._start("run", self.remote.root, self.remote_job_dir, str(self.remote_timeout_s))
        self._running = True
        if self._cancel.is_set():
            call.write(b"cancel\n")
        stop_beating = threading.Event()

        def beat():
            while not stop_beating.wait(self.heartbeat_s):
                call.write(b"alive\n")
        threading.Thread(target=beat, daemon=True, name="equi360-remote-heartbeat").start()
        done = error = None
        try:
            for raw in call.proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    event = parse_event(line)
                except ProtocolError:
                    self._log(f"{self.remote.shown} said (not protocol): {line[:200]}")
                    continue
                if event["event"] == "done":
                    done = event
                elif event["event"] == "error":
                    error = self._remote_error(event)
                else:
                    if event["event"] == "log":
                        self._log(event["message"], emit=False)
                    self._events.put(event)
            code = call.wait()
        finally:
            stop_beating.set()
            self._running = False
            self._call = None
        if self._killed.is_set():
            raise _Stopped()
        if error is not None:
            return error
        if done is not None and code == 0:
            return done
        if code == 255:
            raise ssh_failure(self.remote, call.stderr(), running=True)
        if self._cancel.is_set():
            raise _Stopped()
        tail = " | ".join(line for line in list(call.tail)[-3:] if line)
        raise RemoteError("crashed", f"the engine on {self.remote.shown} ended (exit status {code}) without a "
                                     f"result{': ' + tail if tail else ''}")

    def _remote_error(self, event: dict) -> dict:
        code, message = event.get("code", "internal"), event.get("message", "")
        if code == "disk_full":
            return {"event": "error", "code": "remote_disk_full",
                    "message": f"on {self.remote.shown}: {message} (free space in {self.remote.jobs} there)"}
        if code == "job_busy":
            message += (f" (after a lost connection, the remote engine stops within {self.remote_timeout_s:.0f} s: "
                        "convert again then)")
        return {**event, "message": f"on {self.remote.shown}: {message}"}

    # 4. download
    def _download(self, done: dict, job: Job) -> dict:
        remote_dir = self.remote_job_abs
        wanted = {}  # output key → path relative to the job folder
        for key, path in done.get("outputs", {}).items():
            if isinstance(path, str) and path.startswith(remote_dir.rstrip("/") + "/"):
                wanted[key] = posixpath.relpath(path, remote_dir)
        extras = []
        if "video" in wanted:
            passes = job.delivery.passes_folder(Path(wanted["video"]))
            extras += ([passes.as_posix()] if passes else []) + [Path(job.reference).with_suffix(".json").name]
        elif "reference" in wanted:
            extras.append(posixpath.splitext(wanted["reference"])[0] + ".json")
        names = extras + list(wanted.values())  # the results last: a local result is always a whole one
        call = self._start("send", self.remote_job_dir, *names)
        stream = call.proc.stdout
        header = None
        for _ in range(200):
            raw = stream.readline()
            if not raw:
                break
            header = agent_result([raw.decode("utf-8", "replace")])
            if header is not None:
                break
        if header is None:
            code = call.wait()
            self._call = None
            self._stopped()
            raise self._failure(call, code, "download")
        files = header["files"]
        total = sum(size for _, size in files)
        started, shown, got = time.monotonic(), 0.0, 0
        self._progress("download", 0, total, started)
        folders = {name for name in names if not any(rel == name for rel, _ in files)}
        staged = {}  # a folder → its temporary folder, renamed into place at the end
        try:
            for relative, size in files:
                local = self._local(relative)
                top = next((folder for folder in folders if relative.startswith(folder + "/")), None)
                if top is not None:
                    if top not in staged:
                        staged[top] = partial_path(self._local(top))
                        shutil.rmtree(staged[top], ignore_errors=True)
                    target = staged[top] / posixpath.relpath(relative, top)
                else:
                    target = partial_path(local)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    left = size
                    while left:
                        chunk = stream.read(min(CHUNK, left))
                        if not chunk:
                            break
                        out.write(chunk)
                        left -= len(chunk)
                        got += len(chunk)
                        if time.monotonic() - shown > PROGRESS_EVERY_S:
                            shown = time.monotonic()
                            self._progress("download", got, total, started)
                        self._stopped_call(call)
                if left:
                    break
                if top is None:
                    os.replace(target, local)
            complete = got == total
            code = call.wait()
            self._call = None
            self._stopped()
            if not complete or code != 0:
                why = next((line for line in reversed(call.stderr().splitlines()) if line.strip()), "it ended early")
                raise RemoteError("remote_connection_lost", f"the download of the result from {self.remote.shown} was "
                                                            f"cut ({why}): the result is made there ({remote_dir}); "
                                                            "convert again to fetch it")
            for top, temporary in staged.items():
                shutil.rmtree(self._local(top), ignore_errors=True)
                os.replace(temporary, self._local(top))
        finally:
            for temporary in staged.values():
                shutil.rmtree(temporary, ignore_errors=True)
            for relative, _ in files:
                partial_path(self._local(relative)).unlink(missing_ok=True)
        self.downloaded_bytes += got
        self._progress("download", total, total, started)
        self._log(f"downloaded {_size(got)} from {self.remote.shown} into {self.job_dir}")
        outputs = {key: str(self._local(rel)) for key, rel in wanted.items()}
        return {**done, "outputs": {**done.get("outputs", {}), **outputs}, "remote": self.remote.destination,
                "remote_job_dir": remote_dir, "uploaded_bytes": self.uploaded_bytes,
                "downloaded_bytes": self.downloaded_bytes}

    def _local(self, relative: str) -> Path:
        path = Path(os.path.normpath(self.job_dir / relative))
        if self.job_dir not in path.parents:
            raise RemoteError("remote_failed", f"the remote side sent {relative!r}, outside the job folder")
        return path

    # --- events and the local log --------------------------------------------------------------------------

    def _progress(self, stage: str, step: int, total: int, started: float | None) -> None:
        eta = None
        if started is not None and step:
            eta = round((time.monotonic() - started) / step * (total - step), 1)
        self._events.put({"event": "progress", "stage": stage, "step": step, "total": total, "eta_s": eta})

    def _log(self, message: str, emit: bool = True) -> None:
        if self._log_file is not None:
            try:
                self._log_file.write(f"{time.strftime('%H:%M:%S')} {message}\n")
                self._log_file.flush()
            except OSError:
                pass
        if emit:
            self._events.put({"event": "log", "message": message})

    def _open_log(self) -> None:
        """The local job folder's engine.log (appended to, never through a link): the run's log lines, and the
        mark that an engine ran this job (a later conversion of the same strip continues it)."""
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            self._log_file = os.fdopen(os.open(self.job_dir / LOG_FILE, flags, 0o644), "a", encoding="utf-8")
        except OSError:
            self._log_file = None

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
