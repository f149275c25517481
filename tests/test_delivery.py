"""VR-ready delivery: 360° metadata that our parser and FFmpeg's own demuxer read back, the codec by size,
the source's sound in sync, and EXR / 16-bit PNG passes that keep their values and alpha — on real
files, through the real engine (draft backend)."""

import json
import math
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.delivery_settings import DeliverySettings
from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.jobs.job import Job, save_job
from blender_equi360.jobs.protocol import parse_event
from blender_equi360.media.images import srgb_to_linear, write_exr, write_png16
from blender_equi360.media.mp4_spherical import inject_spherical, read_spherical
from blender_equi360.media.video import PlaybackVideoWriter, probe, read_frames
from conftest import ROOT, copy_job_inputs, smooth_texture

FPS, FRAMES = 25, 50
BEEP_S = 1.2       # where the source's sound starts, in the source
START_S = 0.4      # where the conversion starts in the source


def read_exr(path) -> np.ndarray:
    """An EXR written by :func:`blender_equi360.media.images.write_exr`, back as float32 (H, W, 3 or 4) RGB(A)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    dtype = np.float16 if "f16" in frame.format.name else np.float32
    planes = [np.frombuffer(p, dtype).reshape(frame.height, -1)[:, :frame.width] for p in frame.planes]
    order = [2, 0, 1] + ([3] if len(planes) == 4 else [])
    return np.stack([planes[i] for i in order], axis=-1).astype(np.float32)


def read_png16(path) -> np.ndarray:
    """A PNG back as float32 (H, W, C) in 0..1."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    deep = frame.format.name in ("rgb48be", "rgba64be", "gray16be")
    values = frame.to_ndarray()
    return values.astype(np.float32) / (65535.0 if deep else 255.0)


