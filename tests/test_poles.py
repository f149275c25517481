"""Pole repair: a smeared, streaky cap comes out as a clean pole without a ring at the blend, a correct
panorama keeps its caps, and nothing outside the caps changes."""

import numpy as np
from test_sphere_metrics import periodic_panorama

from blender_equi360.geometry.poles import PoleRepair
from blender_equi360.jobs.canvas import CanvasSize
from blender_equi360.quality.sphere_metrics import cap_discontinuity, pole_spread


def smeared(pano: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """Radial streaks at both poles: every column its own colour near the pole, fading out."""
    rng = np.random.default_rng(seed)
    out = pano.astype(np.float64).copy()
    streaks = rng.uniform(-60, 60, (1, out.shape[1], 1))
    fade = np.linspace(1, 0, rows)[:, None, None]
    out[:rows] += streaks * fade
    out[-rows:] += streaks * fade[::-1]
    return out.clip(0, 255).astype(np.uint8)


def test_a_smeared_cap_is_repaired_without_a_ring():
    size = CanvasSize(512, 256)
    repair = PoleRepair(size)
    pano = periodic_panorama(512, 256).astype(np.uint8)
    bad = smeared(pano, rows=20)
    fixed = repair.apply(bad)
    before, after = pole_spread(bad), pole_spread(fixed)
    assert after["top"] < before["top"] / 5 and after["bottom"] < before["bottom"] / 5
    rings = cap_discontinuity(fixed, cap_deg=20.0)
    assert rings["top"] < 2 and rings["bottom"] < 2
    assert np.array_equal(fixed[repair.rows:-repair.rows], bad[repair.rows:-repair.rows])


def test_a_correct_panorama_keeps_its_caps():
    size = CanvasSize(512, 256)
    pano = periodic_panorama(512, 256).astype(np.uint8)
    fixed = PoleRepair(size).apply(pano)
    assert np.abs(fixed.astype(float) - pano).mean() < 1.0
    assert np.abs(fixed.astype(float) - pano).max() < 20
