# SPDX-License-Identifier: GPL-3.0-or-later
"""The LTX backend: LTX-2.3 + the VR-360 IC-LoRA through diffusers' ``LTX2InContextPipeline``.

One job runs in phases, so that only one big model is on the GPU at a time:

1. text: Gemma 3 encodes the prompt (and the negative prompt), then leaves;
2. denoise: transformer + connectors + VAE encode the reference and denoise the target, with the
   LoRAs fused into the weights (as Lightricks' own pipelines do);
3. decode: the transformer leaves the GPU, the VAE decodes in tiles.

Phase 1 and the loading run once per job; phases 2 and 3 once per window of a longer clip, each window
after the first conditioned on the previous window's last frames (see :mod:`engine.runner`).

The recipes (``job.preset``, and what each checkpoint takes) are in :mod:`engine.recipes`; the
checkpoint may be dev or distilled, bf16 or Lightricks' fp8 (dequantised with its scales on loading).
"""

from __future__ import annotations

import gc
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from blender_equi360.jobs.job import Job, job_path
from blender_equi360.media.video import probe

from . import official, recipes, samplers, seam
from .configs import component_configs
from .device import device_and_dtype
from .generators import GeneratorReport
from .memory import LOW_VRAM_BLOCKS_PER_GROUP, gigabytes, memory_plan
from .models import LOADED, load_components, load_lora
from .protocol_io import Channel, EngineError
from .recipes import DISTILLED_LORA_STRENGTH, MAX_SEQUENCE_LENGTH, NEGATIVE_PROMPT, Recipe, recipe
from .text_encoder import TextEncoderFiles, check_text_encoder, load_text_encoder
from .weights import CheckpointKind, Header, check_checkpoint, check_lora, checkpoint_kind

# Free GPU memory under which the denoising models leave the GPU for a window's decode. A guess with room
# to spare: the tiled decode's peak at 1920×960×121 has not been measured on a GPU yet (bench/engine_gpu.py).
DECODE_HEADROOM_GB = 24


class _Phases:
    """Progress of one phase at a time, on the protocol."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.stage, self.total, self.started = "", 0, time.monotonic()

    def begin(self, stage: str, total: int) -> None:
        self.channel.check_cancel()
        self.stage, self.total, self.started = stage, total, time.monotonic()
        self.channel.progress(stage, 0, total, self.started)

    def step(self, k: int) -> None:
        self.channel.progress(self.stage, k, self.total, self.started)
        self.channel.check_cancel()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class ModelPaths:
    """The model files a job's recipe needs, checked."""
    checkpoint: Path
    header: Header                # the checkpoint's tensor names, shapes and metadata
    kind: CheckpointKind          # dev or distilled, bf16 or fp8
    text_encoder: TextEncoderFiles  # the Gemma 3 folder, or ComfyUI's single file
    ic_lora: Path
    reference_downscale: int      # the IC-LoRA's reference_downscale_factor
    distilled_lora: Path | None   # set when the recipe fuses it (fast on the dev checkpoint)


def check_models(job: Job, job_dir: Path) -> ModelPaths:
    """All the files the recipe needs, checked from their headers before anything is loaded: the
    distilled LoRA only for the fast preset on the dev checkpoint."""
    models = job.models
    for field, what in (("checkpoint", "LTX-2.3 checkpoint"), ("text_encoder", "text encoder (Gemma 3)"),
                        ("ic_lora", "VR-360 IC-LoRA")):
        if not getattr(models, field):
            raise EngineError("missing_weights", f"the {what} is not set: choose it in the add-on's preferences")
    checkpoint = job_path(job_dir, models.checkpoint)
    header = check_checkpoint(checkpoint)
    kind = checkpoint_kind(checkpoint, header, job.checkpoint_variant)
    if job.preset == "fast" and kind.variant == "dev" and not models.distilled_lora:
        raise EngineError("missing_weights", f"the fast preset on the dev checkpoint ({checkpoint.name}) needs the "
                                             "distilled LoRA (ltx-2.3-22b-distilled-lora-384-1.1.safetensors): "
                                             "choose it in the add-on's preferences, or choose the distilled "
                                             "checkpoint (ltx-2.3-22b-distilled-1.1.safetensors)")
    text_encoder = check_text_encoder(job_path(job_dir, models.text_encoder))
    ic_lora = job_path(job_dir, models.ic_lora)
    _, downscale = check_lora(ic_lora)
    distilled = None
    if job.preset == "fast" and kind.variant == "dev":
        distilled = job_path(job_dir, models.distilled_lora)
        check_lora(distilled, "distilled LoRA")
    return ModelPaths(checkpoint, header, kind, text_encoder, ic_lora, downscale, distilled)


