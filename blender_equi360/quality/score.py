"""``python -m blender_equi360 score OUT --source CLIP --job JOB_DIR``: how good a 360° output is.

- **Plate round trip**: each output frame is reprojected to the source camera (the placement recorded
  next to the job's reference; Catmull-Rom, so the measurement's own resampling costs little) and
  compared with the source frame inside the plate eroded by a margin: PSNR and SSIM. Each part of the
  plate is judged at the detail the output canvas can carry there (:class:`PlateRoundTrip`).
- **Seam ratio**, **poles** (spread of the top and bottom rows, ring at the cap boundary), **tone drift**
  per latitude band, **flicker** inside the plate: see :mod:`.sphere_metrics`.
- **Window joins** (a clip made in several windows): the largest frame-to-frame change of the generated
  region across the windows' shared frames, relative to its usual change (:func:`.sphere_metrics.boundary_jump`).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from ..geometry.projection import perspective_to_canvas, sample_equirect_cubic
from ..jobs.errors import Equi360Error
from ..jobs.job import job_path, load_job
from ..jobs.windows import plan_windows
from ..media.images import luma
from ..media.video import decode_plates, probe, read_frames, resize, resize_nearest
from ..stages.reference import Placement, load_placement
from . import sphere_metrics
from .metrics import SSIM_BORDER, ssim_map

ERODE = 0.04  # of the plate's width, on each side: the feather band and the last bilinear pixels
DENSITY_STEP = math.sqrt(2.0)  # the densities the plate is judged at: the source's, then √2 coarser each step
# Per output: the seam on its worst frame; the plate's PSNR over its frames (the usual video PSNR).
GOALS = {"seam_ratio_max": 1.2, "plate_psnr_min_db": 40.0, "window_joins_max": 1.5}


def score(output, source, job_dir) -> dict:
    job_dir = Path(job_dir)
    job = load_job(job_dir)
    placement = load_placement(job_path(job_dir, job.reference))
    mask = next(read_frames(job_path(job_dir, job.mask), "gray"))
    info_out, info_src = probe(output), probe(source)
    warnings = _check_belong_together(info_out, info_src, job, placement)
    count = min(info_out.frame_count, placement.source_frames)
    if count < 1:
        raise Equi360Error(f"{output}: no frames to score")
    if (info_out.width, info_out.height) != (mask.shape[1], mask.shape[0]):
        mask = resize_nearest(mask, info_out.width, info_out.height)
    round_trip = PlateRoundTrip(placement, info_out.width, info_out.height)

    psnrs, ssims, seams, spreads, rings, drifts = [], [], [], [], [], []
    flicker = sphere_metrics.Flicker(mask)
    generated_changes = sphere_metrics.FrameChanges(mask >= 128)
    plates = decode_plates(info_src, placement.picture, placement.crop, round_trip.source_size, placement.fps,
                           placement.start_s, count)
    for frame, (_, plate_bgra, _) in zip(read_frames(output), plates):
        plate_psnr, plate_ssim = round_trip.compare(frame, np.ascontiguousarray(plate_bgra[..., 2::-1]))
        psnrs.append(plate_psnr)
        ssims.append(plate_ssim)
        y = luma(frame)  # once per frame: the sphere measures all work on luma
        seams.append(sphere_metrics.seam_ratio(y))
        spreads.append(sphere_metrics.pole_spread(y))
        rings.append(sphere_metrics.cap_discontinuity(y))
        drifts.append(sphere_metrics.tone_drift(y, mask))
        flicker.add(y)
        generated_changes.add(y)
    finite = [p for p in psnrs if math.isfinite(p)] or [99.0]
    report = {
        "output": str(output), "frames": len(psnrs), "warnings": warnings,
        "plate": {"psnr_db_mean": float(np.mean(finite)), "psnr_db_min": float(min(finite)),
                  "ssim_mean": float(np.mean(ssims)), "ssim_min": float(min(ssims)),
                  "eroded_px": round_trip.margin, "judged_at": round_trip.shares()},
        "seam_ratio": {"mean": float(np.mean(seams)), "max": float(max(seams))},
        "poles": {side: {"row_spread": float(np.mean([s[side] for s in spreads])),
                         "cap_ring": float(np.mean([r[side] for r in rings]))} for side in ("top", "bottom")},
        "tone_drift": _mean_bands(drifts),
        "plate_flicker": flicker.value,
    }
    windows = plan_windows(len(psnrs), job.window_frames, job.window_overlap)
    if len(windows) > 1:
        report["window_joins"] = sphere_metrics.boundary_jump(generated_changes.changes, windows)
    report["goals"] = {"seam_ratio_max": {"goal": GOALS["seam_ratio_max"], "met": report["seam_ratio"]["max"]
                                          <= GOALS["seam_ratio_max"]},
                       "plate_psnr_min_db": {"goal": GOALS["plate_psnr_min_db"],
                                             "met": report["plate"]["psnr_db_mean"] >= GOALS["plate_psnr_min_db"]}}
    if "window_joins" in report:
        report["goals"]["window_joins_max"] = {"goal": GOALS["window_joins_max"],
                                               "met": report["window_joins"] <= GOALS["window_joins_max"]}
    return report


class PlateRoundTrip:
    """The plate round trip of one output size: the output reprojected onto the source's own pixel grid,
    compared with the source where the canvas carries the source's detail, and elsewhere with both low-passed
    alike to what the canvas carries there.

    A perspective picture packs more pixels per degree towards its sides, so an output canvas can carry
    all of the source's detail in the middle of the plate and only part of it at the sides (a 956-px plate
    at 100° on 3840×1920: 1.5× the source's density in the middle, 0.6× at the sides). Each pixel of the
    plate is judged at the finest of the densities source, source/√2, source/2, … that the canvas holds
    there (its pixels no farther apart than the density's), and the output's reprojection and the source
    go through the same area filter to that density (swscale's, the reference's prefilter): detail the
    canvas cannot carry is left out of both, what it can carry must come back. Each pixel counts by the
    area of the source it stands for."""

    def __init__(self, placement: Placement, width: int, height: int):
        camera, window = placement.camera, placement.window
        self.source_size = (max(2, round(window.width)), max(2, round(window.height)))
        native_w, native_h = self.source_size
        self.margin = max(2, int(round(ERODE * native_w)))
        self.x, self.y = perspective_to_canvas(self.source_size, camera, window, width, height)
        self.levels = []  # (k, (w, h), pick: (h, w) bool, source pixels per pixel)
        for k in itertools.count():
            size = (max(16, round(native_w / DENSITY_STEP ** k)), max(16, round(native_h / DENSITY_STEP ** k)))
            x, y = (self.x, self.y) if k == 0 else perspective_to_canvas(size, camera, window, width, height)
            pitch = _canvas_pitch(x, y, width) * native_w / size[0]  # source pixels between canvas pixels
            level = np.ceil(np.log(np.maximum(pitch, 1.0)) / math.log(DENSITY_STEP) - 1e-6)
            margin = max(2, int(round(ERODE * size[0])))
            inner = np.zeros(size[::-1], bool)
            inner[margin:-margin, margin:-margin] = True
            pick = inner & (level == k)
            if pick.any():
                self.levels.append((k, size, pick, native_w * native_h / (size[0] * size[1])))
            if level[inner].max() <= k or min(size) == 16:
                break

    def compare(self, frame: np.ndarray, source_rgb: np.ndarray) -> tuple[float, float]:
        """(PSNR, SSIM) of one output frame against the source frame's window (RGB, at the source's size)."""
        back = sample_equirect_cubic(frame, self.x, self.y)
        back_8bit = np.clip(back + 0.5, 0, 255).astype(np.uint8)
        squared = count = ssim_total = ssim_count = 0.0
        for k, (w, h), pick, area in self.levels:
            output = back if k == 0 else resize(back_8bit, w, h, "BILINEAR").astype(np.float32)
            source = source_rgb.astype(np.float32) if k == 0 else resize(source_rgb, w, h, "BILINEAR")
            diff = output[pick] - source[pick]
            squared += float(np.sum(diff * diff)) * area
            count += diff.size * area
            away = pick.copy()
            away[:SSIM_BORDER], away[-SSIM_BORDER:], away[:, :SSIM_BORDER], away[:, -SSIM_BORDER:] = (False,) * 4
            ssim_total += float(ssim_map(output, source)[away].sum()) * area
            ssim_count += np.count_nonzero(away) * area
        mse = squared / count
        return (math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)), ssim_total / max(ssim_count, 1)

    def shares(self) -> list[dict]:
        """How much of the plate is judged at which density (1 = the source's own)."""
        areas = [(DENSITY_STEP ** -k, np.count_nonzero(pick) * area) for k, _, pick, area in self.levels]
        total = sum(a for _, a in areas)
        return [{"density": round(d, 3), "share": round(a / total, 3)} for d, a in areas]


def _canvas_pitch(x: np.ndarray, y: np.ndarray, width: int) -> np.ndarray:
    """How many grid pixels apart neighbouring canvas pixels are, at each pixel of a grid whose pixels land
    at canvas positions (x, y): along the grid direction in which the canvas is coarser."""
    dx_u = (np.gradient(x, axis=1) + width / 2) % width - width / 2  # across the seam
    dx_v = (np.gradient(x, axis=0) + width / 2) % width - width / 2
    canvas_per_u = np.hypot(dx_u, np.gradient(y, axis=1))
    canvas_per_v = np.hypot(dx_v, np.gradient(y, axis=0))
    return 1.0 / np.maximum(np.minimum(canvas_per_u, canvas_per_v), 1e-9)


def _check_belong_together(out, source, job, placement) -> list[str]:
    """A result, a clip and a job scored together must belong together: refuses what cannot (another
    frame rate or length than the job delivers, a clip of another size than the reference was built from);
    warns where they may (the clip is not the file the reference names)."""
    if abs(out.width - 2 * out.height) > 1:
        raise Equi360Error(f"{out.path}: {out.width}×{out.height} is not an equirect video (2:1)")
    if abs(float(out.fps) - placement.fps) > 1e-3:
        raise Equi360Error(f"{out.path} runs at {float(out.fps):g} fps but its job's reference at {placement.fps:g}: "
                           "score a job's own result")
    expected = min(placement.source_frames, job.output_frames or placement.source_frames)
    if abs(out.frame_count - expected) > 1:  # a container may state one frame more or less
        raise Equi360Error(f"{out.path} has {out.frame_count} frames but its job delivers {expected}: score a job's "
                           "own result")
    if placement.source_size and (source.width, source.height) != placement.source_size:
        raise Equi360Error(f"{source.path} is {source.width}×{source.height} but the reference was built from a "
                           f"{placement.source_size[0]}×{placement.source_size[1]} clip: give the job's own source")
    warnings = []
    if source.path.resolve() != placement.source.resolve():
        warnings.append(f"the source given, {source.path}, is not the file the reference was built from "
                        f"({placement.source}): scored as if it were")
    return warnings


def _mean_bands(per_frame: list[list[dict]]) -> list[dict]:
    out = []
    for b, band in enumerate(per_frame[0]):
        values = [frame[b]["drift"] for frame in per_frame if frame[b]["drift"] is not None]
        out.append({"lat_deg": band["lat_deg"], "drift": float(np.mean(values)) if values else None})
    return out


def format_report(report: dict) -> str:
    plate, seam, goals = report["plate"], report["seam_ratio"], report["goals"]
    lines = [f"{report['output']}: {report['frames']} frames", *(f"  warning: {w}" for w in report["warnings"]),
             f"  plate round trip  PSNR {plate['psnr_db_mean']:.2f} dB mean, {plate['psnr_db_min']:.2f} min "
             f"(goal ≥ {goals['plate_psnr_min_db']['goal']:g}: {_met(goals['plate_psnr_min_db'])}); "
             f"SSIM {plate['ssim_mean']:.4f} mean, {plate['ssim_min']:.4f} min",
             f"  seam ratio        {seam['mean']:.2f} mean, {seam['max']:.2f} max "
             f"(goal ≤ {goals['seam_ratio_max']['goal']:g}: {_met(goals['seam_ratio_max'])}; 1.0 = seamless)"]
    for side in ("top", "bottom"):
        pole = report["poles"][side]
        lines.append(f"  {side:6} pole        row spread {pole['row_spread']:.2f} levels, cap ring "
                     f"{pole['cap_ring']:.2f} (1.0 = no ring)")
    drift = ", ".join(f"{b['lat_deg'][1]:+.0f}°: " + ("—" if b["drift"] is None else f"{b['drift']:+.1f}")
                      for b in report["tone_drift"])
    lines += [f"  tone drift        {drift} (generated − plate, levels, per band from its top latitude)",
              f"  plate flicker     {report['plate_flicker']:.2f} levels/frame"]
    if "window_joins" in report:
        joins = goals["window_joins_max"]
        lines.append(f"  window joins      {report['window_joins']:.2f} (goal ≤ {joins['goal']:g}: {_met(joins)}; "
                     "1.0 = as smooth as inside a window)")
    return "\n".join(lines)


def _met(goal: dict) -> str:
    return "met" if goal["met"] else "NOT met"
