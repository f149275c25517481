# SPDX-License-Identifier: GPL-3.0-or-later
"""The sampler settings: what each preset runs (``job.preset``) on each checkpoint.

- ``quality``: the dev checkpoint with Lightricks' official LTX-2.3 guidance — CFG 3, STG 1 on block 28,
  rescale 0.7, modality isolation 3; audio CFG 7 — over their fixed-shift schedule of 30 steps
  (``steps`` changes the count; the schedule is :func:`engine.official.fixed_shift_sigmas`), stepped
  with Euler. The distilled checkpoint is refused: it is made for CFG 1.
- ``fast``: the VR-360 LoRA author's recipe — the 8 distilled sigmas, every guidance term off (video and
  audio alike), ComfyUI's euler_ancestral (:mod:`engine.samplers`) — on the distilled checkpoint, or on
  dev with the distilled LoRA fused at 0.5.

Both honour ``seed``, ``prompt`` (after the author's prompt, which holds the LoRA's trigger word),
``negative_prompt`` (NEGATIVE_PROMPT when the job gives none; only the guided recipe uses it),
``lora_strength`` and ``sampler`` (``auto``: the preset's).
"""

from __future__ import annotations

from dataclasses import dataclass

from blender_equi360.jobs.job import Job

from . import official
from .protocol_io import Channel, EngineError
from .weights import CheckpointKind

QUALITY_STEPS = 30
DISTILLED_SIGMAS = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875)  # then 0
DISTILLED_LORA_STRENGTH = 0.5
STG_BLOCK = 28  # Lightricks' STG block of the 48-layer 2.3 transformer (the last one in a shallower test model)
MAX_SEQUENCE_LENGTH = 1024  # prompt tokens the text encoder reads
# The text encoder's negative prompt for the quality recipe when the job gives none.
NEGATIVE_PROMPT = ("blurry, out of focus, low quality, worst quality, jpeg artifacts, distorted, warped, "
                   "visible seam, stitching line, smeared poles, watermark, text, logo")
NO_GUIDANCE = dict(guidance_scale=1.0, audio_guidance_scale=1.0, stg_scale=0.0, audio_stg_scale=0.0,
                   modality_scale=1.0, audio_modality_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0,
                   spatio_temporal_guidance_blocks=None)


PRESET_SAMPLERS = {"quality": "euler", "fast": "euler_ancestral"}  # for the job's sampler "auto"
TOLD_BY = {"job": "job's checkpoint_variant", "metadata": "metadata", "name": "file name"}


@dataclass(frozen=True)
class Recipe:
    sigmas: tuple[float, ...]  # the pipeline appends the final 0
    guidance: dict             # the in-context pipeline's guidance keywords
    distilled_lora: bool       # fuse the distilled LoRA (the fast recipe on the dev checkpoint)
    sampler: str = "euler"     # engine.samplers.SAMPLERS

    @property
    def uses_cfg(self) -> bool:
        return self.guidance["guidance_scale"] > 1 or self.guidance["audio_guidance_scale"] > 1


def recipe(job: Job, kind: CheckpointKind, num_layers: int, channel: Channel | None = None) -> Recipe:
    """The preset's recipe on a checkpoint of this ``kind`` and ``num_layers`` blocks (STG's block is the
    last of a shallower test model). Refuses the guided preset on the distilled checkpoint."""
    sampler = PRESET_SAMPLERS[job.preset] if job.sampler == "auto" else job.sampler
    if job.preset == "fast":
        if job.steps is not None and channel:
            channel.warning("steps_ignored", f"the fast preset has a fixed {len(DISTILLED_SIGMAS)}-step "
                                             f"distilled schedule; steps={job.steps} is ignored")
        return Recipe(DISTILLED_SIGMAS, dict(NO_GUIDANCE), distilled_lora=kind.variant == "dev", sampler=sampler)
    if kind.variant == "distilled":
        raise EngineError("wrong_recipe", "the quality preset is the guided dev recipe, and this checkpoint is the "
                                          f"distilled model (told by its {TOLD_BY[kind.told_by]}), made for 8 steps "
                                          "at CFG 1: choose the fast preset, or the dev checkpoint "
                                          "(ltx-2.3-22b-dev.safetensors) for quality")
    guided = dict(guidance_scale=3.0, stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7,
                  audio_guidance_scale=7.0, audio_stg_scale=1.0, audio_modality_scale=3.0,
                  audio_guidance_rescale=0.7, spatio_temporal_guidance_blocks=[min(STG_BLOCK, num_layers - 1)])
    return Recipe(official.fixed_shift_sigmas(job.steps or QUALITY_STEPS), guided, distilled_lora=False,
                  sampler=sampler)