def _check_fits(plan: dict, device: str, low_vram: bool) -> None:
    if device != "cuda":
        return
    import torch
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    need = max(plan.values())
    if need > total * 0.95:
        hint = "use fewer frames or a bigger GPU" if low_vram else "turn on low VRAM in the add-on's preferences"
        raise EngineError("cuda_oom", f"the models need about {need:.0f} GB of GPU memory before activations "
                                      f"and this GPU has {total:.0f} GB: {hint}")


@contextmanager
def _out_of_memory_is_an_error(phases: "_Phases", device: str):
    import torch
    try:
        yield
    except torch.OutOfMemoryError:
        _free(device)
        raise EngineError("cuda_oom", f"CUDA ran out of memory while {phases.stage.replace('_', ' ')}: turn on "
                                      "low VRAM in the add-on's preferences, or use a shorter window") from None


class LtxGenerator:
    """The engine's window generator for LTX-2.3 + the IC-LoRA: :meth:`prepare` encodes the prompt and
    loads the models once; :meth:`generate` makes one window, conditioned on the previous window's last
    frames when there is one."""
    title = None

    def __init__(self, job_dir: Path, job: Job, channel: Channel):
        self.job_dir, self.job, self.channel = job_dir, job, channel
        self.phases = _Phases(channel)
        self.pipe = self.roll = self.embeds = self.plan = None
        self.device = None

    def prepare(self) -> None:
        import torch
        from diffusers import LTX2InContextPipeline

        job, channel = self.job, self.channel
        self.device, self.dtype = device_and_dtype()
        paths = check_models(job, self.job_dir)
        self.downscale = paths.reference_downscale
        self.fps = probe(job_path(self.job_dir, job.reference)).fps  # the canvas was checked by the runner
        configs = component_configs(paths.header)
        self.plan = memory_plan(paths.header, paths.text_encoder.weight_bytes, job.low_vram)
        plan = self.plan
        kind = paths.kind
        channel.log(f"LTX-2.3 {kind.variant}{' fp8' if kind.fp8 else ''} ({paths.checkpoint.name}, told by its "
                    f"{recipes.TOLD_BY[kind.told_by]}) on {self.device} ({self.dtype}), preset {job.preset}"
                    f"{', low VRAM' if job.low_vram else ''}; weights on the device per phase: text "
                    f"{plan['text_gb']} GB, denoise {plan['denoise_gb']} GB, decode {plan['decode_gb']} GB")
        _check_fits(self.plan, self.device, job.low_vram)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.recipe = recipe(job, paths.kind, configs["transformer"]["num_layers"], channel)
        if job.preset == "fast" and paths.kind.variant == "distilled" and job.models.distilled_lora:
            channel.warning("distilled_lora_ignored", f"{paths.checkpoint.name} is the distilled model itself: "
                                                      "the distilled LoRA is not loaded")
        with _out_of_memory_is_an_error(self.phases, self.device):
            # 1. text: Gemma encodes once for every window, then leaves
            self.phases.begin("encode_prompt", 1)
            tokenizer, text_encoder = load_text_encoder(paths.text_encoder.path, self.device, self.dtype)
            text = LTX2InContextPipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=text_encoder,
                                         tokenizer=tokenizer, connectors=None, transformer=None, vocoder=None)
            negative = job.negative_prompt if job.negative_prompt is not None else NEGATIVE_PROMPT
            self.embeds = text.encode_prompt(job.full_prompt, negative,
                                             do_classifier_free_guidance=self.recipe.uses_cfg,
                                             max_sequence_length=MAX_SEQUENCE_LENGTH, device=self.device,
                                             dtype=self.dtype)
            del text, text_encoder
            _free(self.device)
            self.phases.step(1)

            # 2. the denoising models, LoRAs fused
            self.phases.begin("load", len(LOADED))
            loaded = []
            parts = load_components(paths.checkpoint, paths.header, "cpu" if job.low_vram else self.device, self.dtype,
                                    on_loaded=lambda name: (loaded.append(name), self.phases.step(len(loaded))))
            pipe = denoising_pipeline(parts, tokenizer)
            del parts
            _apply_loras(pipe, paths.ic_lora, paths.distilled_lora if self.recipe.distilled_lora else None,
                         job.lora_strength)
            if job.low_vram:
                _low_vram(pipe, self.device, self.dtype)
            pipe.vae.enable_tiling()
            pipe.set_progress_bar_config(disable=True)
            self.roll = seam.LatentRoll(pipe.transformer, self.downscale)
            self.pipe = pipe

    def generate(self, window, frames: np.ndarray, condition: np.ndarray | None, seed: int) -> Iterator[np.ndarray]:
        """``frames``: the window's reference [length, H, W, 3]; ``condition``: the previous window's output
        over the shared frames, pinned at the window's start. The window's frames, decoded."""
        phases = self.phases
        with _out_of_memory_is_an_error(phases, self.device):
            self._models_to(self.device)
            phases.begin("denoise", len(self.recipe.sigmas))
            latents = denoise(self.pipe, self.recipe, self.embeds, frames, condition, num_frames=window.length,
                              frame_rate=float(self.fps), downscale=self.downscale, seed=seed, roll=self.roll,
                              on_step=phases.step)

            # 3. decode, with the transformer off the GPU if the decode needs its room
            self._make_room_for_decode()
            phases.begin("decode", 1)
            video = decode(self.pipe.vae, latents, self.device)
            phases.step(1)
            del latents
            _free(self.device)
        return iter(video[:window.frames])

    def _make_room_for_decode(self) -> None:
        """The tiled decode runs beside the denoising models when the GPU has DECODE_HEADROOM_GB free;
        otherwise they wait on the CPU (it needs their size in RAM) and come back for the next window.
        With low VRAM, group offload already keeps them off the GPU."""
        import torch
        if self.device != "cuda" or self.job.low_vram:
            return
        _free(self.device)
        free = torch.cuda.mem_get_info()[0] / 2**30
        if free < DECODE_HEADROOM_GB:
            self.channel.log(f"{free:.0f} GB free on the GPU: the transformer waits on the CPU during the decode")
            self._models_to("cpu")

    def _models_to(self, device: str) -> None:
        if self.device == "cuda" and not self.job.low_vram and self.pipe.transformer.device.type != device:
            for name in ("transformer", "connectors"):
                getattr(self.pipe, name).to(device)
            _free(self.device)

    def report(self) -> GeneratorReport:
        import torch
        peak = gigabytes(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None
        if peak is not None:
            self.channel.log(f"peak GPU memory: {peak} GB")
        return {"peak_vram_gb": peak, "memory_plan_gb": self.plan}

    def close(self) -> None:
        if self.roll:
            self.roll.remove()
        self.pipe = self.roll = self.embeds = None
        if self.device:
            _free(self.device)


def _apply_loras(pipe, ic_lora: Path, distilled: Path | None, strength: float) -> None:
    """Load the IC-LoRA (and the distilled LoRA) and fuse them into the weights at their strengths."""
    load_lora(pipe, ic_lora, "ic", "VR-360 IC-LoRA")
    adapters, weights = ["ic"], [strength]
    if distilled:
        with warnings.catch_warnings():  # peft warns about any second adapter on one model; two is the plan
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            load_lora(pipe, distilled, "distilled", "distilled LoRA")
        adapters.append("distilled")
        weights.append(DISTILLED_LORA_STRENGTH)
    pipe.set_adapters(adapters, weights)
    pipe.fuse_lora(components=["transformer", "connectors"], lora_scale=1.0, adapter_names=adapters)
    pipe.unload_lora_weights()  # the fused weights stay; the adapters' extra layers go


def _low_vram(pipe, device: str, dtype) -> None:
    """fp8 weight storage, cast per layer to the compute dtype, and blocks streamed to the GPU in groups."""
    import torch
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if device == "cuda":
        pipe.transformer.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                              offload_type="block_level",
                                              num_blocks_per_group=LOW_VRAM_BLOCKS_PER_GROUP, use_stream=True)
        for name in ("connectors", "vae", "audio_vae"):
            getattr(pipe, name).to(device)


