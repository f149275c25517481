# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine models fetch SET DIR``: download a model set (:mod:`engine.model_sets`) from the Hugging
Face Hub into DIR, in ComfyUI's layout, reporting on the engine's protocol.

In order:

1. **Ask the hub** about every file (a HEAD per file, through ``huggingface_hub``; a folder's files from its
   tree listing): its size and ETag. A gated repository, a missing file, no connection or ``HF_HUB_OFFLINE``
   stop the run here, before any byte is written.
2. **Check the disk**: the bytes still to download (files already complete and partial downloads count as
   done) against the free space of DIR; too little is an error giving both figures.
3. **Download** each file to ``NAME.<etag>.incomplete`` beside its final place, appending to what an earlier
   run left there (an HTTP ``Range`` request), so an interrupted run (cancel, crash, lost connection)
   continues where it stopped when run again; a dropped connection is retried at once the same way. The
   file is checked, its size against the hub's and a safetensors file's header against its length, and only
   then renamed to its final name. A file that fails the check is deleted.

``hf_hub_download`` is not used for the transfer itself: huggingface_hub 2.4 downloads to a temporary
name unique to the process and deletes it on any failure, so it cannot continue a 46 GB file across runs,
and it offers neither cancellation nor progress other than a terminal bar. The requests, authentication
(``HF_TOKEN`` or ``hf auth login``), ``HF_ENDPOINT``, proxies and the hub's errors are huggingface_hub's.

Events (stdout, JSON lines; :mod:`blender_equi360.jobs.protocol`): ``log``; ``progress`` with stage
``download``, ``step``/``total`` the bytes of the whole set, and ``file``, ``file_step``, ``file_total`` for
the file in progress; at the end ``done`` with ``outputs`` = the four job.json ``models`` paths, or
``error``. Cancel: SIGINT or a ``cancel`` line on stdin, as for ``run``; the partial file is kept.
"""

from __future__ import annotations

import errno
import fnmatch
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from blender_equi360.jobs.protocol import EXIT_CODES

from .model_sets import SETS, ModelSet, RemoteFile, RemoteFolder
from .protocol_io import Cancelled, Channel, EngineError
from .weights import read_header

RETRIES = 5             # attempts in a row that bring no new byte, before giving up on a file
PROGRESS_EVERY_S = 0.5  # at most two progress events a second (and one at each file's start and end)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass(frozen=True)
class Download:
    """One file to bring: where it comes from, where it goes, what the hub says it is."""
    repo: str
    path_in_repo: str
    target: Path
    size: int
    etag: str
    url: str
    endpoint: str | None  # None: HF_ENDPOINT or huggingface.co

    @property
    def partial(self) -> Path:
        # The ETag in the name: a partial file of an older version of the file is never continued.
        return self.target.with_name(f"{self.target.name}.{self.etag[:16]}.incomplete")

    def bytes_present(self) -> int:
        if self.complete():
            return self.size
        return self.partial.stat().st_size if self.partial.is_file() else 0

    def complete(self) -> bool:
        return self.target.is_file() and self.target.stat().st_size == self.size


def fetch(set_name: str, folder, channel: Channel, endpoint: str | None = None) -> int:
    """Download the set ``set_name`` into ``folder``; returns the exit status. Every outcome ends with a
    ``done`` or an ``error`` event. ``endpoint``: the hub's address (default: ``HF_ENDPOINT`` or huggingface.co)."""
    started = time.monotonic()
    folder = Path(folder).expanduser().absolute()
    try:
        model_set = SETS[set_name]
        if folder.exists() and not folder.is_dir():
            raise EngineError("bad_input", f"{folder} is not a folder: give the folder to download into")
        downloads = plan(model_set, folder, endpoint)
        check_room(downloads, folder)
        make_folder(folder)
        downloaded = Transfer(downloads, channel).run()
        outputs = preference_paths(model_set, folder)
        channel.emit("done", outputs=outputs, set=set_name, folder=str(folder), downloaded_bytes=downloaded,
                     seconds=round(time.monotonic() - started, 2))
        return 0
    except EngineError as err:
        return _fail(channel, err.code, str(err))
    except OSError as err:
        return _fail(channel, *_io_error(folder, err))
    except Exception as err:  # a bug: say so on the protocol too, then keep the traceback on stderr
        channel.emit("error", code="internal", message=f"internal error: {err!r}")
        raise


def _fail(channel: Channel, code: str, message: str) -> int:
    channel.log(f"error [{code}]: {message}")
    channel.emit("error", code=code, message=message)
    return EXIT_CODES[code]


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EngineError(*_io_error(folder, err)) from None


def _io_error(folder: Path, err: OSError) -> tuple[str, str]:
    where = err.filename or folder
    if err.errno in NO_ROOM:
        return "disk_full", f"no room left in {where} ({err.strerror}): free some space and run the same command " \
                            "again; what was downloaded is kept"
    if err.errno in NO_PERMISSION:
        return "permission_denied", f"not allowed to write {where} ({err.strerror}): choose a folder this user " \
                                    "can write"
    return "download_failed", f"{where}: {err.strerror or err}"


