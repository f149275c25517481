"""Benchmark: the reference builder on the rendered sample city (1920×804, 121 frames), against decoding
the same clip alone. The city is a static, easily compressed shot: decoding it is nearly free, so this
shows the builder's own per-frame cost. Each timing is a fresh process minus the same imports alone.

    .venv/bin/python bench/reference_city.py
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITY = ROOT / "bench" / "out" / "city1920"
SOURCE = CITY / "city_flat.mp4"
IMPORTS = "import av, numpy\nfrom blender_equi360 import *\n"
DECODE = IMPORTS + "c = av.open(SRC); s = c.streams.video[0]; s.thread_type = 'AUTO'\nfor f in c.decode(s): pass"
BUILD = IMPORTS + "build_reference(SRC, OUT, settings=ReferenceSettings(size=CanvasSize(*SIZE)))"


def seconds(code: str, **names) -> float:
    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", prelude + code], check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    if not SOURCE.exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_city.py"), str(CITY),
                        "--flat-size", "1920x804", "--pano-size", "1024x512"], check=True)
    out = str(CITY / "reference.mkv")
    print("| canvas | decode only | whole clip | ms/frame | ÷ decode only (median of 5) |\n|---|---|---|---|---|")
    for size in ((1920, 960), (2560, 1280)):
        runs = []
        for _ in range(5):
            base = seconds(IMPORTS)
            runs.append((seconds(DECODE, SRC=str(SOURCE)) - base,
                         seconds(BUILD, SRC=str(SOURCE), OUT=out, SIZE=size) - base))
        decode, build = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        ratio = statistics.median(b / d for d, b in runs)
        print(f"| {size[0]}x{size[1]} | {decode:.2f} s | {build:.2f} s | {build / 121 * 1000:.1f} | {ratio:.1f}× |")


if __name__ == "__main__":
    main()
