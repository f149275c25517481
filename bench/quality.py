#!/usr/bin/env python
"""Quality of the delivered 360° video on the sample city, measured with ``score`` (docs/QUALITY.md).

    .venv/bin/python bench/quality.py            # measure, print the table
    .venv/bin/python bench/quality.py --write    # ... and update docs/QUALITY.md
    .venv/bin/python bench/quality.py --plates --write   # the plate round trip across source and delivery sizes

The procedural city (samples/make_city.py) gives the flat clip and the true panorama from the same
camera position, so besides ``score``'s measures the generated region can be compared with the truth.
Each backend available here runs the same job through ``python -m engine run``: the draft always; LTX-2.3
when this machine has CUDA and the model files are named in EQUI360_MODELS (a JSON object like
job.json's ``models``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference  # noqa: E402
from blender_equi360.jobs.delivery_settings import DeliverySettings  # noqa: E402
from blender_equi360.jobs.job import Job, ModelFiles, save_job  # noqa: E402
from blender_equi360.media.video import LosslessVideoWriter, read_frames, resize  # noqa: E402
from blender_equi360.quality.metrics import psnr  # noqa: E402
from blender_equi360.quality.score import format_report, score  # noqa: E402
from blender_equi360.stages import delivery as delivery_module  # noqa: E402
from blender_equi360.stages.finish import finish  # noqa: E402
from blender_equi360.stages.join import whole_clip  # noqa: E402
from blender_equi360.stages.reference import load_placement  # noqa: E402
from common import write_section  # noqa: E402

OUT = ROOT / "bench" / "out" / "quality"
DOC = ROOT / "docs" / "QUALITY.md"
REFERENCE_CANVAS = CanvasSize(1920, 960)  # the figures in QUALITY.md were measured on references this size
SAMPLES = ROOT / "samples" / "build"
FLAT_NAME = "city_flat.mp4"
DELIVERY = "3840x1920"


def sample() -> tuple[Path, Path, dict]:
    if not (SAMPLES / "city.json").exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_city.py"), str(SAMPLES)], check=True)
    return SAMPLES / FLAT_NAME, SAMPLES / "city_pano.mkv", json.loads((SAMPLES / "city.json").read_text())


def run_job(name: str, clip: Path, hfov: float, backend: str, models: dict | None) -> Path:
    job_dir = OUT / name
    job_dir.mkdir(parents=True, exist_ok=True)
    if not (job_dir / "reference.json").exists():
        build_reference(clip, job_dir / "reference.mkv", job_dir / "mask.mkv",
                        ReferenceSettings(camera=Camera(hfov), size=REFERENCE_CANVAS))
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend=backend,
                                      delivery_size=DELIVERY,
                          models=ModelFiles(**(models or {}))))
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name}: the engine failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return job_dir


def truth_psnr(output: Path, truth: Path, mask_path: Path) -> float:
    """PSNR of the generated region of frame 0 against the true panorama (at the panorama's size)."""
    frame = next(read_frames(output))
    pano = next(read_frames(truth))
    frame = resize(frame, pano.shape[1], pano.shape[0])
    mask = next(read_frames(mask_path, "gray"))
    generated = resize(np.repeat(mask[..., None], 3, axis=2), pano.shape[1], pano.shape[0])[..., 0] >= 128
    return psnr(frame, pano, where=generated)


# Source sizes (the city rendered at each) × delivery sizes. 1066×446 at 3840×1920 is a source at the
# canvas's own density (the plate spans 1067 canvas pixels): what it scores is score's ceiling.
PLATE_CASES = [("956x400", "1024x512"), ("956x400", "1920x960"), ("956x400", "3840x1920"), ("1066x446", "3840x1920"),
               ("1280x536", "3840x1920"), ("1280x536", "5760x2880"), ("1920x804", "3840x1920"),
               ("1920x804", "7680x3840")]
PLATE_FRAMES = 3


class _RgbLossless(LosslessVideoWriter):
    """The delivery's writer swapped for a lossless RGB one: the finish's own plate, before any encode."""

    def __init__(self, path, width, height, fps, audio=None, **_):
        super().__init__(path, width, height, fps)

    def write(self, rgb: np.ndarray) -> None:
        self.write_rgb(rgb)


def plate_case(flat: str, delivery: str) -> dict:
    """The city rendered at ``flat``, delivered at ``delivery`` from its own reference (the generated
    region is the reference's black: only the plate is judged): plate PSNR (min over the frames) stored
    losslessly in RGB, encoded at CRF 0 (4:2:0) and as delivered."""
    clip_dir = OUT / "plates" / f"city_{flat}"
    if not (clip_dir / "city.json").exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_city.py"), str(clip_dir), "--flat-size", flat,
                        "--frames", str(PLATE_FRAMES), "--pano-size", "512x256"], check=True, capture_output=True)
    clip = clip_dir / FLAT_NAME
    job_dir = OUT / "plates" / f"{flat}_to_{delivery}"
    job_dir.mkdir(parents=True, exist_ok=True)
    build_reference(clip, job_dir / "reference.mkv", job_dir / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=REFERENCE_CANVAS,
                                      frames=1 + 8 * ((PLATE_FRAMES + 6) // 8)))
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size=delivery))
    placement = load_placement(job_dir / "reference.mkv")
    mask = next(read_frames(job_dir / "mask.mkv", "gray"))
    generated = list(read_frames(job_dir / "reference.mkv"))[:PLATE_FRAMES]
    row = {}
    for label, crf, writer in (("rgb", 0, _RgbLossless), ("crf0", 0, None), ("delivered", None, None)):
        out = job_dir / f"{label}.{'mkv' if writer else 'mp4'}"
        real = delivery_module.PlaybackVideoWriter
        delivery_module.PlaybackVideoWriter = writer or real
        try:
            finish(whole_clip(generated, generated, mask < 128), clip, placement, mask, out, placement.frame_rate,
                   settings=DeliverySettings(size=delivery, crf=crf, audio=False, spherical_metadata=writer is None))
        finally:
            delivery_module.PlaybackVideoWriter = real
        report = score(out, clip, job_dir)["plate"]
        row[label] = report["psnr_db_min"]
        row["judged_at"] = report["judged_at"]
    print(flat, "→", delivery, row, flush=True)
    return row