def denoising_pipeline(parts: dict, tokenizer=None):
    """The in-context pipeline over loaded components (transformer, connectors, vae, audio_vae), following
    Lightricks' code where diffusers departs from it (:mod:`engine.official`)."""
    pipe = official.in_context_pipeline_class()(scheduler=samplers.scheduler("euler", None), text_encoder=None,
                                                tokenizer=tokenizer,
                                                vocoder=None, **parts)
    official.own_timestep_cross_attention(pipe.transformer)
    return pipe


def denoise(pipe, rec: Recipe, embeds, frames: np.ndarray, condition: np.ndarray | None, *, num_frames: int,
            frame_rate: float, downscale: int = 1, seed: int | None = None, noise=None, roll=None, on_step=None):
    """One window's denoising: the reference ``frames`` (uint8 [F, H, W, 3]) and, for a window after the
    first, the previous window's ``condition`` frames (uint8) pinned at its start, sampled with ``rec``.
    Returns the latents, denormalised ([1, C, F, H, W]), ready for the VAE's decoder.

    ``embeds``: the text encoder's (prompt, mask, negative prompt, mask); ``noise``: the starting latents
    (video [1, C, F, H, W] and audio, denormalised) instead of the seed's; ``roll``: the seam roll
    (:class:`engine.seam.LatentRoll`) installed on the transformer, advanced every step, or None for the
    model alone (as the parity tests run it); ``on_step(k)`` after each of the ``len(rec.sigmas)`` steps."""
    import torch
    from diffusers.pipelines.ltx2 import LTX2ReferenceCondition, LTX2VideoCondition

    height, width = frames.shape[1:3]
    reference = official.reference_pixels(frames, height // downscale, width // downscale)
    pipe.scheduler = samplers.scheduler(rec.sampler, seed)  # fresh each window: the ancestral noise is seeded
    if roll:
        roll.advance(0)

    def after_step(_pipe, i, _t, _kwargs):
        if roll:
            roll.advance(i + 1)
        if on_step:
            on_step(i + 1)
        return {}

    prompt_embeds, prompt_mask, negative_embeds, negative_mask = embeds
    start = dict(latents=noise[0], audio_latents=noise[1], noise_scale=0.0) if noise is not None else \
        dict(generator=torch.Generator("cpu").manual_seed(seed))
    conditions = [LTX2VideoCondition(frames=condition, index=0, strength=1.0)] if condition is not None else None
    latents, _audio = pipe(
        prompt_embeds=prompt_embeds, prompt_attention_mask=prompt_mask,
        negative_prompt_embeds=negative_embeds if rec.uses_cfg else None,
        negative_prompt_attention_mask=negative_mask if rec.uses_cfg else None,
        conditions=conditions, reference_conditions=[LTX2ReferenceCondition(frames=reference, strength=1.0)],
        reference_downscale_factor=downscale, height=height, width=width, num_frames=num_frames,
        frame_rate=frame_rate, sigmas=list(rec.sigmas), num_inference_steps=len(rec.sigmas),
        output_type="latent", return_dict=False, callback_on_step_end=after_step,
        max_sequence_length=prompt_embeds.shape[1], **start, **rec.guidance)
    return latents


def decode(vae, latents, device: str):
    """Latents (already denormalised) → uint8 video [F, H, W, 3] on the CPU, as the pipeline would decode
    them with its default decode timestep of 0, but wrapping around the canvas's width."""
    import torch
    latents = latents.to(device=device, dtype=vae.dtype)
    temb = torch.zeros(latents.shape[0], device=device, dtype=latents.dtype) if vae.config.timestep_conditioning \
        else None
    with torch.no_grad():
        video = seam.decode_wrapped(vae, latents, temb)
    video = ((video[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()
