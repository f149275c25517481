#!/usr/bin/env python
"""Quality of the delivered 360° video on the sample city, measured with ``score`` (docs/QUALITY.md).

    .venv/bin/python bench/quality.py            # measure, print the table
    .venv/bin/python bench/quality.py --write    # ... and update docs/QUALITY.md

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
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_equi360 import Camera, ReferenceSettings, build_reference  # noqa: E402
from blender_equi360.video import resize  # noqa: E402
from blender_equi360.job import Job, ModelFiles, save_job  # noqa: E402
from blender_equi360.metrics import psnr  # noqa: E402
from blender_equi360.score import format_report, score  # noqa: E402
from blender_equi360.video import read_frames  # noqa: E402

OUT = ROOT / "bench" / "out" / "quality"
DOC = ROOT / "docs" / "QUALITY.md"
SAMPLES = ROOT / "samples" / "build"
DELIVERY = "3840x1920"


def sample() -> tuple[Path, Path, dict]:
    if not (SAMPLES / "city.json").exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_city.py"), str(SAMPLES)], check=True)
    return SAMPLES / "city_flat.mp4", SAMPLES / "city_pano.mkv", json.loads((SAMPLES / "city.json").read_text())


def run_job(name: str, clip: Path, hfov: float, backend: str, models: dict | None) -> Path:
    job_dir = OUT / name
    job_dir.mkdir(parents=True, exist_ok=True)
    if not (job_dir / "reference.json").exists():
        build_reference(clip, job_dir / "reference.mkv", job_dir / "mask.mkv", ReferenceSettings(camera=Camera(hfov)))
    save_job(job_dir, Job(reference="reference.mkv", mask="mask.mkv", backend=backend, delivery_size=DELIVERY,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
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
        doc = DOC.read_text() if DOC.exists() else "# Quality\n\n"
        pattern = re.compile(r"^## Sample city\n.*?(?=^## |\Z)", re.S | re.M)
        doc = pattern.sub(lambda _: text + "\n", doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text
        DOC.write_text(doc)


def table(rows) -> str:
    lines = ["## Sample city", "",
             f"`.venv/bin/python bench/quality.py --write` — {platform.machine()}, {os.cpu_count()} cores, no GPU"
             f"{'' if len(rows) == 1 else ' (LTX on CUDA)'}, "
             f"{datetime.date.today().isoformat()}: `samples/make_city.py`'s clip (1280×536, 121 frames, HFOV "
             f"100°), reference 1920×960, delivered {DELIVERY}.", "",
             "| backend | plate PSNR min (≥ 40) | plate SSIM min | seam ratio max (≤ 1.2) | pole row spread top / bottom | "
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
