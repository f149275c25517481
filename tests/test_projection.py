"""Analytic checks of where the plate lands on the canvas (no video files involved)."""

import math

import av
import numpy as np
import pytest

from blender_equi360.geometry import projection
from blender_equi360.geometry.camera import Camera
from blender_equi360.geometry.projection import (
    PlateCrop,
    PlateMapping,
    equirect_to_perspective,
    lonlat_to_pixel,
    pixel_to_lonlat,
    prefiltered_plate_size,
)
from blender_equi360.jobs.canvas import CanvasSize
from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.media.video import PREFILTER
from blender_equi360.quality.metrics import psnr
from conftest import smooth_texture

SIZE = CanvasSize(1920, 960)


def ramp_plate(width, height):
    """Channel 0 = column index, channel 1 = row index: the canvas then shows where it sampled."""
    plate = np.zeros((height, width, 4), np.uint8)
    plate[..., 0] = np.arange(width)[None, :]
    plate[..., 1] = np.arange(height)[:, None]
    return plate


def project(camera, plate, size=SIZE, feather=0.0):
    h, w = plate.shape[:2]
    mapping = PlateMapping(camera, PlateCrop.whole(w, h), size, (w, h), feather)
    return mapping, mapping.project(plate).astype(np.float64)


def known(mapping):
    return mapping.mask == 0


