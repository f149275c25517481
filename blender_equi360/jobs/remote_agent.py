"""The remote engine's helper: what the client (:mod:`.remote`) needs done on the machine the engine runs on.

It is not installed there: the client sends this file's source over ``ssh``, compressed, on the command line,
and the remote engine's Python runs it (``PYTHON -c 'exec(…)' SOURCE COMMAND ARGS…``), so a remote engine of
another version still gets the helper this client speaks to. Standard library only; it runs in any Python 3.8+
and says so itself when the engine's Python is older than the engine needs. POSIX machines only (Linux,
macOS): paths are POSIX, ``~`` is the remote user's home.

Commands (each ends with one JSON line holding ``"equi360_agent": 1``, except where said):

* ``check ROOT``: the engine is in ROOT and ``python -m engine check`` runs there: ``{"check": report}``.
* ``prepare JOB_DIR``: makes the remote job folder, removes what an interrupted upload left, and reports the
  free space, the record of what was uploaded before and the sizes of the files there (``{"job_dir", "free",
  "uploaded", "sizes"}``).
* ``receive JOB_DIR``: files from stdin, each a JSON header line ``{"name", "size"}`` then its bytes, until
  ``{"end": true}``; each written under a temporary name and renamed when complete.
* ``run ROOT JOB_DIR HEARTBEAT_S``: ``python -m engine run JOB_DIR`` in its own session, its stdout (the
  events) and stderr passed through. Stdin carries the client's words: ``cancel`` (the engine stops after its
  step), ``kill``, ``alive`` (the heartbeat). When the connection goes (stdin ends, a write to stdout fails, a
  SIGHUP or SIGTERM, or no word for HEARTBEAT_S seconds), the engine is asked to stop as by ``cancel`` (it
  keeps its finished windows) and killed with its children if it has not within :data:`STOP_GRACE_S`: a
  dropped connection never leaves an engine holding the job. Ends with the engine's exit status.
* ``send JOB_DIR NAME…``: a header line ``{"files": [[relative path, size], …]}`` (the folders among the
  names expanded, the missing ones left out), then the files' bytes one after the other.

Errors the client reports in the user's words come as ``{"error": code, "message": …}`` (exit status 0).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

MARKER = ".equi360_upload.json"   # in the remote job folder: what was uploaded, from which local file
PART = ".equi360-part-"           # the prefix of a file being received
CHUNK = 1 << 20
STOP_GRACE_S = 30.0               # the engine finishes its step after a polite stop; then it is killed
CHECK_TIMEOUT_S = 300.0
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def say(**fields):
    sys.stdout.write(json.dumps(dict(fields, equi360_agent=1)) + "\n")
    sys.stdout.flush()


def expand(path):
    return os.path.abspath(os.path.expanduser(path))


def check(root):
    root = expand(root)
    if sys.version_info < (3, 11):
        return say(error="remote_not_ready", message="its engine's Python %s is %d.%d; the engine needs 3.11 or newer: "
                   "set the remote engine's Python to the one `python -m engine setup` made" % (
                       sys.executable, sys.version_info[0], sys.version_info[1]))
    if not os.path.isfile(os.path.join(root, "engine", "__main__.py")):
        return say(error="remote_not_ready", message="%s holds no engine (no engine/__main__.py): set the remote "
                   "engine folder to the one that holds engine/ and blender_equi360/ (the unpacked extension or a "
                   "checkout)" % root)
    try:
        run = subprocess.run([sys.executable, "-m", "engine", "check"], cwd=root, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return say(error="remote_not_ready", message="its `python -m engine check` took more than %d s"
                   % CHECK_TIMEOUT_S)
    last = (run.stderr.decode("utf-8", "replace").strip().splitlines() or ["exit status %d" % run.returncode])[-1]
    if run.returncode != 0:
        return say(error="remote_not_ready", message="its `python -m engine check` failed (%s): run `python -m engine "
                   "setup ENV_DIR` in %s to make or repair the engine's environment" % (last, root))
    try:
        report = json.loads(run.stdout.decode("utf-8"))
    except ValueError:
        return say(error="remote_not_ready", message="its `python -m engine check` printed no report (%s)" % last)
    say(check=report, root=root, python=sys.executable)


def prepare(job_dir):
    job_dir = expand(job_dir)
    try:
        os.makedirs(job_dir, exist_ok=True)
        for name in os.listdir(job_dir):
            if name.startswith(PART):
                os.remove(os.path.join(job_dir, name))
    except OSError as err:
        return os_error(err, job_dir)
    if not os.access(job_dir, os.W_OK):
        return say(error="remote_not_ready", message="%s is not writable for this user: choose a remote jobs folder "
                   "the user can write to" % job_dir)
    try:
        with open(os.path.join(job_dir, MARKER), encoding="utf-8") as f:
            uploaded = json.load(f)
    except (OSError, ValueError):
        uploaded = {}
    sizes = {}
    for entry in os.scandir(job_dir):
        if entry.is_file(follow_symlinks=False):
            sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    say(job_dir=job_dir, free=shutil.disk_usage(job_dir).free, uploaded=uploaded, sizes=sizes)


def os_error(err, where):
    if err.errno in NO_ROOM:
        return say(error="remote_disk_full", message="no room left in %s (%s)" % (where, err.strerror))
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return say(error="remote_not_ready", message="not allowed to write %s (%s): choose a remote jobs folder the "
                   "user can write to" % (where, err.strerror))
    return say(error="remote_failed", message="%s: %s" % (where, err.strerror or err))


def _plain(name):
    return name and "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(PART)


def receive(job_dir):
    job_dir = expand(job_dir)
    source = sys.stdin.buffer
    received = 0
    while True:
        header = json.loads(source.readline().decode("utf-8") or '{"eof": true}')
        if header.get("eof"):
            sys.exit("equi360 agent: the upload ended early")
        if header.get("end"):
            return say(received=received)
        name, size = header["name"], int(header["size"])
        if not _plain(name):
            sys.exit("equi360 agent: refused the name %r" % name)
        part = os.path.join(job_dir, PART + name)
        try:
            with open(part, "wb") as out:
                left = size
                while left:
                    data = source.read(min(CHUNK, left))
                    if not data:
                        out.close()
                        os.remove(part)
                        sys.exit("equi360 agent: the upload ended early")
                    out.write(data)
                    left -= len(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, os.path.join(job_dir, name))
        except OSError as err:
            try:
                os.remove(part)
            except OSError:
                pass
            return os_error(err, job_dir)
        received += size


def send(job_dir, names):
    job_dir = expand(job_dir)
    files = []
    for name in names:
        path = os.path.normpath(os.path.join(job_dir, name))
        if not path.startswith(job_dir + os.sep):
            continue
        if os.path.isdir(path):
            for folder, _, inside in sorted(os.walk(path)):
                for entry in sorted(inside):
                    full = os.path.join(folder, entry)
                    files.append([os.path.relpath(full, job_dir), os.path.getsize(full)])
        elif os.path.isfile(path):
            files.append([os.path.relpath(path, job_dir), os.path.getsize(path)])
    say(files=files)
    out = sys.stdout.buffer
    for relative, size in files:
        with open(os.path.join(job_dir, relative), "rb") as f:
            left = size
            while left:
                data = f.read(min(CHUNK, left)) or b"\0" * min(CHUNK, left)  # (a file cut short meanwhile)
                out.write(data)
                left -= len(data)
    out.flush()


def run(root, job_dir, heartbeat_s):
    root, job_dir, heartbeat_s = expand(root), expand(job_dir), float(heartbeat_s)
    engine = subprocess.Popen([sys.executable, "-u", "-m", "engine", "run", job_dir], cwd=root,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    state = {"heard": time.monotonic(), "stopping": None}
    lock = threading.Lock()

    def signal_group(sig):
        try:
            os.killpg(engine.pid, sig)
        except OSError:
            pass

    def stop(kill=False):
        """Ask the engine to stop after its step (``cancel`` and SIGINT); kill its group if it has not within
        the grace (or at once)."""
        with lock:
            if kill:
                signal_group(signal.SIGKILL)
                return
            if state["stopping"] is not None:
                return
            state["stopping"] = time.monotonic()
        try:
            engine.stdin.write(b"cancel\n")
            engine.stdin.flush()
        except (OSError, ValueError):
            pass
        signal_group(signal.SIGINT)

    def from_client():
        pending = b""
        while True:
            try:
                data = os.read(0, 4096)  # raw reads: a buffered stdin's lock would stall the exit
            except OSError:
                data = b""
            if not data:
                break
            state["heard"] = time.monotonic()
            *words, pending = (pending + data).split(b"\n")
            for word in words:
                if word.strip() == b"cancel":
                    stop()
                elif word.strip() == b"kill":
                    stop(kill=True)
        stop()  # end of file: the client closed the connection, or the connection went

    def forward(source, target):
        broken = False
        for line in iter(source.readline, b""):
            if broken:
                continue
            try:
                target.write(line)
                target.flush()
            except (OSError, ValueError):
                broken = True  # nobody is listening any more: stop, and keep reading so the engine never blocks
                stop()

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=from_client, daemon=True).start()
    errors = threading.Thread(target=forward, args=(engine.stderr, sys.stderr.buffer), daemon=True)
    errors.start()
    events = threading.Thread(target=forward, args=(engine.stdout, sys.stdout.buffer), daemon=True)
    events.start()
    while engine.poll() is None:
        time.sleep(0.5)
        now = time.monotonic()
        if heartbeat_s > 0 and now - state["heard"] > heartbeat_s:
            stop()
        if state["stopping"] is not None and now - state["stopping"] > STOP_GRACE_S:
            stop(kill=True)
    signal_group(signal.SIGKILL)  # a child that outlived the engine
    events.join(5)
    errors.join(5)
    code = engine.returncode
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if code >= 0 else 128 - code)  # at once: the thread reading stdin is still blocked in it


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "check":
        check(args[0])
    elif command == "prepare":
        prepare(args[0])
    elif command == "receive":
        receive(args[0])
    elif command == "send":
        send(args[0], args[1:])
    elif command == "run":
        run(args[0], args[1], args[2])
    else:
        sys.exit("equi360 agent: unknown command %r" % command)


if __name__ == "__main__":
    main(sys.argv[1:])