def ffmpeg() -> str:
    """FFmpeg's own tools read what players read: ffprobe when installed, else the bundled ffmpeg."""
    found = shutil.which("ffprobe")
    if found:
        return found
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_sees(path) -> str:
    tool = ffmpeg()
    command = [tool, "-hide_banner", "-show_streams", str(path)] if tool.endswith("ffprobe") else \
        [tool, "-hide_banner", "-i", str(path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def small_mp4(path, frames=6, movflags=None):
    with av.open(str(path), "w", options={"movflags": movflags} if movflags else {}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        for k in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(smooth_texture(128, 64, k / 3), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- 360 metadata ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("movflags", [None, "faststart"])  # moov after the media, and before it
def test_360_metadata_is_read_back_by_our_parser_and_by_ffmpeg_and_the_video_is_untouched(tmp_path, movflags):
    video = small_mp4(tmp_path / "clip.mp4", movflags=movflags)
    boxes = video.read_bytes()
    assert (boxes.index(b"moov") < boxes.index(b"mdat")) == (movflags == "faststart")
    before = np.stack(list(read_frames(video)))
    inject_spherical(video, yaw_deg=0)
    info = read_spherical(video)
    assert info.v1 == {"Spherical": "true", "Stitched": "true", "StitchingSoftware": "Equi360",
                       "ProjectionType": "equirectangular"}
    assert (info.stereo_mode, info.projection, info.pose_deg, info.bounds) == (0, "equirectangular",
                                                                               (0.0, 0.0, 0.0), (0, 0, 0, 0))
    seen = ffmpeg_sees(video)
    assert "equirectangular" in seen and ("spherical" in seen.lower())
    assert np.array_equal(np.stack(list(read_frames(video))), before)
    inject_spherical(video)  # again: replaced, not doubled
    data = video.read_bytes()
    assert data.count(b"sv3d") == 1 and data.count(b"<GSpherical:ProjectionType>") == 1


def test_a_file_that_is_not_an_mp4_is_refused_and_left_alone(tmp_path):
    not_mp4 = tmp_path / "notes.mp4"
    not_mp4.write_bytes(b"\0\0\0\x10free0123456789")
    with pytest.raises(Equi360Error, match="not an MP4"):
        inject_spherical(not_mp4)
    assert not_mp4.read_bytes() == b"\0\0\0\x10free0123456789"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.mp4"]


# --- codecs ---------------------------------------------------------------------------------------------

def test_h264_up_to_what_hardware_decoders_take_and_hevc_above():
    def codec(size, **settings):
        return DeliverySettings(size=size, **settings).codec_name()
    assert codec("3840x1920") == codec("4096x2048") == "h264"
    assert codec("5760x2880") == codec("7680x3840") == "hevc"
    assert codec("1920x960", codec="hevc") == "hevc"
    with pytest.raises(Equi360Error, match="pixel format"):
        DeliverySettings(pixel_format="yuv444p")


def test_hevc_10_bit_is_written_as_players_expect(tmp_path):
    writer = PlaybackVideoWriter(tmp_path / "hevc.mp4", 256, 128, 24, crf=20, codec="hevc", pix_fmt="yuv420p10le")
    for k in range(4):
        writer.write(smooth_texture(256, 128, k / 3))
    writer.close()
    with av.open(str(tmp_path / "hevc.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "hevc" and stream.codec_tag == "hvc1"
        frame = next(container.decode(stream))
        assert frame.format.name == "yuv420p10le"
    back = next(read_frames(tmp_path / "hevc.mp4")).astype(float)
    assert np.abs(back - smooth_texture(256, 128, 0)).mean() < 2.0


@pytest.mark.parametrize("frames", [1, 2])
def test_a_clip_of_one_or_two_frames_is_written_every_time(tmp_path, frames):
    """x265 stamps such clips with garbage decoding times about half the time, which the MP4 muxer refuses:
    twelve tries make a miss of the bug (if it came back) a chance under one in four thousand."""
    for attempt in range(12):
        path = tmp_path / f"short{attempt}.mp4"
        writer = PlaybackVideoWriter(path, 128, 64, 24, codec="hevc")
        for k in range(frames):
            writer.write(smooth_texture(128, 64, attempt + k / 3))
        writer.close()
        assert sum(1 for _ in read_frames(path)) == frames


# --- the engine's delivery -----------------------------------------------------------------------------------

def clip_with_sound(path, frames=FRAMES, fps=FPS, beep_s=BEEP_S):
    """A 2.39:1 clip with stereo sound: silence, then a 1 kHz tone from ``beep_s`` on."""
    rate = 48000
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 240, 100, "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="stereo")
        t = np.arange(int(frames / fps * rate)) / rate
        samples = np.where(t >= beep_s, 0.5 * np.sin(2 * np.pi * 1000 * t), 0).astype(np.float32)
        for start in range(0, len(t), 1024):
            chunk = np.stack([samples[start:start + 1024]] * 2)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in sound.encode(frame):
                container.mux(packet)
        for k in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(smooth_texture(240, 100, k / 5), format="rgb24")):
                container.mux(packet)
        for stream in (video, sound):
            for packet in stream.encode():
                container.mux(packet)
    return path


@pytest.fixture(scope="module")
def sound_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sound")
    clip = clip_with_sound(folder / "clip.mp4")
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(128, 64), frames=None, start_s=START_S))
    return folder


def run_draft(job_dir, reference, **fields):
    copy_job_inputs(reference, job_dir)
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size="256x128", **fields))
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return parse_event(run.stdout.splitlines()[-1])


def sound_onset_s(path) -> float:
    """When the sound first gets loud, in seconds of the file's own timeline."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            samples = frame.to_ndarray().reshape(-1, frame.samples)[0]
            loud = np.flatnonzero(np.abs(samples) > 0.1)
            if loud.size:
                return float(frame.pts * stream.time_base) + loud[0] / frame.sample_rate
    return math.inf


def test_the_delivery_plays_as_360_with_the_sources_sound_in_sync(tmp_path, sound_reference):
    done = run_draft(tmp_path / "job", sound_reference, suffix_360=True)
    video = tmp_path / "job" / "result_360.mp4"
    assert done["outputs"]["video"] == str(video) and not (tmp_path / "job" / "result.mp4").exists()
    assert read_spherical(video).projection == "equirectangular"
    info = probe(video)
    frames = info.frame_count
    with av.open(str(video)) as container:
        sound = container.streams.audio[0]
        sound_s = float(sound.duration * sound.time_base)
        assert sound.codec_context.name == "aac" and sound.channels == 2
    assert abs(sound_s - frames / FPS) <= 1 / FPS
    # The tone starts BEEP_S into the source; the delivery starts START_S into it.
    assert sound_onset_s(video) == pytest.approx(BEEP_S - START_S, abs=1 / FPS)


def test_exr_passes_keep_the_picture_in_linear_light_with_the_generated_region_as_alpha(tmp_path, sound_reference):
    done = run_draft(tmp_path / "job", sound_reference, passes="exr", audio=False)
    passes = sorted((tmp_path / "job" / "result_passes").iterdir())
    frames = probe(done["outputs"]["video"]).frame_count
    assert [p.name for p in passes[:2]] == ["result.000001.exr", "result.000002.exr"] and len(passes) == frames
    first = read_exr(passes[0])
    assert first.shape == (128, 256, 4)
    video = next(read_frames(done["outputs"]["video"])).astype(np.float32) / 255
    assert np.abs(first[..., :3] - srgb_to_linear(video)).mean() < 0.02  # up to the video's own encoding loss
    mask = next(read_frames(tmp_path / "job" / "mask.mkv", "gray"))
    plate = np.kron(mask < 128, np.ones((2, 2), bool))  # the model canvas → the delivery canvas
    near_plate = plate.copy()
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near_plate |= np.roll(plate, (dy, dx), axis=(0, 1))
    assert first[..., 3][plate].mean() < 0.2 and first[..., 3][~near_plate].min() > 0.99
    with av.open(done["outputs"]["video"]) as container:
        assert not container.streams.audio


def test_png16_passes_with_a_separate_mask(tmp_path, sound_reference):
    run_draft(tmp_path / "job", sound_reference, passes="png16", pass_alpha="separate")
    names = sorted(p.name for p in (tmp_path / "job" / "result_passes").iterdir())
    assert names[0] == "result.000001.png" and "result_mask.000001.png" in names
    picture = read_png16(tmp_path / "job" / "result_passes" / "result.000001.png")
    mask = read_png16(tmp_path / "job" / "result_passes" / "result_mask.000001.png")
    assert picture.shape == (128, 256, 3) and mask.shape == (128, 256, 3)
    assert mask.min() == 0.0 and mask.max() == 1.0


def test_exr_and_png16_round_trips_keep_values_and_alpha(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.random((40, 72, 3)).astype(np.float32) * 4  # linear light goes past 1
    alpha = rng.random((40, 72)).astype(np.float32)
    write_exr(tmp_path / "a.exr", rgb, alpha)
    back = read_exr(tmp_path / "a.exr")
    assert np.allclose(back[..., :3], rgb, rtol=1e-3, atol=1e-3) and np.allclose(back[..., 3], alpha, atol=1e-3)
    write_exr(tmp_path / "b.exr", rgb, None)
    assert read_exr(tmp_path / "b.exr").shape == (40, 72, 3)
    levels = (np.arange(40 * 72 * 3) % 65536).reshape(40, 72, 3) / 65535
    write_png16(tmp_path / "c.png", levels, alpha)
    png = read_png16(tmp_path / "c.png")
    assert np.array_equal(np.rint(png[..., :3] * 65535), np.rint(levels * 65535))
    assert np.abs(png[..., 3] - alpha).max() <= 0.5 / 65535 + 1e-7


def test_a_failed_delivery_leaves_no_video_and_no_passes(tmp_path, sound_reference, monkeypatch):
    from blender_equi360.stages import delivery as delivery_module
    job_dir = tmp_path / "job"
    copy_job_inputs(sound_reference, job_dir)
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size="256x128", passes="exr"))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(job_dir / "result.mp4"))
    monkeypatch.setattr(delivery_module, "inject_spherical", broken)
    import io

    from engine import runner
    from engine.protocol_io import Channel
    out = io.StringIO()
    assert runner.run(job_dir, Channel(out=out)) == 21
    assert json.loads(out.getvalue().splitlines()[-1])["code"] == "disk_full"
    left = sorted(p.name for p in job_dir.iterdir())
    assert "result.mp4" not in left and "result_passes" not in left
    assert not [name for name in left if "partial" in name]
