# SPDX-License-Identifier: GPL-3.0-or-later
"""A seamless wrap for the equirect canvas: the left and right edges are neighbours on the sphere.

During denoising the transformer sees the whole canvas — target *and* reference tokens — rolled along
the width by a different amount at each step, and its prediction is rolled back before the pipeline uses
it. So the edge the model sees moves every step and no column is always at the border, while everything
the pipeline keeps (the latents, the pinned reference, the scheduler's state) stays in the canvas's own
frame: nothing needs unrolling at the end, and the reference stays pinned. Token positions (RoPE) do not
roll: the model sees the scene turned about the vertical axis, as it would see any other panorama.

At the end the VAE decodes the latents padded circularly along the width, so its convolutions see the
other edge too, and the padding is cropped off.
"""

from __future__ import annotations

ROLL_PER_STEP = 0.25   # of the width: the edge lands on four different columns in turn
DECODE_WRAP_LATENTS = 8  # latent columns of each edge decoded with the other (see decode_wrapped)


def roll_tokens(tokens, grid: tuple[int, int, int], shift: int, reference_factor: int = 1):
    """Roll packed video tokens ``[B, N, C]`` along the width: the first ``F·H·W`` (the target, laid out
    frame, row, column) by ``shift``, the rest (the reference, ``reference_factor`` times smaller in
    space) by ``shift / reference_factor``."""
    import torch

    frames, height, width = grid
    base = frames * height * width
    batch, count, channels = tokens.shape
    parts = [tokens[:, :base].reshape(batch, frames, height, width, channels).roll(shift, dims=3)
             .reshape(batch, base, channels)]
    if count > base:
        ref_h, ref_w = height // reference_factor, width // reference_factor
        ref = tokens[:, base:]
        ref_frames = ref.shape[1] // (ref_h * ref_w)
        parts.append(ref.reshape(batch, ref_frames, ref_h, ref_w, channels)
                     .roll(shift // reference_factor, dims=3).reshape(batch, -1, channels))
    return torch.cat(parts, dim=1)


class LatentRoll:
    """Installs the per-step roll on a transformer; :meth:`advance` moves to the next step's shift."""

    def __init__(self, transformer, reference_factor: int = 1, per_step: float = ROLL_PER_STEP):
        self.reference_factor, self.per_step = reference_factor, per_step
        self.step, self._current = 0, None
        # First of the transformer's hooks: the others (engine/official.py) see the tokens as it does.
        self._handles = [transformer.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
                         transformer.register_forward_hook(self._after, with_kwargs=True)]

    def shift(self, width: int) -> int:
        f = self.reference_factor
        raw = int(round(self.step * self.per_step * width)) % width
        return raw - raw % f  # the reference rolls by whole tokens too

    def advance(self, step: int) -> None:
        self.step = step

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, _module, args, kwargs):
        if kwargs.get("video_self_attention_mask") is not None:  # a per-token mask would need rolling too
            self._current = None
            return args, kwargs
        grid = (kwargs["num_frames"], kwargs["height"], kwargs["width"])
        shift = self.shift(grid[2])
        self._current = (grid, shift) if shift else None
        if shift:
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = roll_tokens(kwargs["hidden_states"], grid, shift, self.reference_factor)
            timestep = kwargs.get("timestep")
            if timestep is not None and timestep.ndim == 2:  # per token: the reference's is 0
                per_token = timestep[..., None]
                kwargs["timestep"] = roll_tokens(per_token, grid, shift, self.reference_factor)[..., 0]
        return args, kwargs

    def _after(self, _module, _args, _kwargs, output):
        if self._current is None:
            return output
        grid, shift = self._current
        video, *rest = output
        return (roll_tokens(video, grid, -shift, self.reference_factor), *rest)


def decode_wrapped(vae, latents, temb, pad: int = DECODE_WRAP_LATENTS):
    """Decode ``[B, C, F, H, W]`` latents with ``pad`` columns of the other edge on each side, so the
    decoder's receptive field wraps; returns the decoded video without the padding.

    How far the LTX-2.3 decoder sees, measured on the full-size decoder (random weights) as how far
    decoding is from commuting with a one-column roll: mean error 3e-3 with 4 columns of padding, 3e-5
    with 8, 0 with 12 (outputs in [-1, 1])."""
    import torch

    pad = min(pad, latents.shape[-1])
    wrapped = torch.cat([latents[..., -pad:], latents, latents[..., :pad]], dim=-1) if pad else latents
    video = vae.decode(wrapped, temb, return_dict=False)[0]
    crop = pad * vae.spatial_compression_ratio
    return video[..., crop:video.shape[-1] - crop] if crop else video
