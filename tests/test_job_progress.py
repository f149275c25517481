"""The job's progress (engine/protocol_io.py): one share that only grows and one time left that only shrinks,
across parts that run at once and stages whose own counters start again from zero."""

import io
import json

import pytest

from engine import protocol_io
from engine.protocol_io import Channel, JobProgress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(protocol_io.time, "monotonic", clock)
    return clock


def test_the_share_only_grows_and_the_time_left_only_shrinks(clock):
    job = JobProgress({"reference": 1.0, "prepare": 0.0, "generate": 6.0, "finish": 3.0})
    assert "prepare" not in job.shares and sum(job.shares.values()) == pytest.approx(1.0)
    said = []
    # The reference, then windows with the finish following, a part going back (a resumed stage counting
    # again), and a slow patch that would raise a plain estimate.
    steps = [("reference", 0.5, 1), ("reference", 1.0, 1), ("generate", 0.2, 2), ("finish", 0.1, 1),
             ("generate", 0.1, 1), ("generate", 0.5, 20), ("finish", 0.4, 1), ("generate", 1.0, 2),
             ("finish", 0.7, 1), ("finish", 1.0, 1)]
    for part, fraction, seconds in steps:
        clock.now += seconds
        said.append(job.advance(part, fraction))
    shares = [s for s, _ in said]
    left = [t for _, t in said if t is not None]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    assert left == sorted(left, reverse=True) and left[-1] == 0.0
    assert shares[1] == pytest.approx(0.1)  # the reference's share: its weight over all
    assert said[0][1] is None or said[0][1] > 0


def test_progress_events_carry_the_job_and_the_window_only_for_window_stages(clock):
    out = io.StringIO()
    channel = Channel(out=out)
    channel.job = JobProgress({"generate": 1.0, "finish": 1.0})
    channel.window = (2, 4)
    channel.progress("draft", 5, 10, clock.now)  # half of window 2 of 4: 3/8 of the generation
    channel.progress("finish", 3, 10, clock.now)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["window"], first["windows"]) == (2, 4)
    assert first["job_fraction"] == pytest.approx(0.5 * 3 / 8, abs=1e-4)
    assert "window" not in second and second["job_fraction"] == pytest.approx(0.5 * 3 / 8 + 0.5 * 0.3, abs=1e-4)