# --- 1. ask the hub ---------------------------------------------------------------------------------------------

def plan(model_set: ModelSet, folder: Path, endpoint: str | None) -> list[Download]:
    downloads = []
    for item in model_set.files:
        if isinstance(item, RemoteFile):
            downloads.append(describe(item.repo, item.path, folder / item.local_name, endpoint))
        else:
            downloads += [describe(item.repo, path, folder / item.subfolder / path, endpoint)
                          for path in folder_files(item, endpoint)]
    return downloads


def folder_files(item: RemoteFolder, endpoint: str | None) -> list[str]:
    """The repository's top-level files that match the folder's patterns."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    with hub_errors(item.repo, "its file list", endpoint):
        tree = list(HfApi(endpoint=endpoint).list_repo_tree(item.repo, recursive=False))
    paths = sorted(entry.path for entry in tree if isinstance(entry, RepoFile) and "/" not in entry.path
                   and any(fnmatch.fnmatch(entry.path, pattern) for pattern in item.patterns))
    if not any(p.endswith(".safetensors") for p in paths):
        raise EngineError("download_failed", f"{item.repo} lists no .safetensors weights: it has changed on the hub")
    return paths


def describe(repo: str, path: str, target: Path, endpoint: str | None) -> Download:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    url = hf_hub_url(repo, path, endpoint=endpoint)
    with hub_errors(repo, path, endpoint):
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
    if metadata.size is None or not metadata.etag:
        raise EngineError("download_failed", f"the hub did not say how big {repo}/{path} is: is HF_ENDPOINT a "
                                             "Hugging Face Hub?")
    return Download(repo, path, target, metadata.size, metadata.etag, url, endpoint)


class hub_errors:
    """huggingface_hub's and the network's errors, as the protocol's errors with what to do."""

    def __init__(self, repo: str, what: str, endpoint: str | None):
        self.repo, self.what, self.endpoint = repo, what, endpoint

    def __enter__(self):
        return self

    def __exit__(self, kind, err, traceback):
        if isinstance(err, Exception) and (error := translated(err, self.repo, self.what, self.endpoint)):
            raise error from None
        return False