def plates_table(rows) -> str:
    lines = ["## The plate across source and delivery sizes", "",
             f"`.venv/bin/python bench/quality.py --plates --write` — {platform.machine()}, {os.cpu_count()} cores, "
             f"{datetime.date.today().isoformat()}: `samples/make_city.py`'s city rendered at each source size "
             f"({PLATE_FRAMES} frames, HFOV 100°), its reference at 1920×960, delivered at each size with the "
             "reference's black as the generated region; plate PSNR of the worst frame. *Judged at*: the share of "
             "the plate judged at the source's own density (1) and at each step of √2 coarser (score's "
             "`judged_at`).", "",
             "| source | delivery | finish alone (RGB, lossless) | encoded at CRF 0 (4:2:0) | delivered (default CRF) "
             "| judged at |", "|---|---|---|---|---|---|"]
    for (flat, delivery), row in rows:
        judged = ", ".join(f"{j['density']:g}: {100 * j['share']:.0f} %" for j in row["judged_at"])
        lines.append(f"| {flat.replace('x', '×')} | {delivery.replace('x', '×')} | {row['rgb']:.2f} | "
                     f"{row['crf0']:.2f} | {row['delivered']:.2f} | {judged} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--plates", action="store_true", help="the plate round trip across source and delivery sizes")
    args = parser.parse_args()
    if args.plates:
        text = plates_table([(case, plate_case(*case)) for case in PLATE_CASES])
        print(text)
        if args.write:
            write_section(DOC, text, "Quality")
        return
    clip, truth, city = sample()
    backends = [("draft", None)]
    models = os.environ.get("EQUI360_MODELS")
    if models:
        backends.append(("ltx", json.loads(models)))
    rows = []
    for backend, model_files in backends:
        job_dir = run_job(backend, clip, city["camera"]["hfov_deg"], backend, model_files)
        output = job_dir / "result.mp4"
        report = score(output, clip, job_dir)
        report["truth_psnr_db"] = truth_psnr(output, truth, job_dir / "mask.mkv")
        print(format_report(report))
        rows.append((backend, report))
    text = table(rows)
    print(text)
    if args.write:
        write_section(DOC, text, "Quality")


def table(rows) -> str:
    lines = ["## Sample city", "",
             f"`.venv/bin/python bench/quality.py --write` — {platform.machine()}, {os.cpu_count()} cores, no GPU"
             f"{'' if len(rows) == 1 else ' (LTX on CUDA)'}, "
             f"{datetime.date.today().isoformat()}: `samples/make_city.py`'s clip (1280×536, 121 frames, HFOV "
             f"100°), reference 1920×960, delivered {DELIVERY}.", "",
             "| backend | plate PSNR min (≥ 40) | plate SSIM min | seam ratio max (≤ 1.2) "
             "| pole row spread top / bottom | "
             "cap ring top / bottom | tone drift +30°…0° band | plate flicker | generated vs truth PSNR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for backend, r in rows:
        p, poles = r["plate"], r["poles"]
        drift = " / ".join("—" if b["drift"] is None else f"{b['drift']:+.1f}" for b in r["tone_drift"][2:4])
        lines.append(f"| {backend} | {p['psnr_db_min']:.2f} | {p['ssim_min']:.4f} | {r['seam_ratio']['max']:.2f} | "
                     f"{poles['top']['row_spread']:.2f} / {poles['bottom']['row_spread']:.2f} | "
                     f"{poles['top']['cap_ring']:.2f} / {poles['bottom']['cap_ring']:.2f} | {drift} | "
                     f"{r['plate_flicker']:.2f} | {r['truth_psnr_db']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
