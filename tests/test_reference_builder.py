"""The reference builder end to end on real video files: output format, frame count, resampling,
letterbox detection, and what happens on bad input (CLI and Python API)."""

import json
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, Equi360Error, ReferenceSettings, build_reference
from blender_equi360.geometry.projection import PlateCrop, PlateMapping
from blender_equi360.media.video import picture_box_from_samples, probe, read_frames
from blender_equi360.quality.metrics import mean_abs_error
from conftest import ROOT, smooth_texture, write_clip

SMALL = CanvasSize(512, 256)


def settings(**kw):
    kw.setdefault("size", SMALL)
    kw.setdefault("camera", Camera(100))
    return ReferenceSettings(**kw)


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "blender_equi360", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_reference_is_lossless_black_outside_with_a_matching_mask(textured_clip, tmp_path):
    out = tmp_path / "ref.mkv"
    result = build_reference(textured_clip, out, settings=settings(frames=25))
    frames = list(read_frames(out))
    masks = list(read_frames(result.mask, "gray"))
    assert len(frames) == len(masks) == result.frames_written == 25
    assert frames[0].shape == (256, 512, 3) and masks[0].shape == (256, 512)
    assert set(np.unique(masks[0])) == {0, 255}  # no feather asked: a hard mask
    for frame, mask in zip(frames, masks):
        assert frame[mask == 255].max() == 0  # exactly black, every frame
        assert frame[mask == 0].mean() > 40
    assert probe(out).fps == 24
    # The 20-frame clip was padded to 25 by holding its last frame, and the result says so.
    assert result.padded_frames == 5 and any("padded to 25" in n for n in result.notes)
    assert np.array_equal(frames[19], frames[24]) and not np.array_equal(frames[0], frames[19])


def test_reference_content_matches_the_projection_of_the_source(textured_clip, tmp_path):
    result = build_reference(textured_clip, tmp_path / "ref.mkv", settings=settings(frames=17))
    source = next(read_frames(textured_clip))
    mapping = PlateMapping(Camera(100), PlateCrop.whole(320, 134), SMALL, result.plate_size)
    small = av.VideoFrame.from_ndarray(source, format="rgb24").reformat(
        width=result.plate_size[0], height=result.plate_size[1], format="bgra", interpolation="BILINEAR")
    expected = mapping.project(small.to_ndarray())[..., 2::-1]
    got = next(read_frames(result.video))
    assert mean_abs_error(got, expected, where=mapping.mask == 0) < 2.0
    # A mirrored placement would be far off: the test can tell.
    assert mean_abs_error(got, expected[:, ::-1], where=mapping.mask == 0) > 10


def test_frame_rate_is_resampled_to_the_nearest_source_frame(tmp_path):
    # Each source frame's brightness encodes its index: 29.97 fps in, 24 fps out.
    def levels(k):
        return np.full((134, 320, 3), 20 + 5 * k, np.uint8)
    clip = write_clip(tmp_path / "count30.mp4", 40, 320, 134, Fraction(30000, 1001), levels)
    result = build_reference(clip, tmp_path / "ref.mkv", settings=settings(frames=25, fps=24, detect_letterbox=False))
    got = [int(round((f[result_mask_known(result)].mean() - 20) / 5)) for f in read_frames(result.video)]
    assert got == [round(k * 30000 / 1001 / 24) for k in range(25)]
    assert any("resampled from 29.970 to 24" in n for n in result.notes)


def result_mask_known(result):
    return next(read_frames(result.mask, "gray")) == 0


def test_long_clip_is_trimmed_and_start_offset_is_honoured(tmp_path):
    def levels(k):
        return np.full((134, 320, 3), 10 + 4 * k, np.uint8)
    clip = write_clip(tmp_path / "count24.mp4", 60, 320, 134, 24, levels)
    result = build_reference(clip, tmp_path / "ref.mkv", settings=settings(frames=9, start_s=1.0,
                                                                          detect_letterbox=False))
    got = [int(round((f[result_mask_known(result)].mean() - 10) / 4)) for f in read_frames(result.video)]
    assert got == list(range(24, 33))
    assert result.padded_frames == 0 and any(n.startswith("trimmed") for n in result.notes)


def test_all_frames_pads_up_to_8k_plus_1(textured_clip, tmp_path):
    result = build_reference(textured_clip, tmp_path / "ref.mkv", settings=settings(frames=None))
    assert result.frames_written == 25 and len(list(read_frames(result.video))) == 25


def letterboxed(k, fade_in=6):
    """16:9 frame with 2.39:1 picture between black bars; fades in from black over the first frames."""
    frame = np.zeros((180, 320, 3), np.uint8)
    gain = min(1.0, k / fade_in)
    frame[23:157] = (smooth_texture(320, 134, k / 4) * gain).astype(np.uint8)
    return frame


