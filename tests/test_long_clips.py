"""Clips longer than one window: windows conditioned on each other and cross-faded, the source's frame
count and timing kept, and jobs that survive being killed, a full disk, a read-only folder and another
version — through the real engine (draft backend and the tiny LTX-2.3 model), small windows so it is quick."""

import fcntl
import io
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.jobs.job import Job, ModelFiles, load_job, save_job
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from blender_equi360.jobs.windows import MANIFEST_FILE, TimeWindow, check_window_settings, plan_windows
from blender_equi360.media.video import probe, read_frames
from blender_equi360.quality.score import score
from blender_equi360.quality.sphere_metrics import FrameChanges, boundary_jump
from blender_equi360.stages.join import assemble
from conftest import CPU, ROOT, copy_job_inputs, run_engine, smooth_texture, write_clip
from engine import draft, ltx, runner
from engine.device import DEVICE_ENV
from engine.protocol_io import Channel

FRAMES, FPS = 61, 30        # 2.03 s at 30 fps: four windows of 25 frames with 9 shared
WINDOW = {"window_frames": 25, "window_overlap": 9}


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    clip = write_clip(folder / "clip.mp4", FRAMES, 240, 100, FPS, lambda k: smooth_texture(240, 100, k / 8))
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(128, 64), frames=None))
    return folder


def draft_job(folder, reference, **fields):
    copy_job_inputs(reference, folder)
    save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv",
                         **{"backend": "draft", "delivery_size": "256x128", **WINDOW, **fields}))
    return folder


def frames_of(video) -> np.ndarray:
    return np.stack(list(read_frames(video)))


def manifest_states(job_dir) -> list[str]:
    return [w["state"] for w in json.loads((job_dir / MANIFEST_FILE).read_text())["windows"]]


@pytest.fixture(scope="module")
def straight_run(long_reference, tmp_path_factory):
    """The draft job run once, uninterrupted: what every resumed run must reproduce."""
    job_dir = draft_job(tmp_path_factory.mktemp("straight"), long_reference)
    rc, events, err = run_engine(job_dir)
    assert rc == 0, err
    return job_dir, frames_of(job_dir / "result.mp4"), len(events), events


# --- frame count, timing, joins -------------------------------------------------------------------------------

def test_a_long_clip_keeps_the_source_frame_count_and_timing(straight_run, long_reference):
    job_dir, frames, *_ = straight_run
    source, out = probe(long_reference / "clip.mp4"), probe(job_dir / "result.mp4")
    assert len(frames) == out.frame_count == source.frame_count == FRAMES
    assert out.fps == source.fps == FPS
    assert abs(out.duration_s - source.duration_s) < 1 / FPS
    assert manifest_states(job_dir) == ["done"] * len(plan_windows(FRAMES, **_plan_args()))
    report = score(job_dir / "result.mp4", long_reference / "clip.mp4", job_dir)
    assert report["window_joins"] <= report["goals"]["window_joins_max"]["goal"]
    assert report["goals"]["window_joins_max"]["met"]


def test_windows_are_finished_while_the_next_ones_are_made(long_reference, tmp_path, monkeypatch):
    """The last window is made only once the finish has delivered frames: without the overlap it never would."""
    job_dir = draft_job(tmp_path / "job", long_reference)
    finishing = threading.Event()

    class Events(io.StringIO):
        def write(self, line):
            if '"stage": "finish"' in line:
                finishing.set()
            return super().write(line)

    class DraftWaitingForTheFinish(draft.DraftGenerator):
        def generate(self, window, *args):
            if window.index == 3:
                assert finishing.wait(120), "nothing was finished while the windows were made"
            return super().generate(window, *args)
    monkeypatch.setitem(runner.GENERATORS, "draft", DraftWaitingForTheFinish)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    result = runner.run_job(job_dir, load_job(job_dir), "draft", Channel(out=Events()))
    assert probe(result["outputs"]["video"]).frame_count == FRAMES


