#!/usr/bin/env python
"""Benchmark: memory stays flat with clip length — the reference of a 10-minute 1080p clip, and the
engine making and delivering a long clip window by window.

    .venv/bin/python bench/long_clip.py            # measure, print the tables
    .venv/bin/python bench/long_clip.py --write    # ... and update docs/BENCHMARKS.md

Synthetic 1920×1080 H.264 clips at 24 fps (a moving, detailed picture; made once, cached in
bench/out/long/) of 30 s, 2 min and 10 min. Each reference is built in a fresh process, which reports its
own peak RSS (ru_maxrss, VmHWM as a cross-check) and its time: if the builder streams, the 10-minute peak
is the 30-second peak. The engine runs (draft backend: the window, assembly and delivery machinery
without a GPU; a 512×256 canvas delivered at 1024×512, to keep it minutes on 2 cores) are measured the
same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import replace_section  # noqa: E402

OUT = ROOT / "bench" / "out" / "long"
DOC = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Long clips: flat memory"
FPS, WIDTH, HEIGHT = 24, 1920, 1080
LENGTHS_S = (30, 600)
ENGINE_LENGTHS_S = (30, 120)
ENGINE_SECTION = "## Long clips: the engine, window by window"
MB = 2**20


def make_clip(seconds: int) -> Path:
    """A detailed picture panning and changing, encoded fast: what matters is decoding a long 1080p file."""
    import av
    path = OUT / f"clip_{WIDTH}x{HEIGHT}_{seconds}s.mp4"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH + 4 * FPS].astype(np.float32)
    base = np.stack([128 + 90 * np.sin(x / 17) * np.cos(y / 23), 128 + 90 * np.sin((x + y) / 29),
                     128 + 90 * np.cos(x / 41 - y / 13)], axis=-1).clip(0, 255).astype(np.uint8)
    tmp = path.with_name(path.name + ".partial.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for k in range(seconds * FPS):
            shift = k % (4 * FPS)
            frame = np.ascontiguousarray(base[:, shift:shift + WIDTH])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def worker(clip: str) -> None:
    from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
    out = OUT / (Path(clip).stem + "_reference.mkv")
    started = time.monotonic()
    result = build_reference(clip, out, settings=ReferenceSettings(camera=Camera(100), size=CanvasSize(1920, 960),
                                                                   frames=None))
    seconds = time.monotonic() - started
    hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"frames": result.frames_written, "seconds": seconds, "bytes": out.stat().st_size,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "hwm": hwm}))
    out.unlink()
    result.mask.unlink()


def engine_worker(clip: str) -> None:
    """A whole job through the engine (draft), in a child process whose peak RSS is reported."""
    import shutil

    from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
    from blender_equi360.jobs.job import Job, save_job
    job_dir = OUT / (Path(clip).stem + "_job")
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir()
    build_reference(clip, job_dir / "reference.mkv", job_dir / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(512, 256), frames=None))
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size="1024x512"))
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, capture_output=True,
                         text=True)
    seconds = time.monotonic() - started
    done = json.loads(run.stdout.strip().splitlines()[-1])
    assert done["event"] == "done", done
    windows = len(json.loads((job_dir / "windows.json").read_text())["windows"])
    from blender_equi360.media.video import probe
    print(json.dumps({"frames": probe(done["outputs"]["video"]).frame_count, "windows": windows,
                      "seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                      "window_bytes": sum(p.stat().st_size for p in (job_dir / "windows").iterdir())}))
    shutil.rmtree(job_dir)


def measure(clip: Path, worker_flag: str = "--worker") -> dict:
    run = subprocess.run([sys.executable, __file__, worker_flag, str(clip)], capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    lines = [SECTION, "",
             f"`.venv/bin/python bench/long_clip.py --write` — {platform.machine()}, {os.cpu_count()} cores, "
             f"{datetime.date.today().isoformat()}: the reference (1920×960, h264rgb lossless) of a synthetic "
             "1920×1080 24 fps H.264 clip, the whole clip, each in a fresh process.", "",
             "| clip | frames | build time | per frame | peak RSS (VmHWM) | reference file |",
             "|---|---|---|---|---|---|"]
    for seconds, r in rows:
        lines.append(f"| {seconds // 60} min {seconds % 60} s | {r['frames']} | {r['seconds']:.0f} s | "
                     f"{1000 * r['seconds'] / r['frames']:.1f} ms | {r['peak_rss'] / MB:.0f} MB "
                     f"({r['hwm'] / MB:.0f} MB) | {r['bytes'] / MB:.0f} MB |")
    return "\n".join(lines) + "\n"


def engine_table(rows) -> str:
    lines = [ENGINE_SECTION, "",
             f"`.venv/bin/python bench/long_clip.py --write` — {platform.machine()}, {os.cpu_count()} cores, "
             f"{datetime.date.today().isoformat()}: `python -m engine run` on a job made from the same synthetic "
             "clips (draft backend, reference 512×256, delivery 1024×512, windows of 121 with 25 shared), "
             "each in a fresh process.", "",
             "| clip | frames | windows | engine time | per frame | engine peak RSS | window files |",
             "|---|---|---|---|---|---|---|"]
    for seconds, r in rows:
        lines.append(f"| {seconds // 60} min {seconds % 60} s | {r['frames']} | {r['windows']} | "
                     f"{r['seconds']:.0f} s | {1000 * r['seconds'] / r['frames']:.0f} ms | "
                     f"{r['peak_rss'] / MB:.0f} MB | {r['window_bytes'] / MB:.0f} MB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only", choices=("reference", "engine"), help="run one of the two benchmarks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--engine-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.engine_worker:
        return engine_worker(args.engine_worker)
    doc = DOC.read_text()
    if args.only != "engine":
        rows = [(seconds, measure(make_clip(seconds))) for seconds in LENGTHS_S]
        print(text := table(rows), flush=True)
        doc = replace_section(doc, text)
    if args.only != "reference":
        rows = [(seconds, measure(make_clip(seconds), "--engine-worker")) for seconds in ENGINE_LENGTHS_S]
        print(text := engine_table(rows), flush=True)
        doc = replace_section(doc, text)
    if args.write:
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
