"""The sphere measures on constructed cases: a panorama rolled along its width has no seam, one with a
cut has; a correct equirect's poles are constant rows; drift and flicker measure what they say."""

import numpy as np
import pytest

from blender_equi360.quality.sphere_metrics import Flicker, cap_discontinuity, pole_spread, seam_ratio, tone_drift
from conftest import smooth_texture


def periodic_panorama(width=512, height=256, shift=0):
    """A seamless panorama: a texture that is periodic in longitude, constant at the poles."""
    x = (np.arange(width) + shift) / width * 2 * np.pi
    lat = np.linspace(np.pi / 2, -np.pi / 2, height)[:, None]
    base = 128 + 60 * np.cos(lat) * (np.sin(3 * x) + 0.5 * np.cos(7 * x + 1))[None, :] + 30 * np.sin(lat)
    return np.repeat(base[..., None], 3, axis=2).clip(0, 255)


def test_a_rolled_panorama_is_seamless_and_a_cut_one_is_not():
    pano = periodic_panorama()
    assert seam_ratio(np.roll(pano, 137, axis=1)) == pytest.approx(1.0, abs=0.3)
    cut = smooth_texture(512, 256)  # not periodic: its edges do not meet
    assert seam_ratio(cut) > 5


def test_poles_of_a_correct_panorama_are_constant_rows():
    pano = periodic_panorama()
    spread = pole_spread(pano)
    assert spread["top"] < 0.5 and spread["bottom"] < 0.5
    smeared = pano.copy()
    smeared[0] = smooth_texture(512, 1)[0]
    assert pole_spread(smeared)["top"] > 10


def test_a_pasted_cap_shows_as_a_ring():
    pano = periodic_panorama()
    assert max(cap_discontinuity(pano).values()) < 2
    ringed = pano.copy()
    ringed[:21] += 40  # a cap 15° tall (21 rows of 256) brighter than the rest
    assert cap_discontinuity(ringed)["top"] > 10


def test_tone_drift_is_per_band_and_signed():
    frame = np.full((180, 360, 3), 100.0)
    mask = np.full((180, 360), 255, np.uint8)
    mask[60:120, 150:210] = 0           # the plate: the middle bands, centre
    frame[mask == 255] = 80             # generated content 20 levels darker
    bands = tone_drift(frame, mask)
    assert [b["drift"] for b in bands] == [None, None, pytest.approx(-20), pytest.approx(-20), None, None]


def test_flicker_counts_only_the_plate():
    mask = np.full((64, 128), 255, np.uint8)
    mask[20:40, 40:80] = 0
    frames = [np.full((64, 128, 3), 100.0) for _ in range(5)]
    for k, f in enumerate(frames):
        f[mask == 255] = 50 * (k % 2)   # the generated region flashes; the plate is steady

    def measure():
        meter = Flicker(mask)
        for frame in frames:
            meter.add(frame)
        return meter.value
    assert measure() == 0
    frames[2][20:40, 40:80] += 10
    assert measure() == pytest.approx(5.0)
