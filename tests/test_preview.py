"""The preview sheet: its size and layout, each view looking where its label says (a synthetic panorama
with a known sky, ground and two marks), and the plate outlined from the job."""

import subprocess
import sys

import av
import numpy as np
import pytest

from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.media.video import PlaybackVideoWriter
from blender_equi360.quality.preview import GAP, OUTLINE, VIEWS, preview_sheet
from conftest import ROOT

SKY, GROUND, FRONT_MARK, RIGHT_MARK = (90, 140, 230), (120, 90, 60), (230, 30, 30), (30, 200, 60)
W, H, V = 512, 256, 96


def panorama() -> np.ndarray:
    pano = np.zeros((H, W, 3), np.uint8)
    pano[: H // 2], pano[H // 2:] = SKY, GROUND
    # Marks on the horizon: lon 0 (the canvas centre, "front") and lon +90 ("right").
    pano[H // 2 - 12:H // 2 + 12, W // 2 - 12:W // 2 + 12] = FRONT_MARK
    pano[H // 2 - 12:H // 2 + 12, 3 * W // 4 - 12:3 * W // 4 + 12] = RIGHT_MARK
    return pano


@pytest.fixture(scope="module")
def pano_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("pano") / "pano.mp4"
    writer = PlaybackVideoWriter(path, W, H, 24)
    for _ in range(3):
        writer.write(panorama())
    writer.close()
    return path


def read_png(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def view(sheet: np.ndarray, name: str) -> np.ndarray:
    k = [v[0] for v in VIEWS].index(name)
    top = GAP + int(1.5 * V) + GAP
    y, x = top + (k // 3) * (V + GAP), GAP + (k % 3) * (V + GAP)
    return sheet[y:y + V, x:x + V].astype(float)


def test_the_sheet_has_the_equirect_and_six_views_each_looking_where_its_label_says(pano_video, tmp_path):
    sheet = read_png(preview_sheet(pano_video, tmp_path / "sheet.png", view_size=V))
    assert sheet.shape == (int(1.5 * V) + 2 * V + 4 * GAP, 3 * V + 4 * GAP, 3)
    centre = (slice(V // 2 - 4, V // 2 + 4), slice(V // 2 - 4, V // 2 + 4))
    assert np.abs(view(sheet, "FRONT")[centre].mean(axis=(0, 1)) - FRONT_MARK).max() < 20
    assert np.abs(view(sheet, "RIGHT")[centre].mean(axis=(0, 1)) - RIGHT_MARK).max() < 20
    for name in ("LEFT", "BACK"):  # the horizon: sky above, ground below, no mark
        looked = view(sheet, name)
        assert np.abs(looked[34:V // 2 - 6].mean(axis=(0, 1)) - SKY).max() < 12  # below the label
        assert np.abs(looked[V // 2 + 8:].mean(axis=(0, 1)) - GROUND).max() < 12
    up, down = view(sheet, "UP")[34:], view(sheet, "DOWN")[34:]  # below each label
    assert np.abs(up.mean(axis=(0, 1)) - SKY).max() < 6 and up.std(axis=(0, 1)).max() < 6
    assert np.abs(down.mean(axis=(0, 1)) - GROUND).max() < 6
    assert not (sheet == OUTLINE).all(axis=2).any()  # no job: no outline


def test_the_plate_is_outlined_where_the_job_put_it(tmp_path):
    from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
    from blender_equi360.jobs.job import Job, save_job
    from conftest import smooth_texture, write_clip
    clip = write_clip(tmp_path / "clip.mp4", 9, 240, 100, 24, lambda k: smooth_texture(240, 100, k / 5))
    build_reference(clip, tmp_path / "reference.mkv", tmp_path / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(256, 128), frames=9))
    save_job(tmp_path, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                       delivery_size="512x256"))
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(tmp_path)], cwd=ROOT, capture_output=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    cli = subprocess.run([sys.executable, "-m", "blender_equi360", "preview", str(tmp_path / "result.mp4"), "-o",
                          str(tmp_path / "sheet.png"), "--view-size", str(V)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    sheet = read_png(tmp_path / "sheet.png")
    def outlined(image):
        return (image == OUTLINE).all(axis=2).sum()
    assert outlined(view(sheet, "FRONT").astype(np.uint8)) > V  # the plate's edge, in front
    assert outlined(view(sheet, "BACK").astype(np.uint8)) == 0 == outlined(view(sheet, "UP").astype(np.uint8))


def test_bad_requests_are_clear_errors(pano_video, tmp_path):
    with pytest.raises(Equi360Error, match="PNG"):
        preview_sheet(pano_video, tmp_path / "sheet.jpg")
    with pytest.raises(Equi360Error, match="no frame 99"):
        preview_sheet(pano_video, tmp_path / "sheet.png", frame=99)
    cli = subprocess.run([sys.executable, "-m", "blender_equi360", "preview", str(tmp_path / "none.mp4"), "-o",
                          str(tmp_path / "s.png")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 3 and "no such file" in cli.stderr and not (tmp_path / "s.png").exists()
