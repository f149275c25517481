"""Only whole files are ever published: everything is written under a temporary name next to its place
(``.NAME.partial-PID``, which a later run recognises as left over) and renamed into place only when complete."""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import Equi360Error

PARTIAL_GLOB = ".*.partial-*"  # what a killed run leaves behind


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


@contextmanager
def atomic_outputs(*paths: Path):
    """Yield temporary paths next to ``paths``; rename them all into place only if the block succeeds,
    delete them otherwise (including on Ctrl-C), so a failed run never leaves a half-written file."""
    temps = []
    try:
        for p in paths:
            p = Path(p)
            if not p.parent.is_dir():
                raise Equi360Error(f"{p}: the folder {p.parent} does not exist")
            if not os.access(p.parent, os.W_OK):
                raise PermissionError(errno.EACCES, f"the folder {p.parent} is not writable", str(p))
            if p.is_dir():
                raise Equi360Error(f"{p}: is a folder; name an output file")
            temps.append(partial_path(p))
        yield temps
        for tmp, final in zip(temps, paths):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = partial_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(folder: Path | None):
    """A temporary folder next to ``folder``, renamed to it (replacing it) only if the block succeeds."""
    if folder is None:
        yield None
        return
    tmp = partial_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
