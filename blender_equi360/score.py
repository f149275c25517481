"""``python -m blender_equi360 score OUT --source CLIP --job JOB_DIR``: how good a 360° output is.

- **Plate round trip**: each output frame is reprojected to the source camera (the placement recorded
  next to the job's reference; Catmull-Rom, so the measurement's own resampling costs little) and
  compared with the source frame through the same prefilter the reference used, inside the plate eroded
  by a margin: PSNR and SSIM.
- **Seam ratio**, **poles** (spread of the top and bottom rows, ring at the cap boundary), **tone drift**
  per latitude band, **flicker** inside the plate: see :mod:`.sphere_metrics`.
- **Window joins** (a clip made in several windows): the largest frame-to-frame change of the generated
  region across the windows' shared frames, relative to its usual change (:func:`.sphere_metrics.boundary_jump`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import sphere_metrics
from .errors import Equi360Error
from .finish import resize_nearest
from .job import job_path, load_job
from .metrics import luma, psnr, ssim
from .projection import CanvasSize, equirect_to_perspective, prefiltered_plate_size
from .reference import load_placement
from .video import decode_plates, probe, read_frames
from .windows import plan_windows

ERODE = 0.04  # of the plate's width, on each side: the feather band and the last bilinear pixels
# Per output: the seam on its worst frame; the plate's PSNR over its frames (the usual video PSNR).
GOALS = {"seam_ratio_max": 1.2, "plate_psnr_min_db": 40.0, "window_joins_max": 1.5}


def score(output, source, job_dir) -> dict:
    job_dir = Path(job_dir)
    job = load_job(job_dir)
    placement = load_placement(job_path(job_dir, job.reference))
    mask = next(read_frames(job_path(job_dir, job.mask), "gray"))
    info_out, info_src = probe(output), probe(source)
    count = min(info_out.frame_count, placement.source_frames)
    if count < 1:
        raise Equi360Error(f"{output}: no frames to score")
    if (info_out.width, info_out.height) != (mask.shape[1], mask.shape[0]):
        mask = resize_nearest(mask, info_out.width, info_out.height)
    # Compare at the plate density this output's canvas carries (the source prefiltered the same way).
    plate_w, plate_h = prefiltered_plate_size(placement.camera, placement.window,
                                              CanvasSize(info_out.width, info_out.height))
    margin = max(2, int(round(ERODE * plate_w)))
    inner = (slice(margin, plate_h - margin), slice(margin, plate_w - margin))

    psnrs, ssims, seams, spreads, rings, drifts = [], [], [], [], [], []
    flicker = sphere_metrics.Flicker(mask)
    generated_changes = sphere_metrics.FrameChanges(mask >= 128)
    plates = decode_plates(info_src, placement.picture, placement.crop, (plate_w, plate_h), placement.fps,
                           placement.start_s, count)
    for frame, (_, plate_bgra, _) in zip(read_frames(output), plates):
        back = equirect_to_perspective(frame, (plate_w, plate_h), placement.camera, placement.window, cubic=True)
        plate = plate_bgra[..., 2::-1]
        psnrs.append(psnr(back[inner], plate[inner]))
        ssims.append(ssim(back[inner], plate[inner]))
        y = luma(frame)  # once per frame: the sphere measures all work on luma
        seams.append(sphere_metrics.seam_ratio(y))
        spreads.append(sphere_metrics.pole_spread(y))
        rings.append(sphere_metrics.cap_discontinuity(y))
        drifts.append(sphere_metrics.tone_drift(y, mask))
        flicker.add(y)
        generated_changes.add(y)
    finite = [p for p in psnrs if math.isfinite(p)] or [99.0]
    report = {
        "output": str(output), "frames": len(psnrs),
        "plate": {"psnr_db_mean": float(np.mean(finite)), "psnr_db_min": float(min(finite)),
                  "ssim_mean": float(np.mean(ssims)), "ssim_min": float(min(ssims)), "eroded_px": margin},
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


def _mean_bands(per_frame: list[list[dict]]) -> list[dict]:
    out = []
    for b, band in enumerate(per_frame[0]):
        values = [frame[b]["drift"] for frame in per_frame if frame[b]["drift"] is not None]
        out.append({"lat_deg": band["lat_deg"], "drift": float(np.mean(values)) if values else None})
    return out


def format_report(report: dict) -> str:
    plate, seam, goals = report["plate"], report["seam_ratio"], report["goals"]
    lines = [f"{report['output']}: {report['frames']} frames",
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
