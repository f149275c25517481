#!/usr/bin/env python
"""Benchmark: the streaming reference builder against a full-frame, whole-batch torch ``grid_sample``.

    .venv/bin/python bench/reference.py           # measure, print the tables
    .venv/bin/python bench/reference.py --write   # ... and update docs/BENCHMARKS.md

Source: a synthetic 121-frame 1920x804 H.264 clip (made once, cached in bench/out/). For each canvas
size it measures

* the per-frame projection with its prefilter, on real decoded frames: the swscale graph that crops,
  downscales (the prefilter) and converts to BGRA (what ``decode_plates`` pushes/pulls), then
  ``PlateMapping.project``;
* the whole ``build_reference`` run (decode + prefilter + project + lossless encode) for each codec, with a
  per-stage breakdown taken by wrapping the core's calls (the core is not edited);
* peak memory, in a fresh process per configuration, and again on a 4x longer clip;
* decode alone, the floor the whole run is compared with;
* a baseline done the way the ComfyUI ``RectilinearToEquirect`` node does it: float32 [B,H,W,3] input, one
  bilinear ``grid_sample`` (zeros padding, align_corners=True) over the whole batch on the whole canvas,
  then a full-canvas composite.

Every measurement runs in a fresh subprocess of this script (``--worker``), so a peak RSS belongs to
that configuration alone and torch is never loaded next to the builder.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from time import perf_counter
from unittest import mock

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any folder

from common import write_section  # noqa: E402

OUT = ROOT / "bench" / "out"          # git-ignored
DOC = ROOT / "docs" / "BENCHMARKS.md"
SRC_W, SRC_H, FPS, FRAMES = 1920, 804, 24, 121
SOURCE = OUT / f"source_{SRC_W}x{SRC_H}_{FRAMES}f.mp4"
LOOPS = 4                              # the long clip is the source looped (remuxed, not re-encoded)
LONG_SOURCE = OUT / f"source_{SRC_W}x{SRC_H}_{FRAMES * LOOPS}f_looped.mp4"
CANVASES = ((1920, 960), (2560, 1280))
CODECS = ("h264rgb", "ffv1")
HFOV_DEG = 100.0
REPEATS = 5                            # runs per configuration (each in a fresh process); medians reported
WARM_CALLS = 3                         # full-frame calls after the first (cold) one
SMALL_BATCH = 30                       # full-frame batch that fits where the whole clip does not
NODE_WARM_MS = 86                      # the unmodified ComfyUI node, 1920x960 warm, measured separately
GIB, MB = 1 << 30, 1_000_000

GOAL_SPEEDUP = 20.0                    # projection with prefilter vs the full-frame approach, per frame
GOAL_RATIO = 2.5                       # whole clip vs decode only
GOAL_PEAK_MB = 300.0                   # peak RSS, whatever the clip length and canvas size


# --- the source clip ------------------------------------------------------------------------------

def source_frame(k: int, rng: np.random.Generator) -> np.ndarray:
    """Frame ``k`` (RGB uint8): sky-to-ground gradients, sinusoids panning at several scales (detail down
    to ~7 px, so the prefilter has real work and x264 a realistic bitrate), mild sensor noise.
    Values stay far above the letterbox threshold, so the whole frame counts as picture."""
    t = k / FPS
    x = np.arange(SRC_W, dtype=np.float32)[None, :] + 60.0 * t  # the scene pans at 60 px/s
    y = np.arange(SRC_H, dtype=np.float32)[:, None]
    tau = np.float32(2 * np.pi)
    # Products of 1-D waves: cheap to make, and still a 2-D texture.
    coarse = np.sin(tau * x / 211) * np.cos(tau * (y + 25 * t) / 97)
    medium = np.sin(tau * (x + 0.6 * y) / 43) * (0.5 + 0.5 * np.cos(tau * y / 301))
    fine = np.sin(tau * x / 7.3) * np.sin(tau * (y - 12 * t) / 9.1) * (0.5 + 0.5 * np.sin(tau * x / 389))
    luma = 95 + 60 * (y / SRC_H) + 35 * coarse + 18 * medium + 14 * fine
    tint = np.cos(tau * x / 523)
    rgb = np.stack([luma + 22 * tint, luma + 6 * medium, luma - 25 * tint - 20 * (y / SRC_H)], axis=-1)
    rgb += 3.0 * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(rgb, 40, 235).astype(np.uint8)


def make_source(path: Path) -> None:
    """FRAMES frames, H.264 yuv420p CRF 18, 24 fps, tagged BT.709 limited range like a camera's file."""
    rng = np.random.default_rng(360)
    tmp = path.with_name(path.name + ".partial.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SRC_W, SRC_H, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        stream.codec_context.colorspace = 1    # AVCOL_SPC_BT709
        stream.codec_context.color_range = 1   # AVCOL_RANGE_MPEG (limited)
        for k in range(FRAMES):
            rgb = av.VideoFrame.from_ndarray(source_frame(k, rng), format="rgb24")
            for packet in stream.encode(rgb.reformat(format="yuv420p", dst_colorspace="ITU709")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def make_looped(source: Path, path: Path, loops: int) -> None:
    """The source played ``loops`` times in one file: its packets copied with shifted timestamps. The
    clip starts on an IDR frame, so each copy decodes on its own, as the concat demuxer does it."""
    tmp = path.with_name(path.name + ".partial.mp4")
    with av.open(str(source)) as src, av.open(str(tmp), "w") as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        packets = [p for p in src.demux(in_stream) if p.size]
        span = sum(p.duration for p in packets)
        for loop in range(loops):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts = p.pts + loop * span, p.dts + loop * span
                copy.duration, copy.is_keyframe, copy.time_base = p.duration, p.is_keyframe, p.time_base
                copy.stream = out_stream
                dst.mux(copy)
    tmp.replace(path)


# --- measurements (each runs in its own process, see run_worker) ----------------------------------

def rss_now_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def hwm_bytes() -> int:
    """The peak of this process image alone: a cross-check of ru_maxrss, which after a vfork + exec (how
    subprocess starts workers) can carry over the parent's peak."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def cpu_seconds() -> float:
    """User + system time of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_decode(source: str, repeats: int) -> dict:
    """Decode every frame, frame/slice threads on, no conversion: the floor for the whole run."""
    seconds, cpu, frames = [], [], 0
    for _ in range(repeats):
        t0, c0 = perf_counter(), cpu_seconds()
        with av.open(source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = sum(1 for _ in container.decode(stream))
        seconds.append(perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
    return {"seconds": seconds, "cpu_s": cpu, "frames": frames}


def _plate_setup(source: str, canvas: tuple[int, int]):
    """What build_reference derives before its frame loop: picture, plate window, prefiltered size."""
    from blender_equi360.geometry.camera import Camera
    from blender_equi360.geometry.projection import PlateCrop, prefiltered_plate_size
    from blender_equi360.jobs.canvas import CanvasSize
    from blender_equi360.media.video import detect_picture, probe
    from blender_equi360.stages.reference import plate_crop

    info = probe(source)
    picture = detect_picture(info)
    cx, cy, cw, ch = plate_crop(picture, "center")
    window = PlateCrop(cx, cy, cw, ch, picture.width, picture.height)
    camera, size = Camera(hfov_deg=HFOV_DEG), CanvasSize(*canvas)
    crop = (picture.x + cx, picture.y + cy, cw, ch)
    return camera, window, size, crop, prefiltered_plate_size(camera, window, size)


def measure_stages(source: str, canvas: tuple[int, int], passes: int = 3) -> dict:
    """Per-frame prefilter and projection on real decoded frames, each stage timed alone.

    The frames are decoded up front so no decoder thread competes with the timed calls. The filter
    graph is the one ``decode_plates`` builds (its private factory, called as it calls it)."""
    from blender_equi360.geometry.projection import PlateMapping
    from blender_equi360.media import video

    camera, window, size, crop, plate_size = _plate_setup(source, canvas)
    t0 = perf_counter()
    mapping = PlateMapping(camera, window, size, plate_size)
    mapping_s = perf_counter() - t0
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = list(container.decode(stream))
        graph = video._plate_graph(stream, frames[0], crop, plate_size)
        filter_ms, project_ms = [], []
        for _ in range(passes):
            for frame in frames:
                t0 = perf_counter()
                graph.push(frame)
                plate = graph.pull().to_ndarray()
                t1 = perf_counter()
                mapping.project(plate)
                t2 = perf_counter()
                filter_ms.append((t1 - t0) * 1e3)
                project_ms.append((t2 - t1) * 1e3)
    return {"plate": list(plate_size), "footprint": mapping.footprint_pixels / (size.width * size.height),
            "mapping_s": mapping_s, "filter_ms": filter_ms, "project_ms": project_ms}


class StageClock:
    """Accumulates wall time per stage of build_reference by wrapping the core's calls."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            t0 = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + perf_counter() - t0
        return timed

    def instrument(self, stack: ExitStack) -> None:
        from blender_equi360.geometry.projection import PlateMapping
        from blender_equi360.media import video
        from blender_equi360.stages import reference

        clock = self

        class TimedGraph:
            """The plate filter graph, with push, pull and the copy out of the frame timed."""

            def __init__(self, graph):
                self.push = clock.wrap("filter", graph.push)
                self._pull = clock.wrap("filter", graph.pull)

            def pull(self):
                return TimedFrame(self._pull())

        class TimedFrame:
            """The pulled plate frame; the copy out of it into an array counts as prefilter time."""

            def __init__(self, frame):
                self.to_ndarray = clock.wrap("filter", frame.to_ndarray)

        stack.enter_context(mock.patch.object(reference, "probe", self.wrap("setup", reference.probe)))
        stack.enter_context(mock.patch.object(reference, "detect_picture",
                                              self.wrap("setup", reference.detect_picture)))
        stack.enter_context(mock.patch.object(PlateMapping, "__init__", self.wrap("setup", PlateMapping.__init__)))
        graph_factory = self.wrap("filter", video._plate_graph)
        stack.enter_context(mock.patch.object(video, "_plate_graph", lambda *a: TimedGraph(graph_factory(*a))))
        stack.enter_context(mock.patch.object(PlateMapping, "project", self.wrap("project", PlateMapping.project)))
        # Encoding and muxing, of the video and of the mask.
        writer = reference.LosslessVideoWriter
        for method in ("__init__", "write", "close"):
            stack.enter_context(mock.patch.object(writer, method, self.wrap("encode", getattr(writer, method))))
        stack.enter_context(mock.patch.object(reference, "write_held_image",
                                              self.wrap("encode", reference.write_held_image)))


def measure_build(source: str, canvas: tuple[int, int], codec: str, frames: int | None) -> dict:
    """One whole build_reference run in this fresh process: wall time, stage split, peak RSS."""
    from blender_equi360.geometry.camera import Camera
    from blender_equi360.jobs.canvas import CanvasSize
    from blender_equi360.stages.reference import ReferenceSettings, build_reference

    baseline_rss = rss_now_bytes()  # after every import the run needs
    settings = ReferenceSettings(camera=Camera(hfov_deg=HFOV_DEG), size=CanvasSize(*canvas), frames=frames,
                                 fps=FPS, codec=codec)
    output = OUT / "tmp" / f"ref_{canvas[0]}x{canvas[1]}_{codec}.mkv"
    output.parent.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    with ExitStack() as stack:
        clock.instrument(stack)
        t0, c0 = perf_counter(), cpu_seconds()
        result = build_reference(source, output, settings=settings)
        wall, cpu = perf_counter() - t0, cpu_seconds() - c0
    stages = dict(clock.seconds)
    # The decoder's threads decode ahead on their own; what the main thread spends outside the wrapped
    # calls is waiting for the next frame (plus the loop's own bookkeeping).
    stages["decode"] = wall - sum(stages.values())
    return {"wall_s": wall, "cpu_s": cpu, "stages": stages, "frames": result.frames_written,
            "baseline_rss": baseline_rss, "peak_rss": peak_rss_bytes(), "hwm": hwm_bytes(),
            "video_bytes": output.stat().st_size}


def full_frame_geometry(canvas: tuple[int, int]):
    """The builder's mapping evaluated on every canvas pixel, for the full-resolution frame: the grid in
    grid_sample's normalised coordinates (align_corners=True: ±1 are the first/last pixel centres) and
    the footprint. Same camera model (pixel centre → direction → pinhole), built from public pieces."""
    from blender_equi360.geometry.camera import Camera
    from blender_equi360.geometry.projection import lonlat_to_direction, pixel_to_lonlat

    width, height = canvas
    camera = Camera(hfov_deg=HFOV_DEG)
    lon, lat = pixel_to_lonlat(np.arange(width)[None, :], np.arange(height)[:, None], width, height)
    local = lonlat_to_direction(lon, lat) @ camera.rotation()
    in_front = local[..., 0] > 1e-9
    depth = np.where(in_front, local[..., 0], 1.0)
    focal = camera.focal_px(SRC_W)
    u = SRC_W / 2 + focal * local[..., 1] / depth  # frame edges at 0 and SRC_W
    v = SRC_H / 2 - focal * local[..., 2] / depth
    inside = in_front & (u >= 0) & (u <= SRC_W) & (v >= 0) & (v <= SRC_H)
    grid = np.stack([(u - 0.5) / (SRC_W - 1) * 2 - 1, (v - 0.5) / (SRC_H - 1) * 2 - 1], axis=-1)
    return grid.astype(np.float32), inside


def full_frame_project(images, grid, content, fill):
    """The ComfyUI node's way: one grid_sample over the whole batch on the whole canvas, then a full-
    canvas composite. ``images`` [B,h,w,3] float32 (ComfyUI's IMAGE), ``grid`` [1,H,W,2], ``content``
    [1,H,W,1]. The node's profile also shows a clamp and whole-canvas copies: left out here, in the
    baseline's favour."""
    import torch.nn.functional as F

    batch = images.shape[0]
    sampled = F.grid_sample(images.permute(0, 3, 1, 2), grid.expand(batch, -1, -1, -1),
                            mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled.permute(0, 2, 3, 1) * content + fill * (1.0 - content)


def measure_full_frame(source: str, canvas: tuple[int, int], batch: int, calls: int, cap: int) -> dict:
    """The baseline on the first ``batch`` frames, ``calls`` times (the first is cold), under an
    address-space cap so that a batch that does not fit fails with the allocator's error."""
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    from blender_equi360.geometry.projection import PlateMapping

    torch.set_num_threads(2)
    grid, inside = full_frame_geometry(canvas)
    camera, window, size, _, plate_size = _plate_setup(source, canvas)
    ours = PlateMapping(camera, window, size, plate_size).mask < 255
    footprint_iou = float((ours & inside).sum() / (ours | inside).sum())

    # Input as the node gets it; the uint8 → float conversion is not part of the timed call.
    images = torch.empty((batch, SRC_H, SRC_W, 3), dtype=torch.float32)
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in zip(range(batch), container.decode(stream)):
            images[i] = torch.from_numpy(frame.to_ndarray(format="rgb24")).float().div_(255.0)
    grid_t = torch.from_numpy(grid)[None]
    content = torch.from_numpy(inside.astype(np.float32))[None, :, :, None]
    fill = torch.zeros(3)

    rss_before = rss_now_bytes()
    seconds, error = [], None
    for _ in range(calls):
        try:
            t0 = perf_counter()
            out = full_frame_project(images, grid_t, content, fill)
            seconds.append(perf_counter() - t0)
            del out
        except (RuntimeError, MemoryError) as err:
            error = str(err).strip().splitlines()[0]
            break
    return {"batch": batch, "seconds": seconds, "error": error, "rss_before": rss_before,
            "input_bytes": images.numel() * 4, "peak_rss": peak_rss_bytes(), "hwm": hwm_bytes(),
            "footprint_iou": footprint_iou, "cap": cap}


WORKERS = {"decode": measure_decode, "stages": measure_stages, "build": measure_build,
           "full_frame": measure_full_frame}


def run_worker(kind: str, **kwargs) -> dict:
    """Run one measurement in a fresh Python process; it answers with one JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {kwargs} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "hwm" in result and abs(result["hwm"] - result["peak_rss"]) > 0.05 * result["peak_rss"]:
        print(f"  warning: ru_maxrss {result['peak_rss'] / MB:.0f} MB and VmHWM {result['hwm'] / MB:.0f} MB "
              "disagree", file=sys.stderr)
    return result


# --- the whole benchmark --------------------------------------------------------------------------

def memory_cap() -> int:
    """≈23 GiB, but never more than is free: past it the kernel's OOM killer, not the allocator, answers."""
    with open("/proc/meminfo") as f:
        available = int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) * 1024
    return min(23 * GIB, available - GIB // 2)


def run_benchmark() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    if not SOURCE.exists():
        log(f"making {SOURCE.name} (once)")
        make_source(SOURCE)
    if not LONG_SOURCE.exists():
        make_looped(SOURCE, LONG_SOURCE, LOOPS)
    src, cap = str(SOURCE), memory_cap()
    results: dict = {"canvases": {}, "cap": cap}
    core_at_start = core_fingerprint()

    results["decode"] = {"seconds": [], "cpu_s": []}
    for canvas in CANVASES:
        key = f"{canvas[0]}x{canvas[1]}"
        r = results["canvases"][key] = {"build": {}}
        log(f"{key}: prefilter + projection, stage by stage")
        r["stages"] = run_worker("stages", source=src, canvas=canvas)
        for codec in CODECS:
            log(f"{key}: build_reference, {codec}, {REPEATS} fresh processes, each after a decode-only run")
            r["build"][codec] = [paired_build(src, canvas, codec, results["decode"]) for _ in range(REPEATS)]
    results["long"] = {}
    for codec in CODECS:
        log(f"long clip ({FRAMES * LOOPS} frames, frames=None), {CANVASES[-1]}, {codec}")
        results["long"][codec] = run_worker("build", source=str(LONG_SOURCE), canvas=CANVASES[-1], codec=codec,
                                            frames=None)

    for canvas in CANVASES:
        key = f"{canvas[0]}x{canvas[1]}"
        r = results["canvases"][key]
        log(f"full-frame baseline {key}, whole batch, 1 cold + {WARM_CALLS} warm calls")
        r["full_frame"] = run_worker("full_frame", source=src, canvas=canvas, batch=FRAMES, calls=1 + WARM_CALLS,
                                     cap=cap)
        if r["full_frame"]["error"]:
            log(f"full-frame baseline {key}, batch of {SMALL_BATCH}")
            r["full_frame_small"] = run_worker("full_frame", source=src, canvas=canvas, batch=SMALL_BATCH,
                                               calls=1 + WARM_CALLS, cap=cap)
    results["environment"] = environment()
    results["source_bytes"] = SOURCE.stat().st_size
    if core_fingerprint() != core_at_start:  # someone edited the core while this ran: numbers are mixed
        results["environment"]["core"] += " — CHANGED DURING THE RUN, the numbers mix versions: run again"
        log("warning: blender_equi360/ changed during the run")
    return results


def paired_build(source: str, canvas: tuple[int, int], codec: str, decode: dict) -> dict:
    """A whole-clip run right after a decode-only run of the same clip. The VM's speed drifts by tens of
    percent from minute to minute, so each ratio compares two neighbouring measurements."""
    alone = run_worker("decode", source=source, repeats=1)
    decode["seconds"] += alone["seconds"]
    decode["cpu_s"] += alone["cpu_s"]
    run = run_worker("build", source=source, canvas=canvas, codec=codec, frames=FRAMES)
    run["decode_s"], run["decode_cpu_s"] = alone["seconds"][0], alone["cpu_s"][0]
    return run


def log(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def environment() -> dict:
    from blender_equi360.media import video

    with open("/proc/cpuinfo") as f:
        cpu = re.search(r"model name\s*:\s*(.+)", f.read())
    with open("/proc/meminfo") as f:
        ram = int(re.search(r"MemTotal:\s+(\d+) kB", f.read()).group(1)) * 1024
    libs = av.library_versions
    return {
        "core": core_version(),
        "prefilter": "+".join(filter(None, (getattr(video, "PREFILTER", "area"),
                                             getattr(video, "_EXACT_COLOUR", "")))),
        "date": datetime.date.today().isoformat(),
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": ram / GIB,
        "os": platform.platform(),
        "software": (f"Python {platform.python_version()}, numpy {np.__version__}, PyAV {av.__version__} "
                     f"(libavcodec {'.'.join(map(str, libs['libavcodec']))}, "
                     f"libavfilter {'.'.join(map(str, libs['libavfilter']))}, "
                     f"libswscale {'.'.join(map(str, libs['libswscale']))}), "
                     f"torch {importlib.metadata.version('torch')}"),
    }


def core_fingerprint() -> str:
    digest = hashlib.sha1()
    for path in sorted((ROOT / "blender_equi360").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def core_version() -> str:
    """The commit measured, and whether the core had changes not yet committed."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "blender_equi360")
    return commit + (" with uncommitted changes to blender_equi360/" if dirty else "")


# --- the report -----------------------------------------------------------------------------------

STAGE_NAMES = {"setup": "setup", "decode": "decode wait", "filter": "prefilter", "project": "project",
               "encode": "encode + mux"}


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def decode_ratio(runs: list[dict]) -> float:
    """Whole clip ÷ decode only: the median of the paired ratios."""
    return statistics.median(r["wall_s"] / r["decode_s"] for r in runs)


def cpu_ratio(runs: list[dict]) -> float:
    return statistics.median(r["cpu_s"] / r["decode_cpu_s"] for r in runs)


def ours_ms(stages: dict) -> float:
    """Median per-frame prefilter + projection."""
    return statistics.median([a + b for a, b in zip(stages["filter_ms"], stages["project_ms"])])


def baseline_ms(canvas_results: dict) -> tuple[float | None, str]:
    """Warm per-frame time of the full-frame approach, and how it was obtained."""
    for name, how in (("full_frame", "whole batch"), ("full_frame_small", "batch of {batch}: the whole batch "
                                                                        "does not fit")):
        ff = canvas_results.get(name)
        if ff and not ff["error"] and len(ff["seconds"]) > 1:
            warm = statistics.median(ff["seconds"][1:])
            return warm / ff["batch"] * 1e3, how.format(batch=ff["batch"])
    return None, "did not run"


def render(results: dict) -> str:
    decode = results["decode"]
    decode_s = statistics.median(decode["seconds"])
    lines = []
    add = lines.append

    add("**Per frame: prefilter + projection against the full-frame approach.** Ours: median over 3 passes of "
        f"the 121 decoded frames, each stage timed alone (swscale crop + downscale with "
        f"`flags={results['environment']['prefilter']}` + BGRA, then "
        f"`PlateMapping.project`). Full frame: median of {WARM_CALLS} warm whole-batch calls ÷ batch size.")
    add("")
    add("| canvas | plate after prefilter | footprint | mapping (once per clip) | prefilter | project | "
        "**ours** | full-frame torch | **speed-up** |")
    add("|---|---|---|---|---|---|---|---|---|")
    for key, r in results["canvases"].items():
        st = r["stages"]
        base, how = baseline_ms(r)
        mine = ours_ms(st)
        add(f"| {key} | {st['plate'][0]}×{st['plate'][1]} | {st['footprint'] * 100:.1f} % | "
            f"{st['mapping_s'] * 1e3:.0f} ms | {statistics.median(st['filter_ms']):.2f} ms | "
            f"{statistics.median(st['project_ms']):.2f} ms | **{mine:.2f} ms** | "
            + (f"{base:.1f} ms ({how}) | **{base / mine:.0f}×** |" if base else f"{how} | — |"))
    add("")

    add(f"**Whole clip** ({FRAMES} frames): `build_reference`, {REPEATS} runs each in a fresh process right after "
        f"a **decode-only** run (PyAV, threads AUTO, no conversion; over all {len(decode['seconds'])} of them: "
        f"median {decode_s:.2f} s, {min(decode['seconds']):.2f}–{max(decode['seconds']):.2f}, "
        f"{decode_s / FRAMES * 1e3:.1f} ms/frame, {statistics.median(decode['cpu_s']):.2f} s CPU). Wall time: median "
        "(min–max); *÷ decode only*: median of the paired ratios, in wall time and in CPU time (user + system, "
        "all threads). Stage split of the median run, from wrapped calls: *setup* is probe + letterbox "
        "detection + mapping; *decode wait* is the main thread waiting for its next frame (the decoder's "
        "threads work ahead, overlapping the other stages).")
    add("")
    add("| canvas | codec | whole clip | ms/frame | **÷ decode only** | CPU | CPU ÷ decode CPU | setup | decode wait "
        "| prefilter | project | encode + mux | reference file |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in results["canvases"].items():
        for codec, runs in r["build"].items():
            run = median_run(runs)
            walls = [x["wall_s"] for x in runs]
            s = run["stages"]
            add(f"| {key} | {codec} | {run['wall_s']:.2f} s ({min(walls):.2f}–{max(walls):.2f}) | "
                f"{run['wall_s'] / run['frames'] * 1e3:.1f} | **{decode_ratio(runs):.2f}×** | "
                f"{run['cpu_s']:.1f} s | {cpu_ratio(runs):.2f}× | {s['setup']:.2f} s | {s['decode']:.2f} s | "
                f"{s['filter']:.2f} s | {s['project']:.2f} s | {s['encode']:.2f} s | "
                f"{run['video_bytes'] / MB:.1f} MB |")
    add("")

    add("**Peak memory**, each configuration in fresh processes: peak = `ru_maxrss` (highest of the runs), "
        "increase = over the process's RSS after its imports.")
    add("")
    add("| configuration | frames | **peak RSS** | RSS after imports | increase |")
    add("|---|---|---|---|---|")
    for key, r in results["canvases"].items():
        for codec, runs in r["build"].items():
            peak = max(x["peak_rss"] for x in runs)
            base = statistics.median(x["baseline_rss"] for x in runs)
            add(f"| ours, {key}, {codec} | {FRAMES} | **{peak / MB:.0f} MB** | {base / MB:.0f} MB | "
                f"{(peak - base) / MB:.0f} MB |")
    for codec, lg in results["long"].items():
        add(f"| ours, {CANVASES[-1][0]}x{CANVASES[-1][1]}, {codec}, {FRAMES * LOOPS}-frame clip, `frames=None` | "
            f"{lg['frames']} | **{lg['peak_rss'] / MB:.0f} MB** | {lg['baseline_rss'] / MB:.0f} MB | "
            f"{(lg['peak_rss'] - lg['baseline_rss']) / MB:.0f} MB |")
    for key, r in results["canvases"].items():
        for name in ("full_frame", "full_frame_small"):
            ff = r.get(name)
            if not ff:
                continue
            extra = f"{(ff['peak_rss'] - ff['rss_before']) / GIB:.1f} GiB"
            if ff["error"]:
                extra = f"does not fit: `{ff['error']}` (after {extra})"
            add(f"| full-frame torch, {key}, batch {ff['batch']} | {ff['batch']} | "
                f"**{ff['peak_rss'] / GIB:.1f} GiB** | "
                f"{ff['rss_before'] / GIB:.2f} GiB (incl. the {ff['input_bytes'] / GIB:.2f} GiB float input) | "
                f"{extra} |")
    add("")
    notes = [f"Full-frame runs are capped at {results['cap'] / GIB:.1f} GiB of address space (`RLIMIT_AS`); "
             "their *increase* is over the RSS just before the first call (input already loaded)."]
    notes.append("The full-frame grid reproduces the builder's footprint exactly (IoU "
                 + ", ".join(f"{r['full_frame']['footprint_iou']:.4f} at {k}" for k, r in results["canvases"].items())
                 + ").")
    for key, r in results["canvases"].items():
        small = r.get("full_frame_small")
        if small and not small["error"]:
            scale = FRAMES / small["batch"]
            extra = (small["peak_rss"] - small["rss_before"]) * scale / GIB
            notes.append(f"*Extrapolation, not a measurement:* scaling the batch-of-{small['batch']} run at {key} "
                         f"linearly to {FRAMES} frames gives ≈ {extra:.1f} GiB on top of a "
                         f"{small['input_bytes'] * scale / GIB:.1f} GiB float input.")
    add(" ".join(notes))
    return "\n".join(lines)


def reading(results: dict) -> str:
    """The goals checked against the numbers: generated, so a rerun cannot leave it stale."""
    decode_s = statistics.median(results["decode"]["seconds"])
    out = []
    for key, r in results["canvases"].items():
        base, how = baseline_ms(r)
        mine = ours_ms(r["stages"])
        if base:
            verdict = "met" if base / mine >= GOAL_SPEEDUP else "not met"
            out.append(f"- **Projection ≥ {GOAL_SPEEDUP:.0f}× faster per frame, {key}: {verdict}** — "
                       f"{mine:.2f} ms against {base:.1f} ms ({how}): {base / mine:.1f}×.")
    out.append(f"  The unmodified ComfyUI node was measured separately at {NODE_WARM_MS} ms/frame warm at 1920x960 on "
               "the same kind of VM (it also clamps and copies the whole canvas, which the equivalent here leaves "
               f"out); against that the speed-up at 1920x960 is "
               f"{NODE_WARM_MS / ours_ms(results['canvases']['1920x960']['stages']):.0f}×.")
    ratios = {(k, c): decode_ratio(runs) for k, r in results["canvases"].items() for c, runs in r["build"].items()}
    met = [f"{k} {c} {v:.2f}×" for (k, c), v in ratios.items() if v <= GOAL_RATIO]
    missed = [f"{k} {c} {v:.2f}×" for (k, c), v in ratios.items() if v > GOAL_RATIO]
    out.append(f"- **Whole clip ≤ {GOAL_RATIO}× decode only: "
               + ("met** everywhere: " + ", ".join(met) if not missed else
                  "not met** for " + ", ".join(missed) + (f"; met for {', '.join(met)}" if met else ""))
               + ".")
    peaks = {f"{k} {c}": max(x["peak_rss"] for x in runs)
             for k, r in results["canvases"].items() for c, runs in r["build"].items()}
    peaks.update({f"{CANVASES[-1][0]}x{CANVASES[-1][1]} {c}, {lg['frames']} frames": lg["peak_rss"]
                  for c, lg in results["long"].items()})
    over = [f"{k} {v / MB:.0f} MB" for k, v in peaks.items() if v > GOAL_PEAK_MB * MB]
    low, high = min(peaks.values()) / MB, max(peaks.values()) / MB
    imports = statistics.median(x["baseline_rss"] for r in results["canvases"].values()
                                for runs in r["build"].values() for x in runs)
    out.append(f"- **Peak memory ≤ {GOAL_PEAK_MB:.0f} MB: "
               + (f"met** everywhere ({low:.0f}–{high:.0f} MB)" if not over else
                  "not met** for " + ", ".join(over) + f" (met for the others; all peaks: {low:.0f}–{high:.0f} MB)")
               + f". These are whole-process figures: the interpreter, numpy and the FFmpeg libraries alone "
               f"hold ≈ {imports / MB:.0f} MB.")
    big = results["canvases"][f"{CANVASES[-1][0]}x{CANVASES[-1][1]}"]["build"]
    out.append("  Memory does not grow with the clip's length: "
               + "; ".join(f"{c}: {lg['frames']} frames peak at {lg['peak_rss'] / MB:.0f} MB against "
                           f"{max(x['peak_rss'] for x in big[c]) / MB:.0f} MB for {FRAMES}"
                           for c, lg in results["long"].items()) + ".")
    runs = results["canvases"]["1920x960"]["build"]["h264rgb"]
    run = median_run(runs)
    parts = sorted(run["stages"].items(), key=lambda kv: -kv[1])
    cores = results["environment"]["cores"]
    decode_cpu = statistics.median(results["decode"]["cpu_s"])
    out.append("- **Where the time goes** (1920x960, h264rgb, median run, "
               f"{run['wall_s']:.2f} s): " + ", ".join(f"{STAGE_NAMES[k]} {v:.2f} s" for k, v in parts)
               + f". The run needs {cpu_ratio(runs):.1f}× the CPU time of decoding alone; decoding alone already "
               f"keeps ≈ {decode_cpu / decode_s:.1f} of the {cores} cores busy, so even a perfectly parallel run "
               f"could not go below ≈ {cpu_ratio(runs) * decode_cpu / cores / decode_s:.1f}× decode "
               "only on this machine without doing less work.")
    return "\n".join(out)


def document(results: dict, table: str) -> str:
    env = results["environment"]
    return "\n".join([
        "## Reference builder",
        "",
        "```",
        ".venv/bin/python bench/reference.py --write",
        "```",
        "",
        f"- **Machine:** {env['cores']} cores, {env['cpu']}, {env['ram_gib']:.1f} GiB RAM, no GPU ({env['os']}).",
        f"- **Date:** {env['date']}.",
        f"- **Software:** {env['software']}.",
        f"- **Core measured:** commit {env['core']}.",
        "- **Noise:** on this 2-vCPU VM speed drifts by tens of percent between minutes (the host's load), so "
        "each whole-clip run is paired with a decode-only run just before it; the full-frame baseline, mostly "
        "first-touch page faults in the kernel, varies most (up to ≈ 2× between runs of this script).",
        f"- **Source:** synthetic {SRC_W}×{SRC_H}, {FRAMES} frames, 24 fps, H.264 yuv420p CRF 18 preset medium, "
        f"BT.709 ({results['source_bytes'] / MB:.1f} MB, "
        f"{results['source_bytes'] * 8 / (FRAMES / FPS) / 1e6:.1f} Mbit/s; panning sinusoids at several scales, "
        f"gradients, mild noise), made by the script. Camera hfov {HFOV_DEG:g}°, crop center (a no-op at 2.39:1), "
        f"no feather, {FPS} fps out. The long clip is the same file looped {LOOPS} times (remuxed).",
        "- **Full-frame baseline:** the way the ComfyUI `RectilinearToEquirect` node works, written from its "
        "description (`full_frame_project`): float32 [B,H,W,3] input, one bilinear `grid_sample` (zeros "
        "padding, align_corners=True) over the whole batch on the whole canvas, then `image*content + "
        "fill*(1-content)` over the full canvas; torch, 2 threads. The grid is built once outside the timed "
        "call and there is no clamp or extra copy, so it is leaner and faster than the node itself. Per-frame "
        "times exclude the uint8 → float conversion.",
        "",
        table,
        "",
        "### Reading",
        "",
        reading(results),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument("--from-json", type=Path, help="render saved results instead of measuring")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec.pop("kind")](**spec)))
        return

    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        t0 = perf_counter()
        results = run_benchmark()
        log(f"done in {perf_counter() - t0:.0f} s")
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    section = document(results, render(results))
    print(section)
    if args.write:
        write_section(DOC, section, "Benchmarks")
        log(f"updated {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