def test_the_job_progress_only_moves_forward(straight_run):
    events = straight_run[3]
    progress = [e for e in events if e["event"] == "progress"]
    fractions = [e["job_fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 0.2
    left = [e["job_eta_s"] for e in progress if e["job_eta_s"] is not None]
    assert left and left == sorted(left, reverse=True)
    assert all("window" not in e for e in progress if e["stage"] == "finish")  # the finish is not a window's


def _plan_args():
    return {"window": WINDOW["window_frames"], "overlap": WINDOW["window_overlap"]}


def test_the_crossfade_hides_a_tone_jump_between_windows_that_a_cut_shows():
    """Windows whose outputs disagree by 10 levels on content that brightens 2 levels a frame: cut, the
    join jumps six times the usual change; cross-faded over the shared frames, it stays near it."""
    windows = plan_windows(57, window=25, overlap=9)

    def output(window):  # the same scene, each window's tone off by 10 more levels
        return [np.full((8, 16, 3), 40 + 2 * (window.start + j) + 10 * window.index, np.uint8)
                for j in range(window.frames)]

    def changes(frames):
        meter = FrameChanges(np.ones((8, 16), bool))
        for frame in frames:
            meter.add(frame)
        return meter.changes

    faded = list(assemble(windows, output))
    # A cut: each frame from the newest window that has it.
    cut = [f for w in windows for j, f in enumerate(output(w))
           if w is windows[-1] or w.start + j < windows[w.index + 1].start]
    assert len(faded) == len(cut) == 57
    assert boundary_jump(changes(cut), windows) >= 5
    assert boundary_jump(changes(faded), windows) <= 1.6


def test_a_window_file_with_missing_frames_is_an_error_that_says_what_to_do():
    windows = [TimeWindow(0, 0, 5, 9, 0)]
    with pytest.raises(Exception) as info:
        list(assemble(windows, lambda w: [np.zeros((2, 2, 3), np.uint8)] * 3))
    assert "3 frames instead of 5" in str(info.value) and "run the job again" in str(info.value)


@pytest.mark.parametrize("window, overlap, message", [
    (17, 9, "from 25 to 257"),                    # no overlap fits: the smallest is 9
    (265, 25, "from 25 to 257"),
    (33, 25, "at most half of window_frames 33 (e.g. 9)"),
    (121, 65, "at most half of window_frames 121 (e.g. 57)"),
    (24, 9, "8k+1"), (121, 8, "8k+1")])
def test_window_settings_that_cannot_work_are_refused_with_ones_that_do(window, overlap, message):
    with pytest.raises(Equi360Error, match=re.escape(message)):
        check_window_settings(window, overlap)
    check_window_settings(25, 9)
    check_window_settings(121, 57)


# --- resume -------------------------------------------------------------------------------------------------

def test_killing_the_engine_anywhere_and_running_again_gives_the_same_video(straight_run, long_reference,
                                                                             tmp_path):
    _, expected, events_in_a_run, _ = straight_run
    job_dir = draft_job(tmp_path / "job", long_reference)
    rng = random.Random(7)
    for _ in range(3):  # kill after a random number of events: inside a window, between windows, in finish
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, env=CPU,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        kill_after = rng.randrange(3, events_in_a_run // 2)  # a resumed run says less than a whole one
        for n, _line in enumerate(proc.stdout):
            if n == kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        assert proc.wait(timeout=60) == -signal.SIGKILL
    rc, events, err = run_engine(job_dir)
    assert rc == 0, err
    assert np.array_equal(frames_of(job_dir / "result.mp4"), expected)
    leftovers = [p.name for p in [*job_dir.iterdir(), *(job_dir / "windows").iterdir()] if ".partial-" in p.name]
    assert not leftovers


def test_a_finished_job_run_again_only_delivers_and_a_changed_one_starts_over(straight_run, long_reference,
                                                                               tmp_path):
    job_dir = draft_job(tmp_path / "job", long_reference)
    assert run_engine(job_dir)[0] == 0
    made = {p.name: p.stat().st_mtime_ns for p in (job_dir / "windows").iterdir()}
    rc, events, _ = run_engine(job_dir)
    assert rc == 0 and not [e for e in events if e["event"] == "progress" and e["stage"] == "draft"]
    assert {p.name: p.stat().st_mtime_ns for p in (job_dir / "windows").iterdir()} == made
    save_job(job_dir, Job.from_fields(**{**load_job(job_dir).to_dict(), "models": ModelFiles(), "seed": 1,
                                         "window_overlap": 17, "window_frames": 41}))
    rc, events, _ = run_engine(job_dir)
    assert rc == 0 and any("starting over" in e.get("message", "") for e in events)
    assert len(manifest_states(job_dir)) == len(plan_windows(FRAMES, 41, 17))


# --- faults -------------------------------------------------------------------------------------------------

def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_an_error_that_keeps_the_finished_windows(straight_run, long_reference, tmp_path):
    job_dir = draft_job(tmp_path / "job", long_reference, delivery_size="1024x512")
    window_bytes = max(p.stat().st_size for p in (straight_run[0] / "windows").iterdir())
    # Room for every window file, not for the delivery (a 1024×512 video).
    rc, events, err = run_engine(job_dir, preexec_fn=_file_size_limit(window_bytes + 4096))
    assert rc == EXIT_CODES["disk_full"], err
    assert events[-1]["code"] == "disk_full" and "free some space" in events[-1]["message"]
    assert "windows already made are kept" in events[-1]["message"]
    # The finish follows the windows, so the full disk may stop the job before the last window is made.
    assert manifest_states(job_dir)[0] == "done"
    assert not (job_dir / "result.mp4").exists()
    assert not [p for p in job_dir.iterdir() if ".partial-" in p.name]
    rc, events, err = run_engine(job_dir)
    assert rc == 0, err
    assert probe(job_dir / "result.mp4").frame_count == FRAMES


def test_a_folder_that_cannot_be_written_is_an_error_that_keeps_the_finished_windows(straight_run, long_reference,
                                                                                      tmp_path, monkeypatch):
    expected = straight_run[1]
    job_dir = draft_job(tmp_path / "job", long_reference)
    real_replace = os.replace

    def refuse_the_third_window(src, dst):
        if str(dst).endswith("window_0002.mkv"):
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", refuse_the_third_window)
    out = io.StringIO()
    assert runner.run(job_dir, Channel(out=out)) == EXIT_CODES["permission_denied"]
    error = parse_event(out.getvalue().splitlines()[-1])
    assert error["code"] == "permission_denied" and "writable" in error["message"]
    assert manifest_states(job_dir) == ["done", "done", "pending", "pending"]
    monkeypatch.setattr(os, "replace", real_replace)
    assert runner.run(job_dir, Channel(out=io.StringIO())) == 0
    assert np.array_equal(frames_of(job_dir / "result.mp4"), expected)


def test_a_job_folder_from_another_version_is_refused_and_left_as_it_is(straight_run, long_reference, tmp_path):
    job_dir = draft_job(tmp_path / "job", long_reference)
    assert run_engine(job_dir)[0] == 0
    manifest = json.loads((job_dir / MANIFEST_FILE).read_text())
    (job_dir / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": 99}))
    before = {p.name: p.read_bytes() for p in (job_dir / "windows").iterdir()}
    rc, events, _ = run_engine(job_dir)
    assert rc == EXIT_CODES["incompatible_job"] and "another version" in events[-1]["message"]
    assert {p.name: p.read_bytes() for p in (job_dir / "windows").iterdir()} == before
    job = json.loads((job_dir / "job.json").read_text())
    (job_dir / "job.json").write_text(json.dumps({**job, "version": 2, "new_setting": True}))
    rc, events, _ = run_engine(job_dir)
    assert rc == EXIT_CODES["incompatible_job"] and "job version 2" in events[-1]["message"]


def test_a_job_another_engine_is_running_is_refused(long_reference, tmp_path):
    job_dir = draft_job(tmp_path / "job", long_reference)
    with open(job_dir / runner.LOCK_FILE, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, events, _ = run_engine(job_dir)
    assert rc == EXIT_CODES["job_busy"] and "another engine" in events[-1]["message"]
    assert not (job_dir / MANIFEST_FILE).exists()


# --- the tiny LTX-2.3 model -----------------------------------------------------------------------------------

def ltx_job(folder, reference, models, **fields):
    copy_job_inputs(reference, folder)
    save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv", models=ModelFiles(**models),
                         **{"backend": "ltx", "steps": 2, "delivery_size": "256x128", **WINDOW, **fields}))
    return folder


def test_the_model_makes_a_long_clip_in_windows_and_resumes_to_the_same_video(long_reference, models, tmp_path):
    straight = ltx_job(tmp_path / "straight", long_reference, models)
    rc, events, err = run_engine(straight)
    assert rc == 0, err
    windows = {e["window"] for e in events if e["event"] == "progress" and e["stage"] == "denoise"}
    assert windows == {1, 2, 3, 4} and {e.get("windows") for e in events if "window" in e} == {4}
    info = probe(straight / "result.mp4")
    assert (info.frame_count, info.fps) == (FRAMES, FPS)
    assert score(straight / "result.mp4", long_reference / "clip.mp4", straight)["goals"]["window_joins_max"]["met"]

    resumed = ltx_job(tmp_path / "resumed", long_reference, models)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(resumed)], cwd=ROOT, env=CPU,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # kill it while it denoises the third window
        event = parse_event(line)
        if event["event"] == "progress" and event.get("window") == 3 and event["stage"] == "denoise":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert manifest_states(resumed) == ["done", "done", "pending", "pending"]
    rc, events, err = run_engine(resumed)
    assert rc == 0, err
    assert {e["window"] for e in events if e["event"] == "progress" and e["stage"] == "denoise"} == {3, 4}
    assert np.array_equal(frames_of(resumed / "result.mp4"), frames_of(straight / "result.mp4"))


def test_each_window_is_pinned_to_the_previous_windows_frames(long_reference, models, tmp_path, monkeypatch):
    """Conditioning reaches the model: given the same last frames, two seeds agree on the window's first
    latent frames (the conditioned ones) and differ on the rest."""
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    job_dir = ltx_job(tmp_path / "job", long_reference, models)
    job = load_job(job_dir)
    latents = []
    real_decode = ltx.decode

    def decode(vae, z, device):
        latents.append(z.clone())
        return real_decode(vae, z, device)
    monkeypatch.setattr(ltx, "decode", decode)
    generator = ltx.LtxGenerator(job_dir, job, Channel(out=io.StringIO()))
    generator.prepare()
    window = plan_windows(FRAMES, **_plan_args())[1]
    reference = runner.window_reference(job_dir / "reference.mkv", window)
    condition = np.random.default_rng(0).integers(0, 256, (window.overlap, 64, 128, 3), dtype=np.uint8)
    for seed in (1, 2):
        video = np.stack(list(generator.generate(window, reference, condition, seed)))
        assert video.shape == (window.frames, 64, 128, 3)
    generator.close()
    pinned = (window.overlap - 1) // 8 + 1  # latent frames that hold the 9 shared frames
    first, second = latents
    assert torch_equal(first[:, :, :pinned], second[:, :, :pinned])
    assert (first[:, :, pinned:] - second[:, :, pinned:]).abs().mean() > 0.05


def torch_equal(a, b) -> bool:
    import torch
    return torch.allclose(a, b, atol=1e-5)
