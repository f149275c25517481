#!/usr/bin/env python
"""The finish's speed (docs/BENCHMARKS.md): each stage per frame at 3840×1920 and 7680×3840, the delivery
encoder's presets against the plate goal, and a 3-window draft clip end to end with the finish following the
windows.

    .venv/bin/python bench/finish.py            # measure, print the tables
    .venv/bin/python bench/finish.py --write    # ... and update docs/BENCHMARKS.md

Inputs: the sample city (samples/make_city.py; 1280×536, HFOV 100°), its reference at the LoRA 1.0's
2560×1280, and as the generated frames the draft's fill (the stages' cost does not depend on what the picture
shows) or, for the encoder, whose cost does, the city's true panorama turning 2 pixels a frame.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numba  # noqa: E402

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference  # noqa: E402
from blender_equi360.geometry import kernels  # noqa: E402
from blender_equi360.geometry.poles import PoleRepair  # noqa: E402
from blender_equi360.jobs.delivery_settings import DEFAULT_CRF, DeliverySettings  # noqa: E402
from blender_equi360.jobs.job import Job, save_job  # noqa: E402
from blender_equi360.jobs.windows import plan_windows  # noqa: E402
from blender_equi360.media.video import (  # noqa: E402
    PlanarResizer,
    PlaybackVideoWriter,
    decode_plates,
    probe,
    read_frames,
    resize,
)
from blender_equi360.quality.score import score  # noqa: E402
from blender_equi360.stages import delivery as delivery_module  # noqa: E402
from blender_equi360.stages.finish import FEATHER_DEG, finish, plate_alpha, resize_equirect  # noqa: E402
from blender_equi360.stages.join import whole_clip  # noqa: E402
from blender_equi360.stages.plate import PlateSampler  # noqa: E402
from blender_equi360.stages.reference import load_placement  # noqa: E402
from blender_equi360.stages.tone import fit_window  # noqa: E402
from common import write_section  # noqa: E402

OUT = ROOT / "bench" / "out" / "finish"
DOC = ROOT / "docs" / "BENCHMARKS.md"
SAMPLES = ROOT / "samples" / "build"
CANVAS = CanvasSize(2560, 1280)
STAGE_FRAMES = 9
TIMED_PASSES = 5  # this VM's speed drifts between minutes: the median of five passes, and their range
SIZES = ("3840x1920", "7680x3840")
PRESETS = {"h264": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
           "hevc": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")}
PRESET_FRAMES = {"3840x1920": 25, "7680x3840": 9}
PLATE_GOAL_DB = 40.0
CLIP_FRAMES, CLIP_WINDOW, CLIP_OVERLAP = 65, 33, 9  # three windows: 0–32, 24–56, 48–64


def sample_job(frames: int) -> Path:
    """The city's reference at 2560×1280 over ``frames`` frames, with the draft's windows made."""
    if not (SAMPLES / "city.json").exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_city.py"), str(SAMPLES)], check=True)
    job_dir = OUT / f"city_{frames}"
    if not (job_dir / "reference.json").exists():
        job_dir.mkdir(parents=True, exist_ok=True)
        build_reference(SAMPLES / "city_flat.mp4", job_dir / "reference.mkv", job_dir / "mask.mkv",
                        ReferenceSettings(camera=Camera(100), size=CANVAS, frames=frames))
    return job_dir


def run_engine(job_dir: Path) -> tuple[float, list[dict], str]:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise SystemExit(f"the engine failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return time.monotonic() - started, [json.loads(line) for line in run.stdout.splitlines()], run.stderr


def generated_window(job_dir: Path) -> list[np.ndarray]:
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size="1920x960", audio=False))
    if not (job_dir / "result.mp4").exists():
        run_engine(job_dir)
    return list(read_frames(job_dir / "windows" / "window_0000.mkv"))


def stage_times(job_dir: Path, size: CanvasSize) -> dict[str, float]:
    """Median seconds per frame of each stage of the finish, each timed alone over STAGE_FRAMES frames."""
    generated = generated_window(job_dir)[:STAGE_FRAMES]
    reference = list(read_frames(job_dir / "reference.mkv"))[:STAGE_FRAMES]
    mask = next(read_frames(job_dir / "mask.mkv", "gray"))
    placement = load_placement(job_dir / "reference.mkv")
    setup = time.perf_counter()
    poles = PoleRepair(CANVAS)
    plate = PlateSampler(placement.camera, placement.window, size)
    alpha = plate_alpha(plate.mask, FEATHER_DEG / 360.0 * size.width)[plate.rows]
    setup = time.perf_counter() - setup
    plates = [bgra for _, bgra, _ in decode_plates(probe(placement.source), placement.picture, placement.crop,
                                                  plate.source_size, placement.fps, placement.start_s, STAGE_FRAMES)]
    fit_started = time.perf_counter()
    fit = fit_window(lambda: iter(generated), iter(reference), mask < 128)
    fit_s = (time.perf_counter() - fit_started) / len(generated)
    writer = PlaybackVideoWriter(OUT / "stages.mp4", size.width, size.height, Fraction(24))
    toned, upscale = np.empty_like(generated[0]), PlanarResizer()
    delivered = np.empty((size.height, size.width, 3), np.uint8)
    times: dict[str, list[float]] = {"tone": [], "poles": [], "upscale": [], "plate": [], "to_yuv": []}
    passes = 1 + TIMED_PASSES
    for frame, plate_bgra in zip(generated * passes, plates * passes):  # the first pass warms up
        marks = [time.perf_counter()]
        kernels.tone_and_drift(frame, fit.gain, fit.offset, fit.drift, fit.drift, np.float32(0), toned)
        marks.append(time.perf_counter())
        poles.apply(toned, out=toned)
        marks.append(time.perf_counter())
        planes = resize_equirect(toned, size.width, size.height, upscale)
        marks.append(time.perf_counter())
        plate.lay(planes, plate_bgra, alpha, delivered)
        marks.append(time.perf_counter())
        writer.convert(delivered)
        marks.append(time.perf_counter())
        for name, a, b in zip(times, marks, marks[1:]):
            times[name].append(b - a)
    writer.close()
    row = {name: statistics.median(values[len(generated):]) for name, values in times.items()}
    row["numpy_stages"] = sum(row.values())
    frames = len(generated)
    per_pass = [sum(statistics.median(values[k * frames: (k + 1) * frames]) for values in times.values())
                for k in range(1, passes)]
    row["pass_range"] = (min(per_pass), max(per_pass))
    row["fit"] = fit_s
    row["setup"] = setup
    return row


def detailed_frames(frames: int) -> list[np.ndarray]:
    """Generated frames with a model's detail and motion for the encoder: the city's true panorama at the
    model's canvas, turning 2 pixels a frame (the draft's smooth fill would flatter every preset)."""
    pano = resize(next(read_frames(SAMPLES / "city_pano.mkv")), CANVAS.width, CANVAS.height)
    return [np.roll(pano, 2 * k, axis=1) for k in range(frames)]


def encode_presets(job_dir: Path, size: CanvasSize) -> list[dict]:
    """Each preset of the size's encoder at its default CRF, on :func:`detailed_frames` finished: seconds per
    frame (encode only, the frames converted beforehand) and the delivered plate's PSNR (score, worst frame)."""
    frames = PRESET_FRAMES[str(size)]
    settings = DeliverySettings(size=str(size), audio=False)
    codec = settings.codec_name()
    generated = detailed_frames(frames)
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      output_frames=frames))
    mask = next(read_frames(job_dir / "mask.mkv", "gray"))
    placement = load_placement(job_dir / "reference.mkv")
    finished: list[np.ndarray] = []

    class Keep:  # the finish's frames kept, to encode them again with each preset
        def __init__(self, path, *args, **kwargs):
            Path(path).touch()

        def write(self, rgb):
            finished.append(rgb.copy())

        def close(self):
            pass
    real = delivery_module.PlaybackVideoWriter
    delivery_module.PlaybackVideoWriter = Keep
    try:
        finish(whole_clip(generated, list(read_frames(job_dir / "reference.mkv"))[:frames], mask < 128),
               placement.source, placement, mask, OUT / "kept.mp4", placement.frame_rate,
               settings=DeliverySettings(size=str(size), audio=False, spherical_metadata=False))
    finally:
        delivery_module.PlaybackVideoWriter = real
    rows = []
    for preset in PRESETS[codec]:
        out = OUT / f"{size}_{preset}.mp4"
        writer = PlaybackVideoWriter(out, size.width, size.height, placement.frame_rate, codec=codec, preset=preset,
                                     crf=DEFAULT_CRF[codec])
        converted = [writer.convert(f) for f in finished]
        started = time.perf_counter()
        for frame in converted:
            writer.encode(frame)
        writer.close()
        seconds = (time.perf_counter() - started) / frames
        plate = score(out, placement.source, job_dir)["plate"]
        rows.append({"codec": codec, "preset": preset, "s_per_frame": seconds, "psnr_min": plate["psnr_db_min"],
                     "mb_per_frame": out.stat().st_size / frames / 1e6})
        print(size, rows[-1], flush=True)
    return rows


