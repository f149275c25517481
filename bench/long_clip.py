#!/usr/bin/env python
"""Benchmark: memory stays flat with clip length — the reference of a 10-minute 1080p clip.

    .venv/bin/python bench/long_clip.py            # measure, print the table
    .venv/bin/python bench/long_clip.py --write    # ... and update docs/BENCHMARKS.md

Synthetic 1920×1080 H.264 clips at 24 fps (a moving, detailed picture; made once, cached in
bench/out/long/) of 30 s and 10 min. Each reference is built in a fresh process, which reports its own
peak RSS (ru_maxrss, VmHWM as a cross-check) and its time: if the builder streams, the 10-minute peak is
the 30-second peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out" / "long"
DOC = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Long clips: flat memory"
FPS, WIDTH, HEIGHT = 24, 1920, 1080
LENGTHS_S = (30, 600)
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
    from blender_equi360 import Camera, ReferenceSettings, build_reference
    out = OUT / (Path(clip).stem + "_reference.mkv")
    started = time.monotonic()
    result = build_reference(clip, out, settings=ReferenceSettings(camera=Camera(100), frames=None))
    seconds = time.monotonic() - started
    hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"frames": result.frames_written, "seconds": seconds, "bytes": out.stat().st_size,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "hwm": hwm}))
    out.unlink()
    result.mask.unlink()


def measure(clip: Path) -> dict:
    run = subprocess.run([sys.executable, __file__, "--worker", str(clip)], capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    lines = [SECTION, "",
             f"`.venv/bin/python bench/long_clip.py --write` — {platform.machine()}, {os.cpu_count()} cores, "
             f"{datetime.date.today().isoformat()}: the reference (1920×960, h264rgb lossless) of a synthetic "
             "1920×1080 24 fps H.264 clip, the whole clip, each in a fresh process.", "",
             "| clip | frames | build time | per frame | peak RSS (VmHWM) | reference file |", "|---|---|---|---|---|---|"]
    for seconds, r in rows:
        lines.append(f"| {seconds // 60} min {seconds % 60} s | {r['frames']} | {r['seconds']:.0f} s | "
                     f"{1000 * r['seconds'] / r['frames']:.1f} ms | {r['peak_rss'] / MB:.0f} MB "
                     f"({r['hwm'] / MB:.0f} MB) | {r['bytes'] / MB:.0f} MB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    rows = []
    for seconds in LENGTHS_S:
        clip = make_clip(seconds)
        rows.append((seconds, measure(clip)))
        print(rows[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write:
        doc = DOC.read_text()
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        doc = pattern.sub(lambda _: text + "\n", doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