def test_letterbox_bars_are_found_over_several_frames_despite_a_fade_in(tmp_path):
    clip = write_clip(tmp_path / "letterboxed.mp4", 48, 320, 180, 24, letterboxed)
    result = build_reference(clip, tmp_path / "ref.mkv", settings=settings(frames=25))
    box = result.picture
    # The first frame is black: a single-frame detector would see no picture at all.
    assert (box.y, box.height) in {(22, 136), (24, 134), (24, 132), (22, 134)}
    assert (box.x, box.width) == (0, 320)
    assert any("bars removed" in n for n in result.notes)
    frames = list(read_frames(result.video))
    known = result_mask_known(result)
    rows = np.flatnonzero(known.any(axis=1))
    # No black bar was projected: the top and bottom rows of the footprint carry picture.
    assert frames[-1][rows[0]][known[rows[0]]].mean() > 30
    assert frames[-1][rows[-1]][known[rows[-1]]].mean() > 30


def test_dark_sky_or_black_frames_do_not_crop_the_picture():
    whole = picture_box_from_samples([], 320, 180)
    night = np.zeros((180, 320), np.uint8)
    night[70:] = 60  # a dark sky over a lit street: one-sided, so not letterbox
    assert picture_box_from_samples([night], 320, 180) == whole
    assert picture_box_from_samples([np.zeros((180, 320), np.uint8)], 320, 180) == whole
    boxed = np.zeros((180, 320), np.uint8)
    boxed[23:157] = 60
    assert picture_box_from_samples([boxed], 320, 180).height in (132, 134)


def test_sixteen_nine_is_cropped_to_239(tmp_path):
    clip = write_clip(tmp_path / "wide.mp4", 9, 320, 180, 24, lambda k: smooth_texture(320, 180, k))
    for crop, y in (("center", 22), ("top", 0), ("bottom", 46)):
        result = build_reference(clip, tmp_path / f"{crop}.mkv", settings=settings(frames=9, crop=crop))
        assert (result.window.y, result.window.width, result.window.height) == (y, 320, 134)
    kept = build_reference(clip, tmp_path / "none.mkv", settings=settings(frames=9, crop="none"))
    assert (kept.window.width, kept.window.height) == (320, 180)


def test_cli_writes_reference_and_mask_and_reports(textured_clip, tmp_path):
    out = tmp_path / "ref.mkv"
    proc = run_cli("reference", textured_clip, "-o", out, "--hfov", 90, "--pitch", 5, "--size", "512x256",
                   "--frames", 17, "--mask", tmp_path / "m.mkv", "--json")
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and (tmp_path / "m.mkv").exists()
    report = json.loads(proc.stdout)
    assert report["frames_written"] == 17 and report["settings"]["camera"]["pitch_deg"] == 5
    assert "padded" not in proc.stderr or "note:" in proc.stderr


def _zero_frame_video(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=24)
        s.width, s.height, s.pix_fmt = 64, 32, "bgr0"
        c.start_encoding()  # header only: a valid file with a video stream and no frames
    return path


@pytest.mark.parametrize("case,expected", [
    ("missing", "no such file"),
    ("not_video", "not a readable video"),
    ("zero_frames", "no frames"),
    ("hfov_low", "FOV 1°"),
    ("hfov_high", "FOV 179°"),
    ("size_32", "multiples of 32"),
    ("size_ratio", "not 2:1"),
    ("frames", "8k+1"),
    ("out_dir_missing", "does not exist"),
    ("out_is_dir", "is a folder"),
    ("not_mkv", ".mkv"),
])
def test_bad_input_gets_one_clear_error_and_no_output(case, expected, textured_clip, tmp_path):
    src, out = textured_clip, tmp_path / "out" / "ref.mkv"
    (tmp_path / "out").mkdir()
    extra = []
    if case == "missing":
        src = tmp_path / "nope.mp4"
    elif case == "not_video":
        src = tmp_path / "notes.mp4"
        src.write_text("this is not a video")
    elif case == "zero_frames":
        src = _zero_frame_video(tmp_path / "empty.mkv")
    elif case == "hfov_low":
        extra = ["--hfov", "1"]
    elif case == "hfov_high":
        extra = ["--hfov", "179"]
    elif case == "size_32":
        extra = ["--size", "1000x500"]
    elif case == "size_ratio":
        extra = ["--size", "2048x960"]
    elif case == "frames":
        extra = ["--frames", "120"]
    elif case == "out_dir_missing":
        out = tmp_path / "missing" / "ref.mkv"
    elif case == "out_is_dir":
        out = tmp_path / "out" / "dir.mkv"
        out.mkdir()
    elif case == "not_mkv":
        out = tmp_path / "out" / "ref.mp4"
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    proc = run_cli("reference", src, "-o", out, "--size", "512x256", "--frames", "9", *extra)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before  # nothing written, not even a temp