def clip_end_to_end() -> dict:
    """The 3-window draft clip run by the engine: wall time; when each window was made and when the finish
    ended; then the same job run again with its windows kept (the finish alone)."""
    job_dir = sample_job(CLIP_FRAMES)
    windows = plan_windows(CLIP_FRAMES, CLIP_WINDOW, CLIP_OVERLAP)
    assert len(windows) == 3
    for name in ("windows", "windows.json", "result.mp4"):
        path = job_dir / name
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
        elif path.exists():
            path.unlink()
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      window_frames=CLIP_WINDOW, window_overlap=CLIP_OVERLAP))
    wall, events, stderr = run_engine(job_dir)
    made = [e for e in events if e["event"] == "log" and "done (frames" in e["message"]]
    finish_events = [e for e in events if e["event"] == "progress" and e["stage"] == "finish"]
    again, _, _ = run_engine(job_dir)  # the windows are kept: only the finish runs
    report = score(job_dir / "result.mp4", placement_source(job_dir), job_dir)
    return {"wall": wall, "windows": len(made), "finish_alone": again,
            "finished_before_last_window": _finished_before(events),
            "frames": CLIP_FRAMES, "finish_events": len(finish_events),
            "plate_flicker": report["plate_flicker"], "window_joins": report["window_joins"],
            **_log_seconds(stderr)}


