# SPDX-License-Identifier: GPL-3.0-or-later
"""Where diffusers' LTX-2.3 IC-LoRA pipeline (0.42.1) departs from Lightricks' own code, the engine follows
Lightricks: ltx-core / ltx-pipelines 1.2.0, the version ComfyUI follows too, and the one the VR-360 IC-LoRA
was trained and published with. Each departure below was found by comparing both on the same weights
(tests/test_engine_parity.py holds the official outputs); diffusers stays the backbone.

1. **The reference's pixels** (:func:`reference_pixels`). diffusers reads NumPy frames as values in
   [0, 1]; handed the uint8 frames the engine decodes, its VAE saw pixels in [−1, 509]. The official code
   maps 0…255 to −1…1, so the frames go in as floats in [0, 1]. (The continuation frames' condition maps
   0…255 itself, as the official one does.)
2. **Downscaled references** (:func:`reference_pixels`). A LoRA trained on references
   ``reference_downscale_factor`` times smaller gets them resized as ltx-pipelines does: bilinear, without
   antialiasing, scaled to cover and centre-cropped (diffusers: nearest, antialiased, no crop).
3. **x0 per token under guidance** (:class:`InContextPipeline`). The official guider turns each token's
   velocity into x0 with the token's own timestep: 0 for the reference and for pinned frames, whose x0 is
   then their own clean latents in every pass. diffusers uses the step's sigma for all of them, which gives
   the reference spurious guidance deltas that also enter the rescale's statistics (21 % off in the first
   step's velocity of the guided recipe).
4. **A/V cross-attention modulation** (:func:`own_timestep_cross_attention`). ltx-core 1.2 feeds each
   token's own timestep into the audio–video cross-attention scale and shift (the gates keep the step's
   sigma); diffusers feeds the other modality's sigma. It matters for the reference and pinned tokens.
5. **The guided schedule** (:func:`fixed_shift_sigmas`): computed in float32, as the official scheduler
   does (its first sigma is 0.99999982, not 1.0; ×1000 in the timestep embedding, that alone moves the
   guided results by 1e-5 to 1e-4).

Attention strength below 1 (diffusers' ``conditioning_attention_strength``) is left at 1: the official code
encodes it differently (a log bias), and the engine never lowers it.
"""

from __future__ import annotations

import math

import numpy as np


def reference_pixels(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference's uint8 frames ``[F, H, W, 3]`` as the pipeline must receive them: float32 in [0, 1],
    at ``height`` × ``width`` (the canvas divided by the LoRA's downscale factor), resized as ltx-pipelines
    resizes: bilinear (no antialiasing, pixel centres aligned as ``align_corners=False``), scaled to cover,
    centre-cropped."""
    if frames.shape[1:3] == (height, width):
        return frames.astype(np.float32) / np.float32(255.0)
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    scale = max(height / video.shape[2], width / video.shape[3])
    covered = (max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale)))
    video = torch.nn.functional.interpolate(video, size=covered, mode="bilinear", align_corners=False,
                                            antialias=False)
    top, left = (covered[0] - height) // 2, (covered[1] - width) // 2
    video = video[:, :, top:top + height, left:left + width]
    return (video.permute(0, 2, 3, 1) / 255.0).clamp(0, 1).contiguous().numpy()


def fixed_shift_sigmas(steps: int, shift: float = 2.05, terminal: float = 0.1) -> tuple[float, ...]:
    """Lightricks' LTX-2 schedule at its default token count, in float32 as theirs: a logistic shift by
    ``exp(shift)`` of a linear ramp, stretched so that the last nonzero sigma is ``terminal``. The pipeline
    appends the final 0."""
    one = np.float32(1.0)
    ramp = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)[:-1]
    e = np.float32(math.exp(shift))
    # e / (e + 1/t − 1) as torch evaluates a number over a tensor: the number times the tensor's reciprocal
    sigmas = e * (one / (e + (one / ramp - one)))
    one_minus = one - sigmas
    sigmas = one - one_minus / (one_minus[-1] / np.float32(1.0 - terminal))
    return tuple(float(s) for s in sigmas.astype(np.float32))


def in_context_pipeline_class():
    """diffusers' ``LTX2InContextPipeline`` with x0 computed per token (departure 3)."""
    from diffusers import LTX2InContextPipeline

    class InContextPipeline(LTX2InContextPipeline):
        _token_conditioning = None  # (1, N, 1): 1 where a token is pinned (reference, continuation frames)

        def prepare_latents(self, *args, **kwargs):
            prepared = super().prepare_latents(*args, **kwargs)
            self._token_conditioning = prepared[1]
            if hasattr(self.scheduler, "pin"):  # the ancestral sampler keeps pinned tokens as they are
                self.scheduler.pin(prepared[1])
            return prepared

        def convert_velocity_to_x0(self, sample, denoised_output, step_idx, scheduler=None):
            sigma = (scheduler or self.scheduler).sigmas[step_idx]
            pinned = self._token_conditioning
            if scheduler not in (None, self.scheduler) or pinned is None or pinned.shape[1] != sample.shape[1]:
                return sample - denoised_output * sigma  # audio, or a run without conditioning
            return sample - denoised_output * (sigma * (1 - pinned[:1].to(denoised_output.dtype)))

    return InContextPipeline


def own_timestep_cross_attention(transformer) -> list:
    """Feed the audio–video cross-attention scale/shift each token's own timestep (departure 4). Returns
    the hook handles. Installed after any hook that rearranges the tokens (the seam roll), so it sees the
    timesteps as the transformer does."""
    own = {}

    def remember(_module, args, kwargs):
        own["video"], own["audio"] = kwargs.get("timestep"), kwargs.get("audio_timestep")
        return None

    def use(modality):
        def swap(_module, args, kwargs):
            timestep = own.get(modality)
            if timestep is None:
                return None
            return (timestep.flatten(), *args[1:]), kwargs
        return swap

    return [transformer.register_forward_pre_hook(remember, with_kwargs=True),
            transformer.av_cross_attn_video_scale_shift.register_forward_pre_hook(use("video"), with_kwargs=True),
            transformer.av_cross_attn_audio_scale_shift.register_forward_pre_hook(use("audio"), with_kwargs=True)]
