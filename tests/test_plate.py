"""The plate laid onto the delivery canvas (blender_equi360/plate.py): where the canvas is finer than the
source the source's detail is kept, where it is coarser detail it cannot carry is removed instead of
aliasing, and the plate's mask is the footprint the reference's own projection gives."""

import math

import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize
from blender_equi360.geometry.projection import PlateCrop, PlateMapping, equirect_to_perspective
from blender_equi360.stages.plate import PlateSampler


def grating(width, height, period):
    """Vertical bars, ``period`` source pixels apart, ±90 levels around mid-grey."""
    x = np.arange(width) + 0.5
    row = 128 + 90 * np.sin(2 * math.pi * x / period)
    return np.clip(np.repeat(np.tile(row, (height, 1))[..., None], 4, axis=2) + 0.5, 0, 255).astype(np.uint8)


def laid(source_bgra, camera, size):
    """The plate projected onto a whole canvas (RGB float), and its sampler."""
    height, width = source_bgra.shape[:2]
    sampler = PlateSampler(camera, PlateCrop.whole(width, height), size)
    canvas = np.zeros((size.height, size.width, 3), np.float32)
    canvas[sampler.rows] = sampler.project(source_bgra)
    return canvas, sampler


def middle(image):
    h, w = image.shape[:2]
    return image[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 0].astype(np.float32)


def test_an_enlarged_plate_keeps_the_sources_detail():
    # 320 px over 60° on a 2048-px canvas: the canvas is 1.9× finer than the source in the middle.
    source = grating(320, 134, period=4)
    canvas, sampler = laid(source, Camera(60), CanvasSize(2048, 1024))
    back = equirect_to_perspective(canvas, (320, 134), Camera(60), cubic=True)
    kept = middle(back).std() / middle(source).std()
    # Measured 0.915 (Catmull-Rom there and back); 2×2 bilinear samples averaged, as for a reduced plate, keep 0.74.
    assert kept > 0.88, kept


def test_a_reduced_plate_removes_detail_the_canvas_cannot_carry_and_keeps_the_rest():
    # 960 px over 100° on a 1024-px canvas: the canvas is 3.4× (middle) to 8× (sides) coarser than the source.
    camera, size = Camera(100), CanvasSize(1024, 512)
    fine, _ = laid(grating(960, 402, period=2.2), camera, size)
    coarse, sampler = laid(grating(960, 402, period=40), camera, size)
    inside = sampler.mask == 0
    assert fine[inside].std() < 3, "bars finer than the canvas's pixels must come out as even grey, not moiré"
    assert abs(fine[inside].mean() - 128) < 1.5
    kept = equirect_to_perspective(coarse, (960, 402), camera, cubic=True)
    assert middle(kept).std() / 90 * math.sqrt(2) > 0.93  # bars 10 canvas pixels apart come through (0.99)


@pytest.mark.parametrize("camera", [Camera(100), Camera(70, yaw_deg=170, pitch_deg=20, roll_deg=10)])
def test_the_mask_is_the_footprint_the_reference_projection_gives(camera):
    size = CanvasSize(512, 256)
    _, sampler = laid(grating(240, 100, period=8), camera, size)
    reference = PlateMapping(camera, PlateCrop.whole(240, 100), size, (240, 100)).mask
    assert np.count_nonzero(sampler.mask == 0) == pytest.approx(np.count_nonzero(reference == 0), rel=0.02)
    assert np.mean(np.abs(sampler.mask.astype(int) - reference)) < 1.0
    assert sampler.mask[:sampler.rows.start].min() == 255 and sampler.mask[sampler.rows.stop:].min() == 255


def test_a_plate_of_the_wrong_size_is_refused():
    _, sampler = laid(grating(240, 100, period=8), Camera(100), CanvasSize(512, 256))
    with pytest.raises(ValueError, match="240x100"):
        sampler.project(grating(100, 40, period=8))