def blob_plate(width, height):
    """A Gaussian spot at the plate centre, in channel 2."""
    plate = np.zeros((height, width, 4), np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    spot = np.exp(-(((x + 0.5 - width / 2) ** 2 + (y + 0.5 - height / 2) ** 2) / 8.0))
    plate[..., 2] = (255 * spot).astype(np.uint8)
    return plate


def spot_centre(canvas):
    spot = canvas[..., 2]
    ys, xs = np.mgrid[0:spot.shape[0], 0:spot.shape[1]]
    return (spot * xs).sum() / spot.sum(), (spot * ys).sum() / spot.sum()


def test_plate_centre_lands_on_canvas_centre():
    _, canvas = project(Camera(100), blob_plate(240, 100))
    cx, cy = spot_centre(canvas)
    # The canvas centre lies between pixels W/2-1 and W/2 (pixel-index coordinates).
    assert cx == pytest.approx(SIZE.width / 2 - 0.5, abs=0.02)
    assert cy == pytest.approx(SIZE.height / 2 - 0.5, abs=0.02)


@pytest.mark.parametrize("hfov", [60.0, 100.0, 140.0])
def test_plate_edges_land_at_half_hfov_and_columns_follow_the_gnomonic_law(hfov):
    w, h = 256, 107
    mapping, canvas = project(Camera(hfov), ramp_plate(w, h))
    row = SIZE.height // 2  # half a pixel below the horizon
    cols = np.flatnonzero(known(mapping)[row])
    lon_first, _ = pixel_to_lonlat(cols[0], row, SIZE.width, SIZE.height)
    lon_last, _ = pixel_to_lonlat(cols[-1], row, SIZE.width, SIZE.height)
    pixel = 360.0 / SIZE.width
    # The outermost known pixel centres are the last ones inside ±hfov/2.
    assert -hfov / 2 <= math.degrees(lon_first) < -hfov / 2 + pixel
    assert hfov / 2 - pixel < math.degrees(lon_last) <= hfov / 2
    # Every known pixel of that row sampled plate column u - 0.5 with u = w/2 + f·tan(lon).
    lon, _ = pixel_to_lonlat(cols, row, SIZE.width, SIZE.height)
    f = (w / 2) / math.tan(math.radians(hfov) / 2)
    expected = np.clip(w / 2 + f * np.tan(lon) - 0.5, 0, w - 1)
    assert np.abs(canvas[row, cols, 0] - expected).max() <= 0.51


@pytest.mark.parametrize("pitch", [-20.0, 7.5, 30.0])
def test_pitch_moves_the_plate_up_by_the_pitch_angle(pitch):
    w, h = 240, 101
    mapping, canvas = project(Camera(100, pitch_deg=pitch), blob_plate(w, h))
    cx, cy = spot_centre(canvas)
    lon, lat = pixel_to_lonlat(cx, cy, SIZE.width, SIZE.height)
    assert math.degrees(lon) == pytest.approx(0.0, abs=0.01)
    assert math.degrees(lat) == pytest.approx(pitch, abs=0.01)
    # The plate's top edge, on the centre column, is vfov/2 above the pitch.
    col = SIZE.width // 2
    top_row = np.flatnonzero(known(mapping)[:, col])[0]
    top_lat = math.degrees(pixel_to_lonlat(col, top_row, SIZE.width, SIZE.height)[1])
    expected = pitch + Camera(100).vfov_deg(w, h) / 2
    assert expected - 180.0 / SIZE.height < top_lat <= expected


def test_yaw_turns_the_plate_right_and_wraps_across_the_seam():
    plate = ramp_plate(200, 84)
    for yaw in (40.0, 170.0, -120.0):
        mapping, _ = project(Camera(90, yaw_deg=yaw), plate)
        cols = np.flatnonzero(known(mapping)[SIZE.height // 2])
        lon = np.degrees(pixel_to_lonlat(cols, 0, SIZE.width, SIZE.height)[0])
        # Centre of the known span, measured relative to the yaw so the ±180° seam doesn't split it.
        offsets = (lon - yaw + 180.0) % 360.0 - 180.0
        assert (offsets.min() + offsets.max()) / 2 == pytest.approx(0.0, abs=0.2)
        assert offsets.max() - offsets.min() == pytest.approx(90.0, abs=0.4)


def test_positive_roll_turns_the_plate_counter_clockwise():
    plate = ramp_plate(240, 100)
    mapping, _ = project(Camera(100, roll_deg=15.0), plate)
    ys, xs = np.nonzero(known(mapping))
    right, left = ys[xs >= SIZE.width // 2].mean(), ys[xs < SIZE.width // 2].mean()
    assert right < left - 20  # the right half sits higher (smaller row index) on the canvas
    # The plate's right-edge centre (x = tan(hfov/2), y = 0 in camera space) rises by atan(sin(roll)·…).
    lon_edge = math.atan(math.tan(math.radians(50)) * math.cos(math.radians(15)))
    lat_edge = math.asin(math.sin(math.radians(15)) * math.sin(math.radians(50)))
    x, y = lonlat_to_pixel(lon_edge, lat_edge, SIZE.width, SIZE.height)
    assert known(mapping)[int(round(y)), int(x) - 3]  # just inside that edge: known
    assert not known(mapping)[int(round(y)), int(x) + 3]  # just outside: unknown


def _analytic_footprint_pixels(hfov_deg, aspect, size):
    """Pixels of a level plate's footprint: ∫ 2·atan(tan(vfov/2)·cos(lon)) dlon over ±hfov/2 (lon-lat
    area, since every canvas pixel covers the same lon-lat area)."""
    half = math.radians(hfov_deg) / 2
    tan_half_v = math.tan(half) / aspect
    lon = np.linspace(-half, half, 200001)
    lat_extent = 2 * np.arctan(tan_half_v * np.cos(lon))
    area = float(np.sum((lat_extent[1:] + lat_extent[:-1]) / 2 * np.diff(lon)))
    return area * (size.width / (2 * math.pi)) * (size.height / math.pi)


@pytest.mark.parametrize("hfov,yaw", [(100.0, 0.0), (100.0, 135.0), (60.0, -30.0), (150.0, 0.0)])
def test_mask_area_matches_the_analytic_footprint(hfov, yaw):
    w, h = 478, 200  # 2.39:1
    mapping = PlateMapping(Camera(hfov, yaw_deg=yaw), PlateCrop.whole(w, h), SIZE, (w, h))
    measured = int((mapping.mask < 255).sum())
    assert measured == pytest.approx(_analytic_footprint_pixels(hfov, w / h, SIZE), rel=0.01)
    assert measured == mapping.footprint_pixels


def _round_trip_psnr(camera, w, h, size=SIZE, border=8):
    frame = smooth_texture(w, h, phase=0.3)
    plate = np.zeros((h, w, 4), np.uint8)
    plate[..., :3] = frame
    plate_size = prefiltered_plate_size(camera, PlateCrop.whole(w, h), size)
    mapping = PlateMapping(camera, PlateCrop.whole(w, h), size, plate_size)
    small = _prefilter(plate, plate_size) if plate_size != (w, h) else plate
    canvas = mapping.project(small)[..., :3]
    back = equirect_to_perspective(canvas, (w, h), camera)
    inner = (slice(border, h - border), slice(border, w - border))
    return psnr(back[inner], frame[inner].astype(np.float32))


def _prefilter(img, size):
    """The builder's prefilter (swscale, as the builder runs it) applied to a test plate."""
    frame = av.VideoFrame.from_ndarray(img, format="bgra")
    return frame.reformat(width=size[0], height=size[1], interpolation=PREFILTER.upper()).to_ndarray()


@pytest.mark.parametrize("camera", [Camera(100), Camera(80, yaw_deg=-150, pitch_deg=12, roll_deg=-7)])
def test_perspective_equirect_perspective_round_trip(camera):
    # A plate smaller than its footprint (no decimation): the round trip is near-exact.
    assert _round_trip_psnr(camera, 320, 134) >= 40.0


def test_round_trip_through_the_prefilter_keeps_band_limited_detail():
    # A 1280-px plate lands on ≈533 canvas px: detail coarser than the canvas survives.
    assert _round_trip_psnr(Camera(100), 1280, 536, size=CanvasSize(1920, 960), border=24) >= 36.0


def test_prefilter_stops_fine_detail_from_aliasing():
    """Stripes finer than the canvas can hold must come out as even grey, not as moiré."""
    w, h = 1912, 800
    stripes = np.zeros((h, w, 4), np.uint8)
    stripes[..., :3] = (np.arange(w) % 3 == 0)[None, :, None] * 255  # period 3 px
    camera = Camera(100)
    plate_size = prefiltered_plate_size(camera, PlateCrop.whole(w, h), SIZE)
    filtered_map = PlateMapping(camera, PlateCrop.whole(w, h), SIZE, plate_size)
    filtered = filtered_map.project(_prefilter(stripes, plate_size))[..., 0].astype(float)
    raw_map = PlateMapping(camera, PlateCrop.whole(w, h), SIZE, (w, h))
    raw = raw_map.project(stripes)[..., 0].astype(float)
    inner = filtered_map.mask == 0
    inner &= np.roll(inner, 8, 0) & np.roll(inner, -8, 0) & np.roll(inner, 8, 1) & np.roll(inner, -8, 1)
    assert filtered[inner].mean() == pytest.approx(255 / 3, abs=3)
    assert filtered[inner].std() < 4.0
    assert raw[inner].std() > 15 * filtered[inner].std()


def test_inward_feather_ramps_the_plate_to_black_at_its_edge():
    plate = np.full((100, 240, 4), 200, np.uint8)
    mapping, canvas = project(Camera(100), plate, feather=6.0)
    row = canvas[SIZE.height // 2, :, 0]
    cols = np.flatnonzero(mapping.mask[SIZE.height // 2] < 255)
    edge = row[cols[:8]]
    assert edge[0] < 60 and np.all(np.diff(edge[:5]) > 0)  # rises from near black...
    assert row[SIZE.width // 2] == 200  # ...to the plate inside
    assert mapping.mask[SIZE.height // 2, cols[0]] > 128 and mapping.mask[SIZE.height // 2, SIZE.width // 2] == 0


def test_outside_the_footprint_is_exactly_black():
    plate = np.full((100, 240, 4), 255, np.uint8)
    mapping, canvas = project(Camera(100, pitch_deg=10, roll_deg=3), plate)
    assert canvas[mapping.mask == 255].max() == 0
    assert canvas[mapping.mask == 0][:, :3].min() == 255


@pytest.mark.parametrize("text", ["1920x961", "1000x500", "1920x1920", "2048x960", "axb", "0x0"])
def test_bad_canvas_sizes_are_refused(text):
    with pytest.raises(Equi360Error, match=r"multiples of 32|2:1|WIDTHxHEIGHT"):
        CanvasSize.parse(text)


@pytest.mark.parametrize("hfov", [0.5, 1.0, 179.0, 200.0, float("nan")])
def test_fov_out_of_range_is_refused(hfov):
    with pytest.raises(Equi360Error, match="FOV"):
        Camera(hfov)


def test_focal_length_and_sensor_width_give_the_fov():
    assert Camera.from_focal_length(18.0, 36.0).hfov_deg == pytest.approx(90.0)


@pytest.mark.parametrize("camera", [Camera(100), Camera(100, pitch_deg=60), Camera(170, pitch_deg=-89),
                                    Camera(120, yaw_deg=180, roll_deg=90), Camera(30, pitch_deg=88)])
def test_mapping_only_skips_rows_the_plate_cannot_reach(camera, monkeypatch):
    window = PlateCrop.whole(478, 200)
    size = CanvasSize(512, 256)
    fast = PlateMapping(camera, window, size, (478, 200))
    monkeypatch.setattr(projection, "footprint_rows", lambda lens, size: (0, size.height))
    every_row = PlateMapping(camera, window, size, (478, 200))
    assert np.array_equal(fast.mask, every_row.mask) and np.array_equal(fast.dst, every_row.dst)
