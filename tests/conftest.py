"""Shared test helpers: synthetic clips written with PyAV, as a user's camera or editor would; the tiny model
set; references and jobs for the engine, and running it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import av
import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.job import Job, ModelFiles, save_job
from blender_equi360.jobs.protocol import parse_event
from engine.device import DEVICE_ENV

ROOT = Path(__file__).resolve().parents[1]


def write_clip(path: Path, frames: int, width: int, height: int, fps, draw, codec: str = "libx264",
               pix_fmt: str = "yuv420p") -> Path:
    """Encode ``draw(k) -> (height, width, 3) uint8 RGB`` for k in range(frames); ``fps`` int or Fraction."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast"}
        for k in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(draw(k), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def smooth_texture(width: int, height: int, phase: float = 0.0, min_period: float = 48.0) -> np.ndarray:
    """A band-limited, asymmetric RGB texture (no detail finer than ``min_period`` pixels)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    p = min_period
    r = 128 + 60 * np.sin(2 * math.pi * x / (2.3 * p) + phase) + 40 * np.cos(2 * math.pi * y / p)
    g = 128 + 70 * np.sin(2 * math.pi * (x + 2 * y) / (3.1 * p) - phase) + 30 * (x / width)
    b = 100 + 90 * np.cos(2 * math.pi * (0.7 * x - y) / (1.7 * p) + 2 * phase) * (y / height)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def rendered_texture(width: int, height: int, phase: float = 0.0, seed: int = 1) -> np.ndarray:
    """Like a sharp render: anti-aliased edges (boxes, discs and 1–3 px line segments, 4×4 samples per
    pixel) in mostly neutral colours, so its detail reaches the pixel's own size; ``phase`` slides the
    picture right by that many pixels."""
    rng = np.random.default_rng(seed)
    shapes = [(rng.integers(3), np.clip(rng.uniform(20, 235) + rng.normal(0, 12, 3), 0, 255),
               rng.uniform(-0.1, 1.1) * width + phase, rng.uniform(0, 1) * height, rng.uniform(0.01, 0.15) * height,
               rng.uniform(0.2, 1), rng.uniform(0, math.pi), rng.uniform(1, 3)) for _ in range(40 + width // 8)]
    background = rng.uniform(60, 190)
    ss, strip = 4, 32
    out = np.empty((height, width, 3), np.uint8)
    xs = (np.arange(width * ss, dtype=np.float32) + 0.5) / ss
    for top in range(0, height, strip):
        rows = min(strip, height - top)
        ys = top + (np.arange(rows * ss, dtype=np.float32) + 0.5) / ss
        image = np.full((rows * ss, width * ss, 3), background, np.float32)
        for kind, colour, cx, cy, reach, aspect, angle, thickness in shapes:
            if cy + reach < top or cy - reach > top + rows:
                continue
            x0, x1 = np.searchsorted(xs, [cx - reach, cx + reach])
            if x0 >= x1:
                continue
            y, x = ys[:, None], xs[None, x0:x1]
            if kind == 0:
                inside = (np.abs(x - cx) < reach) & (np.abs(y - cy) < reach * aspect)
            elif kind == 1:
                inside = (x - cx) ** 2 + (y - cy) ** 2 < reach * reach
            else:
                inside = np.abs((x - cx) * math.sin(angle) - (y - cy) * math.cos(angle)) < thickness / 2
                inside &= (x - cx) ** 2 + (y - cy) ** 2 < reach * reach
            image[:, x0:x1][inside] = colour
        out[top:top + rows] = np.clip(image.reshape(rows, ss, width, ss, 3).mean(axis=(1, 3)) + 0.5, 0, 255)
    return out


def copy_job_inputs(source: Path, folder: Path, mask: str = "mask.mkv") -> Path:
    """A job folder's inputs copied from ``source``: the reference, its mask and its placement record."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("reference.mkv", mask, "reference.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


@pytest.fixture
def textured_clip(tmp_path):
    """A 2.39:1 clip, 20 frames at 24 fps, moving band-limited texture."""
    return write_clip(tmp_path / "clip.mp4", 20, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5))


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """The tiny random-weight LTX-2.3 model files in every layout, made once by the real command:
    {name: path} (``make_tiny_models``'s names)."""
    folder = tmp_path_factory.mktemp("tiny")
    run = subprocess.run([sys.executable, "-m", "engine", "make-tiny-models", str(folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="session")
def models(tiny_files):
    """The tiny dev set as job.json's ``models``: {checkpoint, text_encoder, ic_lora, distilled_lora}."""
    return {f.name: tiny_files[f.name] for f in fields(ModelFiles)}


# --- the engine, on tiny inputs -----------------------------------------------------------------------------

CPU = {**os.environ, DEVICE_ENV: "cpu"}  # the real LTX pipeline on the CPU, for the tiny models


def run_engine(job_dir, env=CPU, timeout=300, preexec_fn=None):
    """``python -m engine run JOB_DIR``: (exit status, events, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)
    return proc.returncode, [parse_event(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.fixture(scope="module")
def engine_reference(tmp_path_factory):
    """A 49-frame reference on a 512×256 canvas, for the draft engine."""
    folder = tmp_path_factory.mktemp("ref")
    clip = write_clip(folder / "clip.mp4", 49, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5))
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(512, 256), frames=49))
    return folder


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """A 9-frame reference on a 128×64 canvas, for the tiny LTX models."""
    folder = tmp_path_factory.mktemp("ref")
    clip = write_clip(folder / "clip.mp4", 9, 240, 100, 24, lambda k: smooth_texture(240, 100, k / 5))
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(128, 64), frames=9))
    return folder


def make_job(folder, reference, models, **fields):
    """An LTX job on the tiny models (2 steps, delivered at 256×128) over ``reference``'s inputs."""
    copy_job_inputs(reference, folder)
    fields = {"backend": "ltx", "steps": 2, "delivery_size": "256x128", **fields}
    save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv", models=ModelFiles(**models), **fields))
    return folder
