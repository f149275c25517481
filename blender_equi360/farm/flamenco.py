# SPDX-License-Identifier: GPL-3.0-or-later
"""Submitting conversions to a Flamenco render farm through its manager's HTTP API (``/api/v3``).

The farm runs the ``equi360`` job type (``farm/equi360.js``, copied into the ``scripts/`` folder next to
``flamenco-manager``): one task per shot, each running the engine on that shot's job folder on the
farm's shared storage. Standard library only and no ``bpy``, so the add-on and scripts share it; every
failure is an :class:`Equi360Error` that says what went wrong and what to do.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePath

from ..jobs.errors import Equi360Error
from ..jobs.job import JOB_FILE

JOB_TYPE = "equi360"  # Flamenco names a job type after its script's file name
SCRIPT = Path(__file__).resolve().with_name("equi360.js")
TIMEOUT_S = 10.0
_REACH = "check the manager URL in the add-on preferences and that flamenco-manager is running"


def manager_base(url: str) -> str:
    """The manager's base URL, ``http://`` added when no scheme is given, without a trailing slash."""
    url = url.strip()
    if url and "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Equi360Error(f"{url!r} is not a Flamenco manager URL: give one like http://flamenco.local:8080")
    return url.rstrip("/")


def job_page(url: str, job_id: str) -> str:
    """The job in the manager's web interface."""
    return f"{manager_base(url)}/app/jobs/{job_id}"


def job_type(url: str, timeout: float = TIMEOUT_S) -> dict:
    """Check that ``url`` is a Flamenco manager with the ``equi360`` job type installed; returns the job
    type (``label``, ``settings``, ``etag``)."""
    base = manager_base(url)
    version = _call(base, "GET", "/api/v3/version", timeout=timeout, on_status={
        404: f"{base} does not answer like a Flamenco manager (no /api/v3/version): {_REACH}"})
    if not isinstance(version, dict) or "version" not in version:
        raise Equi360Error(f"{base} does not answer like a Flamenco manager: {_REACH}")
    info = _call(base, "GET", f"/api/v3/jobs/type/{JOB_TYPE}", timeout=timeout, on_status={
        404: f"the Flamenco manager at {base} has no {JOB_TYPE!r} job type: copy {SCRIPT} into the scripts/ "
             "folder next to flamenco-manager and restart the manager"})
    if not isinstance(info, dict) or not info.get("etag"):
        raise Equi360Error(f"the Flamenco manager at {base} sent a job type without an etag: is it Flamenco 3?")
    return info


def job_settings(job_dirs) -> dict:
    """The job type's ``job_root`` and ``shots`` for these job folders: their common parent, and each
    folder relative to it, one a line (a root the manager's two-way variables can map per platform)."""
    dirs = [os.path.normpath(str(d)) for d in job_dirs]
    if not dirs:
        raise Equi360Error("no job folders to submit")
    for job_dir in dirs:
        if not os.path.isabs(job_dir):
            raise Equi360Error(f"{job_dir}: a job folder for the farm must be an absolute path on its shared storage")
        if not os.path.isfile(os.path.join(job_dir, JOB_FILE)):
            raise Equi360Error(f"{job_dir}: not a job folder (no {JOB_FILE})")
    if len(set(dirs)) != len(dirs):
        raise Equi360Error("the same job folder is listed twice")
    try:
        root = os.path.commonpath([os.path.dirname(d) for d in dirs])
    except ValueError:
        raise Equi360Error("the job folders are on different drives: put them under one folder on the farm's "
                           "shared storage") from None
    shots = [PurePath(os.path.relpath(d, root)).as_posix() for d in dirs]
    if any("\n" in shot or "\r" in shot for shot in shots):
        raise Equi360Error("a job folder's name has a line break: rename it")
    return {"job_root": root, "shots": "\n".join(shots)}


def worker_tag_id(url: str, tag: str, timeout: float = TIMEOUT_S) -> str:
    """The id of the worker tag named ``tag`` (its name as the manager shows it, or its id)."""
    base = manager_base(url)
    tags = (_call(base, "GET", "/api/v3/worker-mgt/tags", timeout=timeout) or {}).get("tags") or []
    for candidate in tags:
        if tag.strip() in (candidate.get("name"), candidate.get("id")):
            return candidate["id"]
    known = ", ".join(sorted(t.get("name", "?") for t in tags)) or "none"
    raise Equi360Error(f"the Flamenco manager has no worker tag {tag!r} (it has: {known}): fix the worker tag "
                       "in the add-on preferences, or leave it empty for any worker")


def submit(url: str, job_dirs, name: str, *, priority: int = 50, worker_tag: str = "", metadata: dict | None = None,
           settings: dict | None = None, info: dict | None = None, timeout: float = TIMEOUT_S) -> str:
    """Submit one ``equi360`` job, one task per job folder; returns the Flamenco job id.

    ``settings`` overrides the job type's (e.g. ``engine_python``); ``info`` is a job type already
    fetched with :func:`job_type` (its etag makes the manager refuse a job made for an older script)."""
    base = manager_base(url)
    ours = job_settings(job_dirs)
    info = info or job_type(base, timeout)
    defaults = {s["key"]: s["default"] for s in info.get("settings", []) if "default" in s}
    body = {
        "name": name, "type": JOB_TYPE, "priority": priority, "type_etag": info["etag"],
        "submitter_platform": platform.system().lower(),  # Go's GOOS names: linux, windows, darwin
        "settings": {**defaults, **ours, **(settings or {})},
        "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
    }
    if worker_tag.strip():
        body["worker_tag"] = worker_tag_id(base, worker_tag, timeout)
    job = _call(base, "POST", "/api/v3/jobs", body, timeout=timeout, on_status={
        412: f"the {JOB_TYPE!r} job type changed on the Flamenco manager while submitting: submit again"})
    if not isinstance(job, dict) or not job.get("id"):
        raise Equi360Error(f"the Flamenco manager at {base} accepted the job but sent no job id")
    return job["id"]


def _call(base: str, method: str, path: str, body=None, *, timeout: float, on_status: dict | None = None):
    """One request; the JSON answer (None when empty). ``on_status`` maps an HTTP error status to the
    message to raise instead of the manager's own."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json", "User-Agent": "Equi360"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        if on_status and err.code in on_status:
            raise Equi360Error(on_status[err.code]) from None
        raise Equi360Error(f"the Flamenco manager at {base} refused {method} {path} (HTTP {err.code}): "
                           f"{_error_message(err)}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise Equi360Error(f"could not reach the Flamenco manager at {base} ({reason}): {_REACH}") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Equi360Error(f"{base} answered {path} with something that is not JSON: is this a Flamenco "
                           f"manager? {_REACH}") from None


def _error_message(err: urllib.error.HTTPError) -> str:
    """The manager's own words: its errors are ``{"code": ..., "message": ...}``; else what came back."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        return str(json.loads(raw)["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace").strip()[:200] or str(err.reason) or "no details"
