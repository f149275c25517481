"""Whatever file or job.json a user throws at Equi360: the right picture or one clear error, never a
destroyed job, a traceback, an out-of-memory kill, or a file touched outside the job folder. Each case is
reproduced with the real thing: a real symbolic link, a real read-only folder, real truncated files."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.jobs.job import Job, check_job_folder
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from conftest import ROOT, copy_job_inputs, smooth_texture, write_clip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    clip = write_clip(folder / "clip.mp4", 9, 240, 100, 24, lambda k: smooth_texture(240, 100, k / 5))
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(128, 64), frames=9))
    return folder


GOOD = {"version": 1, "reference": "reference.mkv", "mask": "mask.mkv", "backend": "draft", "delivery_size": "256x128"}


def job_folder(path, inputs, **fields):
    copy_job_inputs(inputs, path)
    (path / "job.json").write_text(json.dumps({**GOOD, **fields}))
    return path


def engine(job_dir, cwd=ROOT, wrap=(), env=None):
    proc = subprocess.run([*wrap, sys.executable, "-m", "engine", "run", str(job_dir)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    return proc.returncode, events, proc.stderr


def cli(*args, cwd=ROOT):
    """``python -m blender_equi360 …`` from ``cwd``, the repository on the path as an installed copy would be."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "blender_equi360", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


# --- job.json: every field's type and range, up front -----------------------------------------------------

@pytest.mark.parametrize("fields, words", [
    ({"delivery_crf": True}, "delivery_crf"), ({"delivery_crf": 60}, "crf"), ({"seed": 2 ** 70}, "seed"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"models": {"checkpoint": 5}}, "models.checkpoint"),
    ({"models": []}, "models must be an object"), ({"models": {"vae": "x"}}, "unknown model"),
    ({"output_frames": True}, "output_frames"), ({"output_frames": 0}, "output_frames"),
    ({"version": True}, "version must be a whole number"), ({"version": 1.0}, "version must be a whole number"),
    ({"steps": True}, "steps"), ({"steps": 0}, "steps"), ({"lora_strength": True}, "lora_strength"),
    ({"lora_strength": float("nan")}, "lora_strength"), ({"low_vram": 1}, "low_vram"), ({"audio": "yes"}, "audio"),
    ({"window_frames": True}, "window_frames"), ({"window_overlap": 9.0}, "window_frames"),
    ({"prompt": 5}, "prompt"), ({"prompt": "x" * 5000}, "prompt"), ({"negative_prompt": 3}, "negative_prompt"),
    ({"reference": ""}, "reference"), ({"reference": 7}, "reference"), ({"backend": "gpu"}, "backend"),
    ({"delivery_size": "65536x32768"}, "larger than the largest delivery"), ({"delivery_size": 3840}, "delivery_size"),
    ({"delivery_size": "3840x1024"}, "2:1"), ({"delivery_codec": "av1"}, "codec"), ({"passes": "tiff"}, "passes"),
    ({"pass_alpha": "none"}, "pass alpha"), ({"delivery_pixel_format": "yuv444p"}, "pixel format"),
    ({"colour": "red"}, "unknown field"),
    ({"output": "job.json"}, ".mp4"), ({"output": "reference.mkv"}, ".mp4"), ({"output": "result"}, ".mp4"),
    ({"output": "result.avi"}, ".mp4"), ({"mask": "reference.mkv"}, "different files"),
])
def test_a_bad_field_is_refused_before_any_work(fields, words):
    with pytest.raises(Equi360Error, match=None) as info:
        Job.from_dict({**GOOD, **fields})
    assert words in str(info.value) and "job.json" in str(info.value), str(info.value)


@pytest.mark.parametrize("fields, words", [
    ({"output": "windows/result.mp4"}, "windows' folder"), ({"mask": "engine.log"}, "engine's log"),
    ({"mask": "job.json"}, "the job"), ({"reference": "windows.json"}, "windows' record"),
    ({"mask": "reference.json"}, "placement record"), ({"output": "job.lock/x.mp4"}, "job's lock"),
    ({"output": "../elsewhere.mp4"}, "inside the job folder"),
    ({"output": "out.mp4", "passes": "exr", "mask": "out_passes"}, "passes folder"),
    ({"output": "result.mp4", "suffix_360": True, "mask": "result_360.mp4"}, "output"),
])
def test_names_that_collide_with_the_jobs_own_files_are_refused(tmp_path, fields, words):
    job = Job.from_dict({**GOOD, **fields})
    with pytest.raises(Equi360Error) as info:
        check_job_folder(tmp_path, job)
    assert words in str(info.value), str(info.value)


