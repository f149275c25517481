# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine preview VIDEO -o SHEET.png [--frame N] [--job JOB_DIR]``: the preview sheet made in the
engine's process, so that Blender does not wait for the decode and the six views (the add-on's
``equi360.show_preview``). A frame past the video's end is its last one (the playhead may be beyond the
result). Prints ``{"sheet": path, "frame": n}`` as JSON; an error is one line on stderr and exit status 1."""

from __future__ import annotations

import json
import sys

from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.media.video import probe
from blender_equi360.quality.preview import preview_sheet


def preview(video: str, output: str, frame: int | None, job_dir: str | None) -> int:
    try:
        if frame is not None:
            frame = max(0, min(frame, probe(video).frame_count - 1))
        sheet = preview_sheet(video, output, frame, job_dir)
    except Equi360Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"sheet": str(sheet), "frame": frame}))
    return 0