def translated(err: Exception, repo: str, what: str, endpoint: str | None) -> EngineError | None:
    """The protocol's error for one of huggingface_hub's or the connection's; None for any other."""
    import httpx2
    from huggingface_hub import constants, get_token
    from huggingface_hub import errors as hub
    endpoint = endpoint or constants.ENDPOINT
    page = f"{endpoint}/{repo}"
    if isinstance(err, hub.GatedRepoError):
        who = ("the account of the token this machine uses has not been granted access yet (or is waiting for "
               "approval)" if get_token() else "this machine is not logged in to Hugging Face")
        return EngineError("gated_repo", f"{repo} is gated and {who}: open {page}, log in and accept its licence, "
                                         "then log in here (hf auth login, or set HF_TOKEN to an access token) and "
                                         "run the same command again")
    if isinstance(err, hub.OfflineModeIsEnabled):
        return EngineError("download_failed", "HF_HUB_OFFLINE is set: unset it to download")
    if isinstance(err, hub.RemoteEntryNotFoundError):
        return EngineError("download_failed", f"{repo} has no {what} any more ({page}): it was renamed or removed "
                                              "upstream; a newer Equi360 knows its new name")
    if isinstance(err, (hub.RepositoryNotFoundError, hub.RevisionNotFoundError)):
        return EngineError("download_failed", f"{page} was not found (or is private): check the name, or log in "
                                              "(hf auth login, or HF_TOKEN)")
    if isinstance(err, hub.HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        return EngineError("download_failed", f"the hub answered {status} for {repo}/{what}: try again later")
    if isinstance(err, httpx2.TransportError):
        return EngineError("download_failed", f"cannot reach {endpoint} ({type(err).__name__}: {err}): "
                                              "check the connection (and HTTPS_PROXY behind a proxy), then run the "
                                              "same command again; what was downloaded is kept")
    return None  # the disk's errors (fetch() reports them) and bugs


# --- 2. check the disk ------------------------------------------------------------------------------------------

def check_room(downloads: list[Download], folder: Path) -> None:
    needed = sum(d.size - d.bytes_present() for d in downloads)
    existing = next(p for p in (folder, *folder.parents) if p.is_dir())  # DIR is made once this check passes
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise EngineError("disk_full", f"the set needs {needed:,} more bytes ({needed / 1e9:.1f} GB) and {folder} "
                                       f"has {free:,} bytes ({free / 1e9:.1f} GB) free: free "
                                       f"{(needed - free) / 1e9:.1f} GB or choose another folder")


# --- 3. download ------------------------------------------------------------------------------------------------

class Transfer:
    """Brings each file in turn, with progress events over the whole set."""

    def __init__(self, downloads: list[Download], channel: Channel):
        self.downloads, self.channel = downloads, channel
        self.total = sum(d.size for d in downloads)
        self.done = sum(d.bytes_present() for d in downloads)  # bytes of the set on disk, counting earlier runs
        self.brought = 0                                       # bytes downloaded by this run
        self.started = time.monotonic()
        self.last_event = 0.0

    def run(self) -> int:
        for download in self.downloads:
            if download.complete():
                self.channel.log(f"{download.target}: already here ({download.size:,} bytes)")
                continue
            download.target.parent.mkdir(parents=True, exist_ok=True)
            for stale in download.target.parent.glob(f"{download.target.name}.*.incomplete"):
                if stale != download.partial:  # an older version's
                    stale.unlink()
            if download.target.exists():
                self.channel.log(f"{download.target} has another size than the hub's file: it is replaced once the "
                                 "download is complete")
            self.channel.log(f"downloading {download.repo}/{download.path_in_repo} ({download.size / 1e9:.2f} GB) "
                             f"to {download.target}")
            self.bring(download)
            self.check(download)
            download.partial.replace(download.target)
            self.report(download, download.size, force=True)
        self.report(None, 0, force=True)
        return self.brought

    def bring(self, download: Download) -> None:
        """Appends to the partial file until the hub's answer ends; a dropped connection is taken up again from
        the last byte written, until RETRIES attempts in a row bring nothing."""
        import httpx2
        failures = 0
        while (have := download.bytes_present()) < download.size:
            self.report(download, have, force=True)
            self.stop_if_cancelled(download, have)
            try:
                self.stream(download, have)
                return  # the answer ended as the hub meant it to: check() says whether it was the whole file
            except httpx2.TransportError as err:
                failures = 0 if download.bytes_present() > have else failures + 1
                if failures >= RETRIES:
                    raise translated(err, download.repo, download.path_in_repo, download.endpoint) from None
                self.channel.log(f"connection lost ({type(err).__name__}): continuing from "
                                 f"{download.bytes_present():,} bytes")
                time.sleep(min(8.0, 2.0 ** (failures - 1)))

    def stream(self, download: Download, have: int) -> None:
        """One GET from byte ``have`` on, appended to the partial file."""
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
        headers = {**build_hf_headers(), "Accept-Encoding": "identity"}  # the bytes as stored, never recompressed
        if have:
            headers["Range"] = f"bytes={have}-"
        with get_session().stream("GET", download.url, headers=headers,
                                  timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            with hub_errors(download.repo, download.path_in_repo, download.endpoint):
                hf_raise_for_status(response)
            if have and response.status_code != 206:  # the whole file came instead: write it from the start
                self.done -= have
                have = 0
            elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise EngineError("download_failed", f"{download.url}: the hub answered a resumed download with "
                                                     f"another range ({response.headers.get('Content-Range')})")
            with open(download.partial, "ab" if have else "wb") as out:
                for chunk in response.iter_bytes():  # as the bytes arrive: a drop loses none already received
                    out.write(chunk)
                    self.done += len(chunk)
                    self.brought += len(chunk)
                    if out.tell() > download.size:
                        return  # more than the hub announced: check() refuses it
                    self.report(download, out.tell())
                    self.stop_if_cancelled(download, out.tell())

    def stop_if_cancelled(self, download: Download, have: int) -> None:
        try:
            self.channel.check_cancel()
        except Cancelled:
            raise EngineError("cancelled", f"download cancelled: the {have:,} bytes of {download.target.name} "
                                           "already here are kept; run the same command again to continue") from None

    def check(self, download: Download) -> None:
        """The whole file, as the hub described it; else it is deleted (its bytes cannot be trusted)."""
        size = download.partial.stat().st_size
        problem = None
        if size != download.size:
            problem = f"came as {size:,} bytes, and the hub says it has {download.size:,}"
        elif download.target.suffix == ".safetensors":
            try:
                read_header(download.partial, download.target.name)
            except EngineError as err:
                problem = f"is damaged ({err})"
        if problem:
            download.partial.unlink()
            self.done -= size
            raise EngineError("download_failed", f"{download.repo}/{download.path_in_repo} {problem}: it was "
                                                 "deleted; run the same command again")

    def report(self, download: Download | None, file_step: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_event < PROGRESS_EVERY_S:
            return
        self.last_event = now
        elapsed = now - self.started
        eta = round((self.total - self.done) * elapsed / self.brought, 1) if self.brought and elapsed > 0 else None
        where = {"file": str(download.target), "file_step": file_step, "file_total": download.size} if download else {}
        self.channel.emit("progress", stage="download", step=self.done, total=self.total, eta_s=eta, **where)


# --- the result -------------------------------------------------------------------------------------------------

def preference_paths(model_set: ModelSet, folder: Path) -> dict:
    """The four job.json ``models`` paths (the add-on's preferences); None for a part the set has not."""
    paths = dict.fromkeys(("checkpoint", "text_encoder", "ic_lora", "distilled_lora"))
    for item in model_set.files:
        paths[item.role] = str(folder / item.local_name)
    return paths
