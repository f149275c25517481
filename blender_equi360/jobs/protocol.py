"""The subprocess protocol between the add-on and the engine: events, error codes, exit codes.

The engine writes one JSON object per line on stdout and nothing else there; logs go to stderr and to
``engine.log`` in the job folder. Events:

* ``{"event": "progress", "stage": str, "step": int, "total": int, "eta_s": float | null}``, with
  ``"window": int, "windows": int`` (1-based) while a window of a longer clip is being made; from ``run``,
  with ``"job_fraction": float`` (0–1, the whole job's share done, never less than the last one said) and
  ``"job_eta_s": float | null`` (the job's seconds left, never more than the last one said less the time
  since; null until it can be told); stage ``finish`` runs beside the windows' stages; from
  ``models fetch``, stage ``download`` counts bytes of the whole set, with ``"file": path, "file_step": int,
  "file_total": int`` for the file in progress
* ``{"event": "log", "message": str}``
* ``{"event": "warning", "code": str, "message": str}``, ``code`` one of ``WARNING_CODES``
* ``{"event": "error", "code": str, "message": str}``: the run failed; the process exits with
  ``EXIT_CODES[code]``
* ``{"event": "done", "outputs": {"video": path}, "seconds": float, "backend": str, "draft": bool,
  "peak_vram_gb": float | null, "memory_plan_gb": {"text_gb", "denoise_gb", "decode_gb": float} | null}``
  (the last two are the backend's report: the GPU memory it measured and planned; null for the draft);
  from ``models fetch``: ``{"event": "done", "outputs": {"checkpoint", "text_encoder", "ic_lora",
  "distilled_lora": path | null}, "set": str, "folder": str, "downloaded_bytes": int, "seconds": float}``
  (``outputs`` are job.json's ``models``: the paths for the add-on's preferences); from ``setup``:
  ``{"event": "done", "outputs": {"python": path}, "folder": str, "torch": str, "torch_index": str | null,
  "check": {…}, "seconds": float}`` (``check`` is ``python -m engine check``'s report in the new environment)

From ``setup``, stage ``setup`` has one progress event as each step begins, ``"phase"`` naming it (``venv``,
``torch``, ``packages``, ``check``) and ``step`` the steps already finished (``step`` 4 when all are), and pip's
output comes as ``log`` events.

The client (:mod:`.engine_process`) reports an engine that dies without an ``error`` as the error
``crashed`` (``CLIENT_CODES``). The remote client (:mod:`.remote`, the engine on another machine over SSH) adds
progress stages ``connect``, ``upload`` and ``download`` (``step`` and ``total`` in bytes for the last two), the
``remote_…`` codes of ``CLIENT_CODES``, and to ``done``: ``remote``, ``remote_job_dir``, ``uploaded_bytes`` and
``downloaded_bytes`` (its ``outputs`` are the downloaded local files).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import Equi360Error

# Each error the engine reports has a code (for programs) and a distinct exit status (for shells).
EXIT_CODES = {
    "internal": 1,
    "bad_job": 10,
    "no_cuda": 11,
    "cuda_oom": 12,
    "missing_weights": 13,
    "corrupt_weights": 14,
    "ltx20_checkpoint": 15,
    "wrong_lora": 16,
    "bad_input": 17,
    "incompatible_job": 18,  # the job folder was made by another version
    "job_busy": 19,          # another engine is running this job folder
    "cancelled": 20,
    "disk_full": 21,         # finished windows are kept: free space and run the job again
    "permission_denied": 22,
    "unknown_checkpoint": 23,  # neither the file nor the job says dev or distilled: set checkpoint_variant
    "wrong_recipe": 24,        # the preset and the checkpoint do not go together (e.g. quality on distilled)
    "gated_repo": 25,          # models fetch: accept the repository's licence on the hub, and log in
    "download_failed": 26,     # models fetch: no connection, a file missing upstream, or a damaged download
    "setup_failed": 27,        # setup: a step of making the engine's environment failed (the message names it)
}
EVENTS = ("progress", "log", "warning", "error", "done")
WARNING_CODES = {
    "draft_fallback": "no CUDA GPU or model files for backend auto: a labelled draft is made instead",
    "steps_ignored": "the fast preset has a fixed schedule: the job's steps are not used",
    "distilled_lora_ignored": "the checkpoint is the distilled model itself: the distilled LoRA is not loaded",
    "setup_no_cuda": "setup: an NVIDIA driver answers but the installed torch sees no CUDA device",
}
CLIENT_CODES = {
    "crashed": "the engine ended without an error event (killed, or a fault in its Python)",
    # The engine on another machine over SSH (remote.py); each message says what to do.
    "remote_unreachable": "the SSH connection could not be made (host name, port, network, no SSH server)",
    "remote_auth": "the remote machine refused the key, or the identity file cannot be used",
    "remote_host_key": "the remote machine's host key is not the one recorded for it",
    "remote_not_ready": "the remote engine is missing or not ready (its Python, its folder, its packages, its GPU), "
                        "or the remote jobs folder cannot be written",
    "remote_disk_full": "no room on the remote machine for the upload or the job (finished windows are kept)",
    "remote_connection_lost": "the connection dropped during the job: the remote job keeps its finished windows, "
                              "the next attempt continues it",
    "remote_failed": "a remote step failed otherwise (the message has ssh's or the remote side's last words)",
}


class ProtocolError(Equi360Error):
    """A line on the engine's stdout that is not one of the protocol's events."""


def event_line(event: str, **fields: Any) -> str:
    """One protocol line (without the newline)."""
    if event not in EVENTS:
        raise ProtocolError(f"unknown event {event!r}")
    return json.dumps({"event": event, **fields}, ensure_ascii=False, allow_nan=False)


def parse_event(line: str) -> dict:
    """Parse one stdout line of the engine; a line that is not a protocol event raises ProtocolError."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        raise ProtocolError(f"not a JSON line: {line[:80]!r}") from None
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        raise ProtocolError(f"not a protocol event: {line[:80]!r}")
    return event
