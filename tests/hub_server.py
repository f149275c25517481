"""A Hugging Face Hub on the loopback interface, for the download tests: enough of the hub's file API for
huggingface_hub 2.4 (``HF_ENDPOINT=http://127.0.0.1:PORT``) and ``python -m engine models fetch`` to work
through it, with the faults a real connection has.

What it answers, as huggingface.co does:

- ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: the file, with ``ETag`` (its sha256, as for LFS files),
  ``X-Repo-Commit``, ``Content-Length`` and ``Accept-Ranges``; ``Range: bytes=N-`` gets ``206`` with
  ``Content-Range``. A gated repository answers ``403`` with ``X-Error-Code: GatedRepo``; a missing file
  ``404`` with ``EntryNotFound``; an unknown repository ``401`` with ``RepoNotFound``.
- ``GET /api/models/{repo}/tree/{revision}``: the repository's files (``path``, ``size``, ``oid``, ``lfs``).

Faults, per file: ``drop_after[key] = N`` closes the connection after N bytes of the first GET;
``trickle_after[key] = N`` sends the rest slowly after N bytes (time to cancel or kill the client);
``announce[key] = SIZE`` reports another size than the file has. ``requests`` records every request.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TRICKLE_BYTES, TRICKLE_PAUSE_S = 64 * 1024, 0.1


class FakeHub:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.gated: set[str] = set()
        self.drop_after: dict[tuple[str, str], int] = {}
        self.trickle_after: dict[tuple[str, str], int] = {}
        self.announce: dict[tuple[str, str], int] = {}
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-hub")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo: str, path: str, data: bytes) -> None:
        self.files[(repo, path)] = data

    def gets(self, path: str) -> list[dict]:
        """The GET requests of one file (any repository), in order."""
        return [r for r in self.requests if r["method"] == "GET" and r["file"] == path]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the tests read hub.requests instead
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool):
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/")]
            if parts[1:3] == ["api", "models"] and len(parts) >= 7 and parts[5] == "tree":
                return self._tree(f"{parts[3]}/{parts[4]}")
            if len(parts) < 6 or parts[3] != "resolve":
                return self._error(404, "RepoNotFound", "no such route")
            repo, path = f"{parts[1]}/{parts[2]}", "/".join(parts[5:])
            hub.requests.append({"method": self.command, "repo": repo, "file": path,
                                 "range": self.headers.get("Range")})
            if repo in hub.gated:
                return self._error(403, "GatedRepo", f"Access to model {repo} is restricted. You must have access to "
                                                     "it and be authenticated to access it. Please log in.")
            if not any(r == repo for r, _ in hub.files):
                return self._error(401, "RepoNotFound", "Repository not found")
            if (repo, path) not in hub.files:
                return self._error(404, "EntryNotFound", f"{path} does not exist on main")
            self._file(repo, path, body)

        def _file(self, repo: str, path: str, body: bool):
            key, data = (repo, path), hub.files[(repo, path)]
            start = 0
            if body and (wanted := self.headers.get("Range")):
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self._error(416, None, "range not satisfiable")
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            size = hub.announce.get(key, len(data)) if not body else len(data)
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            rest = data[start:]
            if (cut := hub.drop_after.pop(key, None)) is not None:
                self.wfile.write(rest[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            if (quick := hub.trickle_after.get(key)) is not None:
                self.wfile.write(rest[:quick])
                for at in range(quick, len(rest), TRICKLE_BYTES):
                    time.sleep(TRICKLE_PAUSE_S)
                    self.wfile.write(rest[at:at + TRICKLE_BYTES])
                return
            self.wfile.write(rest)

        def _tree(self, repo: str):
            if repo in hub.gated or not any(r == repo for r, _ in hub.files):
                return self._error(401, "RepoNotFound", "Repository not found")
            listing = [{"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest(),
                        "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
                       for (r, path), data in sorted(hub.files.items()) if r == repo]
            payload = json.dumps(listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, code: str | None, message: str):
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
