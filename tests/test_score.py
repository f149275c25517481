"""``python -m blender_equi360 score``: the plate round trip finds a damaged plate, the seam ratio finds a
cut, and the command reports both as text or JSON, with a clear error for a job it cannot score."""

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.job import Job, save_job
from blender_equi360.media.video import LosslessVideoWriter, read_frames
from blender_equi360.quality.score import score
from conftest import ROOT, smooth_texture, write_clip


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("job")
    clip = write_clip(folder / "clip.mp4", 9, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5))
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100, pitch_deg=5), size=CanvasSize(512, 256), frames=9))
    save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft"))
    return folder, clip


def rewrite(path, frames):
    writer = LosslessVideoWriter(path, frames[0].shape[1], frames[0].shape[0], Fraction(24))
    for frame in frames:
        writer.write(np.dstack([frame[..., ::-1], np.zeros(frame.shape[:2], np.uint8)]))  # RGB → BGRA
    writer.close()
    return path


def test_the_reference_itself_keeps_its_plate_and_has_no_seam(job):
    folder, clip = job
    report = score(folder / "reference.mkv", clip, folder)
    assert report["frames"] == 9 and report["plate"]["psnr_db_min"] > 30 and report["plate"]["ssim_min"] > 0.95
    assert report["seam_ratio"]["max"] < 0.01  # black meets black


def test_a_damaged_plate_and_a_cut_seam_are_found(job, tmp_path):
    folder, clip = job
    frames = list(read_frames(folder / "reference.mkv"))
    mask = next(read_frames(folder / "mask.mkv", "gray"))
    texture = smooth_texture(512, 256)  # not periodic: its left and right edges do not meet
    damaged = [np.where(mask[..., None] >= 128, texture, 255 - f).astype(np.uint8) for f in frames]
    report = score(rewrite(tmp_path / "damaged.mkv", damaged), clip, folder)
    assert report["plate"]["psnr_db_min"] < 15
    assert report["seam_ratio"]["max"] > 5 and not report["goals"]["seam_ratio_max"]["met"]


def test_the_command_prints_text_or_json_and_refuses_what_it_cannot_score(job, tmp_path):
    folder, clip = job
    run = subprocess.run([sys.executable, "-m", "blender_equi360", "score", str(folder / "reference.mkv"),
                          "--source", str(clip), "--job", str(folder), "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and json.loads(run.stdout)["goals"]["seam_ratio_max"]["met"]
    text = subprocess.run([sys.executable, "-m", "blender_equi360", "score", str(folder / "reference.mkv"),
                           "--source", str(clip), "--job", str(folder)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert "plate round trip" in text.stdout and "seam ratio" in text.stdout
    (tmp_path / "reference.mkv").write_bytes((folder / "reference.mkv").read_bytes())
    (tmp_path / "mask.mkv").write_bytes((folder / "mask.mkv").read_bytes())
    save_job(tmp_path, Job.from_fields(reference="reference.mkv", mask="mask.mkv"))
    run = subprocess.run([sys.executable, "-m", "blender_equi360", "score", str(tmp_path / "reference.mkv"),
                          "--source", str(clip), "--job", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 3 and "no placement record" in run.stderr
