#!/usr/bin/env python
"""Benchmark: LTX-2.3 denoising speed and GPU memory at the product's size, on random weights.

    .venv/bin/python bench/engine_gpu.py            # on a CUDA machine: measure, print the table
    .venv/bin/python bench/engine_gpu.py --write    # ... and update docs/BENCHMARKS.md
    .venv/bin/python bench/engine_gpu.py --tiny     # a CPU smoke run of this script on the tiny configs

Speed does not depend on the weights' values, so the full-size LTX-2.3 components (transformer 19.0 B,
connectors 3.2 B, video VAE, audio VAE, vocoder) are built with random weights straight on the GPU in
bf16, from the engine's own configs, and run through the engine's own pipeline call: diffusers'
``LTX2InContextPipeline`` at 1920×960×121 with a full-size reference (28,800 target + 28,800 reference
video tokens), each preset's guidance (quality: CFG + STG + modality; fast: unguided), each available
attention backend. Text embeddings are random tensors of the real shape (Gemma is not built; its encode is
a single forward and it leaves the GPU before denoising).

Measured per configuration: seconds per denoising step (median over the timed steps, after one warm-up
step), the time before the first step (reference VAE encode, connectors), VAE decode time, and peak GPU
memory of the denoise and decode phases. End-to-end estimates = before-first-step + steps × step + decode.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import platform
import statistics
import sys
from pathlib import Path
from time import perf_counter

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_equi360.jobs.job import Job  # noqa: E402
from common import write_section  # noqa: E402
from engine import ltx, recipes, tiny  # noqa: E402
from engine.configs import LTX23_CONFIGS  # noqa: E402
from engine.models import LOADED, component_class  # noqa: E402
from engine.weights import CheckpointKind  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Engine on the GPU"
FULL = dict(width=1920, height=960, frames=121, fps=24)
TINY = dict(width=128, height=64, frames=9, fps=24)
BACKENDS = ("native", "_flash_3")  # diffusers' names: native = torch SDPA; _flash_3 = FlashAttention 3 (Hopper)
TIMED_STEPS = 3                     # after one warm-up step
GOALS_S = {"fast": 120, "quality": 720}


def build_pipeline(configs: dict, device: str, dtype):
    """The engine's own pipeline (:func:`engine.ltx.denoising_pipeline`) over random-weight components."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: an fp32 transformer would not fit
    try:
        with torch.device(device):
            parts = {name: component_class(name).from_config(configs[name]).eval().requires_grad_(False)
                     for name in LOADED}
    finally:
        torch.set_default_dtype(previous)
    for name in ("vae", "audio_vae"):  # statistics are float32 buffers in the real models
        parts[name].latents_mean.data = parts[name].latents_mean.float()
        parts[name].latents_std.data = torch.ones_like(parts[name].latents_std, dtype=torch.float32)
    pipe = ltx.denoising_pipeline(parts)
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(pipe, preset: str, size: dict, device: str, dtype) -> dict:
    """Seconds per denoising step through the engine's own :func:`engine.ltx.denoise` (one warm-up step,
    then TIMED_STEPS), the decode, and the peaks."""
    import torch

    kind = CheckpointKind("distilled" if preset == "fast" else "dev", fp8=False, told_by="job")
    rec = recipes.recipe(Job.from_fields(reference="r", mask="m", preset=preset), kind,
                         pipe.transformer.config.num_layers)
    steps = 1 + TIMED_STEPS
    caption = pipe.connectors.config.caption_channels * pipe.connectors.config.text_proj_in_factor
    embeds = torch.randn(1, recipes.MAX_SEQUENCE_LENGTH, caption, device=device, dtype=dtype)
    mask = torch.ones(1, recipes.MAX_SEQUENCE_LENGTH, device=device, dtype=torch.long)
    frames = np.random.default_rng(0).integers(0, 256, (size["frames"], size["height"], size["width"], 3), np.uint8)
    frames[:, :, : size["width"] // 4] = 0  # black, like the unknown region of a reference
    stamps = []

    def on_step(_k):
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(perf_counter())

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = perf_counter()
    latents = ltx.denoise(pipe, dataclasses.replace(rec, sigmas=rec.sigmas[:steps]), (embeds, mask, embeds, mask),
                          frames, None, num_frames=size["frames"], frame_rate=size["fps"], seed=0, on_step=on_step)
    step_s = statistics.median(np.diff(stamps))
    before_first = stamps[0] - start - step_s
    denoise_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = perf_counter()
    ltx.decode(pipe.vae, latents, device)
    decode_s = perf_counter() - start
    decode_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    total_steps = len(rec.sigmas) if preset == "fast" else recipes.QUALITY_STEPS
    return {"preset": preset, "step_s": step_s, "before_first_step_s": before_first, "decode_s": decode_s,
            "steps": total_steps, "end_to_end_s": before_first + total_steps * step_s + decode_s,
            "denoise_peak_gb": denoise_peak, "decode_peak_gb": decode_peak,
            "video_tokens": 2 * ((size["frames"] - 1) // 8 + 1) * (size["height"] // 32) * (size["width"] // 32)}


def run(tiny_mode: bool, presets, backends) -> tuple[list[dict], dict]:
    import torch

    device, dtype = ("cpu", torch.float32) if tiny_mode else ("cuda", torch.bfloat16)
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/engine_gpu.py needs a CUDA GPU (or --tiny for a CPU smoke run)")
    configs = (tiny.configs() if tiny_mode else
               {**LTX23_CONFIGS, "vae": {**LTX23_CONFIGS["vae"], "layers_per_block": (4, 6, 4, 2, 2),
                                         "decoder_layers_per_block": (4, 6, 4, 2, 2),
                                         "timestep_conditioning": False}})
    size = TINY if tiny_mode else FULL
    pipe = build_pipeline(configs, device, dtype)
    rows = []
    for backend in backends:
        try:
            pipe.transformer.set_attention_backend(backend)
        except Exception as err:  # not installed on this machine: say so in the table
            rows.append({"backend": backend, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"})
            continue
        for preset in presets:
            try:
                rows.append({"backend": backend, **measure(pipe, preset, size, device, dtype)})
            except torch.OutOfMemoryError as err:
                rows.append({"backend": backend, "preset": preset, "error": f"out of memory: {str(err)[:120]}"})
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps(rows[-1]), flush=True)
    machine = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
               "torch": torch.__version__, "diffusers": importlib.metadata.version("diffusers"),
               "gpu": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
               "size": f"{size['width']}×{size['height']}×{size['frames']}"}
    return rows, machine


def table(rows: list[dict], machine: dict) -> str:
    lines = [SECTION, "",
             f"`.venv/bin/python bench/engine_gpu.py --write` — {machine['gpu']}, {machine['date']}, torch "
             f"{machine['torch']}, diffusers {machine['diffusers']}, {machine['size']} with a full-size "
             f"reference ({rows[0].get('video_tokens', '?')} video tokens), random weights, bf16.", "",
             "| attention | preset | s/step | before 1st step s | decode s | steps | end to end s (goal) | "
             "peak GB denoise / decode |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r.get('preset', 'all')} | {r['error']} | | | | | |")
            continue
        goal = GOALS_S[r["preset"]]
        verdict = "met" if r["end_to_end_s"] <= goal else "NOT met"
        peaks = "n/a" if r["denoise_peak_gb"] is None else f"{r['denoise_peak_gb']:.1f} / {r['decode_peak_gb']:.1f}"
        lines.append(f"| {r['backend']} | {r['preset']} | {r['step_s']:.2f} | {r['before_first_step_s']:.1f} | "
                     f"{r['decode_s']:.1f} | {r['steps']} | {r['end_to_end_s']:.0f} (≤ {goal}, {verdict}) | "
                     f"{peaks} |")
    lines += ["", "End to end excludes loading the weights and the text encoder's single forward pass."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny configs")
    parser.add_argument("--presets", nargs="+", default=["fast", "quality"], choices=["fast", "quality"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    args = parser.parse_args()
    rows, machine = run(args.tiny, args.presets, args.backends)
    text = table(rows, machine)
    print(text)
    if args.write and not args.tiny:
        write_section(DOC, text, "Benchmarks")


if __name__ == "__main__":
    main()
