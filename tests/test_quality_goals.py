"""Issue 5's goals on a synthetic clip with ground truth, through ``python -m engine run`` and ``score``.

The delivered video is seamless (ratio ≤ 1.2) and gives its plate back at 40 dB or better, over the
output and on every frame, although this clip's detail reaches near the delivery canvas's Nyquist limit.

With the real LTX pipeline on the tiny random-weight models the plate must come back just the same (it is
laid over the picture from the source). Their seam is not held to 1.2: their picture is noise-like, and
upscaled 2× such a picture has every other neighbour pair interpolated (diff 24) and the others not (37);
the seam pair is always one of the latter, so even a perfectly wrapped resize scores 1.13–1.3. At the
model's canvas the wrapped tiny output scores 1.0 (the roll and the wrapped decode are tested in
test_engine_seam.py)."""

import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.job import Job, save_job
from blender_equi360.quality.score import score
from conftest import make_job, rendered_texture, run_engine, smooth_texture, write_clip


def street(width, height, phase):
    """Like footage: detail in brightness down to 10 px, colour only in broad areas."""
    detail = smooth_texture(width, height, phase, min_period=10).astype(np.float32).mean(axis=2, keepdims=True)
    colour = smooth_texture(width, height, phase, min_period=120).astype(np.float32)
    return np.clip(colour - colour.mean(axis=2, keepdims=True) + detail, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def detailed(tmp_path_factory):
    """A detailed clip, as a 512×256 reference (delivered at 2×, as 1920×960 is at 3840×1920)."""
    folder = tmp_path_factory.mktemp("detailed")
    clip = write_clip(folder / "clip.mp4", 9, 480, 200, 24, lambda k: street(480, 200, k / 5))
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(512, 256), frames=9))
    return folder


@pytest.mark.parametrize("backend", ["draft", "ltx"])
def test_goals_are_met_on_a_synthetic_clip(tmp_path, detailed, models, backend):
    job_dir = make_job(tmp_path, detailed, models, backend=backend, delivery_size="1024x512")
    rc, events, err = run_engine(job_dir)
    assert rc == 0, err
    report = score(job_dir / "result.mp4", detailed / "clip.mp4", job_dir)
    if backend == "draft":
        assert report["seam_ratio"]["max"] <= 1.2, report["seam_ratio"]
    assert report["plate"]["psnr_db_mean"] >= 40 and report["plate"]["psnr_db_min"] >= 40, report["plate"]
    assert report["plate"]["ssim_min"] >= 0.99, report["plate"]


@pytest.mark.parametrize("source_size, delivery", [((640, 268), "3840x1920"), ((1920, 804), "7680x3840")],
                         ids=["small-source-4k", "1920-source-8k"])
def test_a_sharp_plate_comes_back_when_the_delivery_enlarges_it(tmp_path, source_size, delivery):
    """The canvas is finer than the source in the middle of the plate (1.5× and 2.3× here) and coarser at
    its sides: the plate must come back whole, judged at the source's own density where the canvas holds it."""
    width, height = source_size
    clip = write_clip(tmp_path / "clip.mp4", 2, width, height, 24, lambda k: rendered_texture(width, height, 0.4 * k))
    build_reference(clip, tmp_path / "reference.mkv", tmp_path / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(512, 256), frames=9))
    save_job(tmp_path, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                       delivery_size=delivery, audio=False))
    rc, events, err = run_engine(tmp_path)
    assert rc == 0, err
    report = score(tmp_path / "result.mp4", clip, tmp_path)
    plate = report["plate"]
    assert plate["psnr_db_mean"] >= 40 and plate["psnr_db_min"] >= 40 and plate["ssim_min"] >= 0.99, plate
    assert plate["judged_at"][0] == {"density": 1.0, "share": pytest.approx(plate["judged_at"][0]["share"])}
    assert plate["judged_at"][0]["share"] > 0.15, plate["judged_at"]  # judged at the source's own detail there
