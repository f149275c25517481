# SPDX-License-Identifier: GPL-3.0-or-later
"""What a backend is to the runner: a *generator* of a job's windows.

``prepare()`` once per job (load the models, encode the prompt), then ``generate(window, reference,
condition, seed)`` for each window still to make, then ``report()`` and ``close()``. The backends are
:class:`engine.draft.DraftGenerator` and :class:`engine.ltx.LtxGenerator`; the runner picks one by the
job's backend (:data:`engine.runner.GENERATORS`), each built as ``Generator(job_dir, job, channel)``.
"""

from __future__ import annotations

from typing import Iterator, Protocol, TypedDict

import numpy as np

from blender_equi360.jobs.windows import TimeWindow


class GeneratorReport(TypedDict):
    """What a backend adds to the ``done`` event (blender_equi360/jobs/protocol.py)."""
    peak_vram_gb: float | None     # GPU memory at its peak, measured; None without a GPU
    memory_plan_gb: dict | None    # weights planned on the GPU per phase (text_gb, denoise_gb, decode_gb)


class Generator(Protocol):
    title: str | None  # written into the delivered video's metadata (the draft says it is one)

    def prepare(self) -> None:
        """Once, before the first window."""

    def generate(self, window: TimeWindow, reference: np.ndarray, condition: np.ndarray | None,
                 seed: int) -> Iterator[np.ndarray]:
        """The window's frames in order, uint8 (H, W, 3) at the reference's canvas: at least
        ``window.frames`` of them. ``reference``: the window's reference frames [window.length, H, W, 3];
        ``condition``: the previous window's output over the frames they share, or None."""

    def report(self) -> GeneratorReport:
        """After the last window."""

    def close(self) -> None:
        """Release what prepare() took (also after a failure)."""
