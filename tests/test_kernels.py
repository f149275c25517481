"""The finish's compiled loops (blender_equi360/geometry/kernels.py) give the very bytes of the array formulas
they replace. The formulas are kept here, as written before the loops were compiled, and each public stage
that now runs a kernel (tone and drift, pole repair, the plate's taps, the plate's blend) is compared with
them on real frames: any change of precision, order or rounding shows as a differing byte."""

import numpy as np
import pytest

from blender_equi360.geometry import kernels
from blender_equi360.geometry.camera import Camera
from blender_equi360.geometry.poles import BLEND_DEG, CAP_DEG, PoleRepair
from blender_equi360.geometry.projection import PlateCrop, box_blur, equirect_to_perspective
from blender_equi360.jobs.canvas import CanvasSize
from blender_equi360.media.images import luma
from blender_equi360.stages.plate import PlateSampler
from blender_equi360.stages.tone import DRIFT_GRID, Tone, _cells, fit_drift


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A frame with detail at every scale and values reaching 0 and 255 (so clipping is exercised)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 128 + 140 * np.sin(x / 17.0)[..., None] * np.cos(y / 11.0)[..., None] * np.array([1.0, 0.8, -0.9])
    return np.clip(smooth + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


# The formulas, as the finish wrote them with numpy arrays.

def tone_and_drift_formula(frame, tone: Tone, drift):
    toned = np.clip(frame.astype(np.float32) * tone.gain.astype(np.float32) + tone.offset.astype(np.float32), 0, 255)
    return np.clip(toned * drift[..., None] + 0.5, 0, 255).astype(np.uint8)


def pole_repair_formula(repair: PoleRepair, frame):
    out = frame.astype(np.float32)
    clean = repair.clean[..., None]
    weight = repair.weight[:, None, None]
    for side, camera in repair.cameras.items():
        view = equirect_to_perspective(frame, (repair.view_px, repair.view_px), camera)
        blurred = box_blur(box_blur(view, repair.blur_radius), repair.blur_radius)
        cleaned = view * (1 - clean) + blurred * clean
        bgra = np.zeros((repair.view_px, repair.view_px, 4), np.uint8)
        bgra[..., :3] = np.clip(cleaned[..., ::-1] + 0.5, 0, 255).astype(np.uint8)
        projected = repair.mappings[side].project(bgra)[..., 2::-1].astype(np.float32)
        rows = slice(0, repair.rows) if side == "top" else slice(repair.size.height - repair.rows, None)
        w = weight if side == "top" else weight[::-1]
        out[rows] = out[rows] * (1 - w) + projected[rows] * w
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def taps_formula(taps, pyramid, band):
    total = pyramid[taps.index[:, 0]] * taps.weight[:, 0][:, None]
    for index, weight in zip(taps.index.T[1:], taps.weight.T[1:]):
        total += pyramid[index] * weight[:, None]
    band[taps.dst] += total


def blend_formula(canvas, rows, plate, alpha):  # the finish's blend of the plate into the canvas
    band = canvas[rows].astype(np.float32)
    canvas[rows] = np.clip(band + (plate - band) * alpha[..., None] + 0.5, 0, 255)


def test_tone_and_drift_match_the_formula_and_mix_two_fields():
    frame = textured(96, 192)
    tone = Tone(np.array([1.37, 0.91, 1.02]), np.array([-7.3, 12.6, 0.4]))
    drift = np.random.default_rng(1).uniform(0.8, 1.25, (96, 192))
    out = np.empty_like(frame)
    kernels.tone_and_drift(frame, tone.gain.astype(np.float32), tone.offset.astype(np.float32), drift,
                           np.full_like(drift, 7.0), np.float32(0), out)
    assert np.array_equal(out, tone_and_drift_formula(frame, tone, drift))
    other = np.random.default_rng(2).uniform(0.8, 1.25, (96, 192))
    mixed = drift * 0.75 + other * 0.25
    kernels.tone_and_drift(frame, tone.gain.astype(np.float32), tone.offset.astype(np.float32), drift, other,
                           np.float32(0.25), out)
    assert np.array_equal(out, tone_and_drift_formula(frame, tone, mixed))


def test_the_drift_cells_are_the_mean_luma_of_the_toned_frames():
    frames = [textured(128, 256, seed) for seed in range(3)]
    tone = Tone(np.array([1.2, 0.9, 1.1]), np.array([5.0, -3.0, 0.0]))
    total = np.zeros(DRIFT_GRID)
    for frame in frames:
        kernels.toned_luma_cells(frame, tone.gain.astype(np.float32), tone.offset.astype(np.float32), *DRIFT_GRID,
                                 total)
    expected = sum(_cells(luma(tone.apply(f)), *DRIFT_GRID) for f in frames)
    assert np.abs(total - expected).max() < 1e-3  # float32 sums in another order: far below a level
    known = np.zeros((128, 256), bool)
    known[40:90, 100:160] = True
    assert fit_drift(frames, tone, known).shape == DRIFT_GRID


@pytest.mark.parametrize("size", ["512x256", "1920x960"])
def test_pole_repair_matches_the_formula(size):
    size = CanvasSize.parse(size)
    repair = PoleRepair(size)
    frame = textured(size.height, size.width, seed=3)
    fixed = repair.apply(frame)
    assert np.array_equal(fixed, pole_repair_formula(repair, frame))
    in_place = frame.copy()
    assert repair.apply(in_place, out=in_place) is in_place and np.array_equal(in_place, fixed)
    middle = slice(repair.rows, size.height - repair.rows)
    assert np.array_equal(fixed[middle], frame[middle])  # only the caps change
    assert (CAP_DEG, BLEND_DEG) == (20.0, 8.0)


def test_the_plate_taps_and_blend_match_the_formulas():
    size = CanvasSize(1536, 768)
    camera = Camera(100.0, yaw_deg=20.0, pitch_deg=10.0)
    sampler = PlateSampler(camera, PlateCrop.whole(640, 268), size)
    plate = np.dstack([textured(268, 640, seed=4), np.zeros((268, 640, 1), np.uint8)])
    band = sampler.project(plate)
    expected = np.zeros_like(band).reshape(-1, 3)
    pyramid = sampler._pyramid
    for taps in (sampler._enlarge, sampler._reduce):
        if len(taps.dst):
            taps_formula(taps, pyramid, expected)
    assert len(sampler._enlarge.dst) and len(sampler._reduce.dst)  # both ways of sampling are exercised
    assert np.array_equal(band.reshape(-1, 3), expected)

    canvas = textured(size.height, size.width, seed=5)
    alpha = np.random.default_rng(6).uniform(0, 1, band.shape[:2]).astype(np.float32)
    alpha[:, ::3] = 0  # the loop skips the plate there: the formula must still hold
    by_formula = canvas.copy()
    blend_formula(by_formula, sampler.rows, band, alpha)
    laid = np.empty_like(canvas)
    planes = [np.pad(canvas[..., c], ((0, 0), (3, 5)))[:, 3:-5] for c in range(3)]  # views, as swscale's are
    sampler.lay(planes, plate, alpha, laid)
    assert np.array_equal(laid, by_formula)


def draft_fill_formula(reference_rgb, mask_gray, scale=4):
    """The draft's fill as array formulas (engine/draft.py before its full-size steps were compiled)."""
    from engine.draft import _down, _up, extend_to_sphere, push_pull_fill
    known = 1.0 - mask_gray.astype(np.float32) / 255.0
    colour, weight = reference_rgb.astype(np.float32) * known[..., None], known
    for _ in range(int(np.log2(scale))):
        colour, weight = _down(colour), _down(weight)
    inside = weight >= 0.5 * scale * scale
    fill = extend_to_sphere(colour / np.maximum(weight, 1e-6)[..., None], inside)
    fill = push_pull_fill(fill, np.full(inside.shape, 0.05, np.float32)).astype(np.float32)
    while fill.shape[0] < reference_rgb.shape[0]:
        fill = _up(fill, (fill.shape[0] * 2, fill.shape[1] * 2))
    out = known[..., None] * reference_rgb + (1.0 - known[..., None]) * fill
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_draft_fill_matches_its_formula(seed):
    from engine.draft import fill_frame
    rng = np.random.default_rng(seed)
    reference = textured(128, 256, seed)
    mask = np.full((128, 256), 255, np.uint8)
    mask[40:90, 80:170] = 0
    mask[40:90, 76:80] = rng.integers(0, 255, (50, 4))  # a feathered edge: weights between 0 and 1
    assert np.array_equal(fill_frame(reference, mask), draft_fill_formula(reference, mask))
