# SPDX-License-Identifier: GPL-3.0-or-later
"""The samplers a recipe can step with: ``euler`` (diffusers' flow-matching Euler, Lightricks' own) and
``euler_ancestral``, the one the VR-360 LoRA's author samples with in ComfyUI.

ComfyUI's ``euler_ancestral`` on a flow-matching model (its rectified-flow variant, eta 1, noise scale 1)
steps each token from sigma ``s`` to ``s'`` by going down to ``s_down = s'^2 / s`` along the Euler line
towards the model's clean estimate ``x0``, then scaling the signal up to ``1 - s'`` and adding fresh noise,
so that the sample is again ``(1 - s') x0 + s' noise`` in distribution:

    x ← (s_down / s) x + (1 - s_down / s) x0
    x ← (1 - s') / (1 - s_down) · x + sqrt(s'^2 - s_down^2 (1 - s')^2 / (1 - s_down)^2) · ε

and the last step (to 0) is ``x0`` itself. Tokens pinned by the in-context pipeline (the reference, and the
previous window's frames) stay as they are: ComfyUI resets them to their clean latents before every model
call, which the pipeline's mask does here.
"""

from __future__ import annotations

import functools

SAMPLERS = ("euler", "euler_ancestral")


def scheduler(sampler: str, seed: int | None):
    """A fresh scheduler for ``sampler``; the ancestral one draws its noise from ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    settings = dict(use_dynamic_shifting=False, shift_terminal=None)
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(**settings)
    ancestral = ancestral_scheduler_class()(**settings)
    ancestral.reseed(0 if seed is None else seed)
    return ancestral


def ancestral_step(sample, x0, sigma: float, sigma_next: float, noise):
    """One euler_ancestral step from ``sigma`` to ``sigma_next`` (float32 tensors in, float32 out)."""
    if sigma_next == 0:
        return x0
    sigma_down = sigma_next * sigma_next / sigma
    toward = sigma_down / sigma
    x = toward * sample + (1 - toward) * x0
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return alpha_next / alpha_down * x + renoise * noise


@functools.cache
def ancestral_scheduler_class():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

    class AncestralFlowScheduler(FlowMatchEulerDiscreteScheduler):
        """diffusers' flow-matching scheduler stepping as ComfyUI's euler_ancestral. The pipeline hands
        ``step`` the velocity, so ``x0 = sample - sigma · velocity``; :meth:`pin` names the tokens to keep."""

        _noise = None   # torch.Generator on the CPU, so that a seed gives the same noise on every device
        _pinned = None  # (1, tokens, 1): 1 for tokens that stay as they are

        def reseed(self, seed: int) -> None:
            import torch
            self._noise = torch.Generator("cpu").manual_seed(seed)

        def pin(self, mask) -> None:
            self._pinned = mask

        def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            import torch
            if self.step_index is None:
                self._init_step_index(timestep)
            sigma = float(self.sigmas[self.step_index])
            sigma_next = float(self.sigmas[self.step_index + 1])
            current = sample.to(torch.float32)
            x0 = current - sigma * model_output.to(torch.float32)
            noise = torch.randn(current.shape, generator=self._noise, dtype=torch.float32).to(current.device)
            stepped = ancestral_step(current, x0, sigma, sigma_next, noise)
            pinned = self._pinned
            if pinned is not None and pinned.shape[1] == current.shape[1]:  # not the audio's tokens
                keep = pinned[:1].to(device=current.device, dtype=torch.float32)
                stepped = keep * current + (1 - keep) * stepped
            self._step_index += 1
            stepped = stepped.to(model_output.dtype)
            return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=stepped) if return_dict else (stepped,)

    return AncestralFlowScheduler