def test_the_engine_refuses_a_bad_job_with_its_code_and_touches_nothing(tmp_path, inputs):
    job_dir = job_folder(tmp_path / "job", inputs, output="job.json")
    before = (job_dir / "job.json").read_bytes()
    rc, events, err = engine(job_dir)
    assert rc == EXIT_CODES["bad_job"] and events[-1]["code"] == "bad_job" and ".mp4" in events[-1]["message"], err
    assert (job_dir / "job.json").read_bytes() == before and not (job_dir / "windows").exists()
    job_dir = job_folder(tmp_path / "huge", inputs, delivery_size="65536x32768")
    rc, events, err = engine(job_dir)
    assert rc == EXIT_CODES["bad_job"] and "8K" in events[-1]["message"] and "Traceback" not in err


def test_a_mask_of_another_reference_is_bad_input_not_a_crash(tmp_path, inputs):
    job_dir = job_folder(tmp_path / "job", inputs)
    build_reference(inputs / "clip.mp4", job_dir / "other.mkv", job_dir / "other_mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(256, 128), frames=9))
    (job_dir / "job.json").write_text(json.dumps({**GOOD, "mask": "other_mask.mkv"}))
    rc, events, err = engine(job_dir)
    assert rc == EXIT_CODES["bad_input"] and "256x128" in events[-1]["message"] and "Traceback" not in err


def test_a_batch_with_an_engine_python_that_does_not_exist_says_so(tmp_path, inputs):
    job_dir = job_folder(tmp_path / "job", inputs)
    made = cli("batch", job_dir, "--python", tmp_path / "no" / "python")
    assert made.returncode == 3 and "could not start the engine" in made.stderr and "write" not in made.stderr


# --- the engine writes only inside its job folder ----------------------------------------------------------

def test_a_symlinked_windows_folder_is_refused_and_what_it_points_to_is_left_alone(tmp_path, inputs):
    elsewhere = tmp_path / "users_folder"
    elsewhere.mkdir()
    (elsewhere / ".notes.txt.partial-1").write_text("the user's file")
    (elsewhere / "window_0000.mkv").write_text("not ours")
    job_dir = job_folder(tmp_path / "job", inputs)
    (job_dir / "windows").symlink_to(elsewhere, target_is_directory=True)
    rc, events, err = engine(job_dir)
    assert rc == EXIT_CODES["bad_job"] and "windows is a symbolic link" in events[-1]["message"], err
    assert sorted(p.name for p in elsewhere.iterdir()) == [".notes.txt.partial-1", "window_0000.mkv"]
    assert (elsewhere / "window_0000.mkv").read_text() == "not ours"


@pytest.mark.parametrize("name", ["engine.log", "windows.json", "job.lock", "result.mp4", "result_passes"])
def test_a_symlinked_file_the_engine_would_write_is_refused_before_any_work(tmp_path, inputs, name):
    target = tmp_path / "target"
    target.write_text("the user's")
    job_dir = job_folder(tmp_path / "job", inputs, passes="png16")
    (job_dir / name).symlink_to(target)
    rc, events, err = engine(job_dir)
    assert rc == EXIT_CODES["bad_job"] and "symbolic link" in events[-1]["message"], err
    assert target.read_text() == "the user's" and not (job_dir / "windows").exists()


def _read_only(folder):
    """Run a command with ``folder`` mounted read-only (a real read-only file system, in a mount namespace
    of its own: root writes anywhere else), or None where this machine does not allow it."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && mount -o "
                            f"remount,bind,ro '{folder}' && ! touch '{folder}/.probe'"], capture_output=True)
    if probe.returncode != 0:
        return None
    return ("unshare", "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro "
            f"'{folder}' && exec \"$0\" \"$@\"")


def test_a_read_only_job_folder_is_permission_denied_not_a_traceback(tmp_path, inputs):
    job_dir = job_folder(tmp_path / "job", inputs)
    wrap = _read_only(job_dir) if os.geteuid() == 0 else ()
    if wrap is None:
        pytest.skip("no way to make a read-only folder for root here (unshare/mount not allowed)")
    if os.geteuid() != 0:
        job_dir.chmod(0o555)
    try:
        rc, events, err = engine(job_dir, wrap=wrap)
    finally:
        job_dir.chmod(0o755)
    assert rc == EXIT_CODES["permission_denied"], err
    assert events[-1]["event"] == "error" and events[-1]["code"] == "permission_denied", events
    assert "Traceback" not in err and "writable" in events[-1]["message"]


# --- paths: resolved once, at the edge ---------------------------------------------------------------------

def test_relative_paths_work_from_any_folder(tmp_path, inputs):
    work = tmp_path / "work"
    (work / "shot").mkdir(parents=True)
    shutil.copy(inputs / "clip.mp4", work / "clip.mp4")
    built = cli("reference", "clip.mp4", "-o", "shot/reference.mkv", "--mask", "shot/mask.mkv", "--size", "128x64",
                "--frames", "9", "-q", cwd=work)
    assert built.returncode == 0, built.stderr
    recorded = json.loads((work / "shot" / "reference.json").read_text())["source"]["path"]
    assert recorded == str((work / "clip.mp4").resolve())
    (work / "shot" / "job.json").write_text(json.dumps(GOOD))
    batch = cli("batch", "shot", cwd=work)  # a relative job folder, run from its parent
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert (work / "shot" / "result.mp4").is_file()


def test_a_model_path_that_is_a_folder_says_so(tmp_path, inputs):
    job_dir = job_folder(tmp_path / "job", inputs, backend="ltx", models={
        "checkpoint": str(tmp_path), "text_encoder": str(tmp_path), "ic_lora": str(tmp_path)})
    rc, events, err = engine(job_dir, env={**os.environ, "EQUI360_ENGINE_DEVICE": "cpu"})
    assert rc == EXIT_CODES["missing_weights"] and "is a folder, not a .safetensors file" in events[-1]["message"], err


# --- video files that are not what they seem ------------------------------------------------------------

def test_a_truncated_mp4_is_read_as_far_as_it_goes_and_says_so(tmp_path, inputs):
    import imageio_ffmpeg
    full = write_clip(tmp_path / "full.mp4", 48, 240, 100, 24, lambda k: smooth_texture(240, 100, k / 5))
    fast = tmp_path / "fast.mp4"  # the index first, as cameras and web exports write it: cut, it still opens
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(full), "-c", "copy", "-movflags",
                    "+faststart", str(fast)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    made = cli("reference", cut, "-o", tmp_path / "ref.mkv", "--size", "128x64", "-q")
    assert made.returncode == 0 and "Traceback" not in made.stderr, made.stderr
    assert "cut short or damaged" in made.stderr and "of the 48 frames" in made.stderr


def test_a_still_image_is_not_a_video(tmp_path):
    import av

    from blender_equi360.media.video import encode_image
    still = tmp_path / "still.png"
    encode_image(still, "png", av.VideoFrame.from_ndarray(smooth_texture(64, 32), format="rgb24"))
    made = cli("reference", still, "-o", tmp_path / "ref.mkv", "-q")
    assert made.returncode == 3 and "still image" in made.stderr and len(made.stderr.strip().splitlines()) == 1


def test_an_odd_sized_clip_gets_no_letterbox_note(tmp_path):
    clip = write_clip(tmp_path / "odd.mp4", 3, 239, 99, 24, lambda k: smooth_texture(239, 99, k), codec="libx264rgb",
                      pix_fmt="rgb24")
    made = cli("reference", clip, "-o", tmp_path / "ref.mkv", "--size", "128x64", "-q")
    assert made.returncode == 0, made.stderr
    assert "letterbox" not in made.stderr


def test_preview_refuses_a_frame_it_does_not_have_with_one_line(tmp_path, inputs):
    for args, words in ((["--frame", "-5"], "count from 0"), (["--frame", "500"], "has no frame 500"),
                        (["--view-size", "5000"], "64 to 2048")):
        made = cli("preview", inputs / "reference.mkv", "-o", tmp_path / "sheet.png", *args)
        assert made.returncode == 3 and words in made.stderr and "Traceback" not in made.stderr, made.stderr
        assert not (tmp_path / "sheet.png").exists()


def test_score_refuses_a_result_that_is_not_the_jobs(tmp_path, inputs):
    job_dir = job_folder(tmp_path / "job", inputs)
    assert engine(job_dir)[0] == 0
    other = write_clip(tmp_path / "other.mp4", 5, 256, 128, 30, lambda k: smooth_texture(256, 128, k))
    made = cli("score", other, "--source", inputs / "clip.mp4", "--job", job_dir)
    assert made.returncode == 3 and "fps" in made.stderr, made.stderr
    wrong_size = write_clip(tmp_path / "wrong.mp4", 9, 320, 100, 24, lambda k: smooth_texture(320, 100, k))
    made = cli("score", job_dir / "result.mp4", "--source", wrong_size, "--job", job_dir)
    assert made.returncode == 3 and "built from a 240×100 clip" in made.stderr, made.stderr
    moved = tmp_path / "moved.mp4"
    shutil.copy(inputs / "clip.mp4", moved)
    made = cli("score", job_dir / "result.mp4", "--source", moved, "--job", job_dir)
    assert made.returncode == 0 and "warning: the source given" in made.stdout, made.stdout + made.stderr