def test_an_interrupted_build_leaves_no_file(textured_clip, tmp_path):
    def interrupt(done, total):
        if done == 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        build_reference(textured_clip, tmp_path / "ref.mkv", settings=settings(frames=17), progress=interrupt)
    assert list(tmp_path.iterdir()) == [textured_clip]


def test_refuses_to_overwrite_its_source(textured_clip):
    with pytest.raises(Equi360Error, match="overwrite the source"):
        build_reference(textured_clip, textured_clip.with_suffix(".mkv"), mask=textured_clip,
                        settings=settings())
    assert textured_clip.stat().st_size > 0


def test_by_default_the_reference_keeps_the_clips_own_frame_rate(tmp_path):
    def levels(k):
        return np.full((134, 320, 3), 20 + 5 * k, np.uint8)
    clip = write_clip(tmp_path / "count30.mp4", 40, 320, 134, Fraction(30000, 1001), levels)
    result = build_reference(clip, tmp_path / "ref.mkv", settings=settings(frames=33, detect_letterbox=False))
    got = [int(round((f[result_mask_known(result)].mean() - 20) / 5)) for f in read_frames(result.video)]
    assert got == list(range(33)) and probe(result.video).fps == Fraction(30000, 1001)
    assert not [n for n in result.notes if "resampled" in n]


def test_reading_from_a_later_frame_gives_exactly_the_frames_from_there(tmp_path):
    """A long clip's windows read the reference from the middle: a seek, then the same frames."""
    def levels(k):
        return np.full((134, 320, 3), k % 250, np.uint8)
    clip = write_clip(tmp_path / "count.mp4", 300, 320, 134, Fraction(30000, 1001), levels)  # past a keyframe
    result = build_reference(clip, tmp_path / "ref.mkv", settings=settings(frames=None, detect_letterbox=False))
    every = list(read_frames(result.video))
    for start in (1, 9, 249, 250, 263, len(every) - 1, len(every)):
        later = list(read_frames(result.video, start=start))
        assert len(later) == len(every) - start
        assert all(np.array_equal(a, b) for a, b in zip(later, every[start:]))


# --- the LoRA version the reference is for -------------------------------------------------------------------

def test_the_canvas_and_crop_follow_the_lora_version_unless_given():
    assert (str(ReferenceSettings().size), ReferenceSettings().crop) == ("2560x1280", "none")  # 1.0, the default
    v01 = ReferenceSettings(lora_version="0.1")
    assert (str(v01.size), v01.crop) == ("1920x960", "center")
    chosen = ReferenceSettings(lora_version="0.1", size=CanvasSize(2560, 1280), crop="none")
    assert (str(chosen.size), chosen.crop) == ("2560x1280", "none")
    with pytest.raises(Equi360Error, match="LoRA version '2.0'"):
        ReferenceSettings(lora_version="2.0")


@pytest.mark.parametrize("version, hfov, aspect, warned", [
    ("1.0", 100, 1.78, []), ("1.0", 72, 2.39, []), ("1.0", 128, 1.33, []),
    ("1.0", 60, 1.78, ["across"]), ("1.0", 100, 1.0, ["trained on 1.33:1 to 2.39:1"]),
    ("0.1", 100, 2.39, []), ("0.1", 125, 2.39, ["80° to 120°"]), ("0.1", 100, 1.78, ["trained on 2.39:1"]),
])
def test_the_sweet_spot_warnings_follow_the_lora_version(version, hfov, aspect, warned):
    from blender_equi360.jobs.lora_versions import LORA_VERSIONS
    warnings = LORA_VERSIONS[version].sweet_spot_warnings(hfov, aspect)
    assert len(warnings) == len(warned) and all(w in text for w, text in zip(warned, warnings)), warnings


def test_the_cli_builds_for_the_lora_version_asked(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 1, 320, 180, 24, lambda k: smooth_texture(320, 180, k))
    made = run_cli("reference", clip, "-o", tmp_path / "v01.mkv", "--lora-version", "0.1", "--frames", "1",
                   "--json", "-q")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["settings"]["size"] == "1920x960" and result["settings"]["crop"] == "center"
    assert "cropped to 2.39:1" in made.stderr and probe(tmp_path / "v01.mkv").width == 1920
    made = run_cli("reference", clip, "-o", tmp_path / "v10.mkv", "--frames", "1", "--json", "-q")
    result = json.loads(made.stdout)
    assert result["settings"]["size"] == "2560x1280" and result["settings"]["crop"] == "none"
    assert "cropped" not in made.stderr and probe(tmp_path / "v10.mkv").width == 2560