def placement_source(job_dir: Path) -> Path:
    return load_placement(job_dir / "reference.mkv").source


def _finished_before(events: list[dict]) -> int:
    """Frames delivered before the last window was made."""
    count = 0
    for e in events:
        if e["event"] == "progress" and e["stage"] == "finish":
            count = e["step"]
        if e["event"] == "log" and "window 3/3 done" in e["message"]:
            return count
    return count


def _log_seconds(stderr: str) -> dict[str, float]:
    """Seconds from the run's first log line to each window's completion and to the last line (the log's
    clock has whole seconds)."""
    stamps = [(line[:8], line[9:]) for line in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for (h, m, s) in (t.split(":") for t, _ in stamps)]
    first = seconds[0]
    made = [s - first for s, (_, text) in zip(seconds, stamps) if "done (frames" in text]
    return {"windows_made": made[-1], "last_line": seconds[-1] - first}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, numba {numba.__version__} ({numba.threading_layer()} threads), " \
           f"PyAV {av.__version__}"


def tables(stages: dict, presets: dict, clip: dict) -> str:
    today = datetime.date.today().isoformat()
    lines = ["## The finish", "", "```", ".venv/bin/python bench/finish.py --write", "```", "",
             f"- **Machine:** {machine()}, no GPU. **Date:** {today}.",
             "- **Inputs:** the sample city's reference at 2560×1280 (HFOV 100°, plate 1280×536); generated frames: "
             "the draft's fill for the stages, the city's true panorama turning 2 px a frame for the encoder.", "",
             f"**Per frame, each stage timed alone** (median over {TIMED_PASSES} passes of {STAGE_FRAMES} frames "
             "after one to warm up; *range*: the passes' own totals; the numba loops use every core):", "",
             "| delivery | tone + drift | poles | upscale (swscale) | plate (pyramid, taps, blend) | RGB → YUV | "
             "**numpy stages** (goal ≤ 0.15 s) | range | window fit (per frame, once) | setup (once per job) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size, r in stages.items():
        low, high = r["pass_range"]
        lines.append(f"| {size.replace('x', '×')} | {1000 * r['tone']:.1f} ms | {1000 * r['poles']:.1f} ms | "
                     f"{1000 * r['upscale']:.1f} ms | {1000 * r['plate']:.1f} ms | {1000 * r['to_yuv']:.1f} ms | "
                     f"**{r['numpy_stages']:.3f} s** | {low:.3f}–{high:.3f} s | {1000 * r['fit']:.1f} ms | "
                     f"{r['setup']:.2f} s |")
    lines += ["", "**Delivery encode per preset** (the default CRF of each codec; encode only, the frames converted "
              "beforehand; plate PSNR of the worst frame by `score`):", "",
              "| delivery | codec | preset | encode per frame | plate PSNR min (≥ 40) | MB per frame |",
              "|---|---|---|---|---|---|"]
    for size, rows in presets.items():
        medium = next(r for r in rows if r["preset"] == "medium")
        keeps = [r for r in rows
                 if r["psnr_min"] >= PLATE_GOAL_DB and r["mb_per_frame"] <= 1.25 * medium["mb_per_frame"]]
        chosen = min(keeps, key=lambda r: r["s_per_frame"])["preset"] if keeps else None
        for r in rows:
            mark = " (**chosen**)" if r["preset"] == chosen else ""
            lines.append(f"| {size.replace('x', '×')} | {r['codec']} | {r['preset']}{mark} | "
                         f"{r['s_per_frame']:.3f} s | {r['psnr_min']:.3f} | {r['mb_per_frame']:.3f} |")
    lines += ["", "*Chosen*: the fastest preset whose plate stays ≥ 40 dB with files no larger than 1.25× the medium "
              "preset's (`PlaybackVideoWriter.PRESETS`); the ultrafast and superfast H.264 presets keep the plate "
              "but switch off the tools that keep files small. NVENC: not measured (no GPU lent to this run)."]
    lines += ["", f"**A 3-window draft clip end to end** ({clip['frames']} frames, windows of {CLIP_WINDOW} sharing "
              f"{CLIP_OVERLAP}, delivered at 3840×1920, `python -m engine run`):", "",
              "| whole run | windows made by | after the last window | frames delivered before it | the finish alone "
              "(windows kept, run again) | plate flicker | window joins |", "|---|---|---|---|---|---|---|",
              f"| {clip['wall']:.1f} s | {clip['windows_made']:.0f} s | {clip['wall'] - clip['windows_made']:.0f} s | "
              f"{clip['finished_before_last_window']} of {clip['frames']} | {clip['finish_alone']:.1f} s | "
              f"{clip['plate_flicker']:.2f} | {clip['window_joins']:.2f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    job_dir = sample_job(max(STAGE_FRAMES, *PRESET_FRAMES.values()))
    stages = {size: stage_times(job_dir, CanvasSize.parse(size)) for size in SIZES}
    print(stages, flush=True)
    presets = {size: encode_presets(job_dir, CanvasSize.parse(size)) for size in SIZES}
    clip = clip_end_to_end()
    text = tables(stages, presets, clip)
    print(text)
    if args.write:
        write_section(DOC, text, "Benchmarks")


if __name__ == "__main__":
    main()
