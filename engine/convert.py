# SPDX-License-Identifier: GPL-3.0-or-later
"""Key conversion between Lightricks' single-file LTX-2.3 checkpoint and diffusers' five components.

diffusers' ``from_single_file`` takes the LTX-2.0 config and renames and silently leaves 2.3-only
weights uninitialised, so the engine converts itself and loads with ``strict=True``. The tables follow
diffusers' ``convert_ltx2_to_diffusers.py --version 2.3`` and the module names of Lightricks' ltx-core.
Every mapping is reversible, so tiny test checkpoints are written in the original layout by the same
tables that read the real one.

The single file holds, by prefix: ``model.diffusion_model.*`` (the transformer, plus the text
connectors' blocks), top-level ``text_embedding_projection.*`` (the connectors' input projections),
``vae.*``, ``audio_vae.*`` and ``vocoder.*``.
"""

from __future__ import annotations

import re

COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")
TRANSFORMER_PREFIX = "model.diffusion_model."

# (Lightricks, diffusers) substring renames, applied in order: longer names first where one contains another.
TRANSFORMER_RENAMES = (
    ("audio_patchify_proj", "audio_proj_in"),
    ("patchify_proj", "proj_in"),
    ("av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift"),
    ("av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate"),
    ("av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift"),
    ("av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"),
    ("scale_shift_table_a2v_ca_video", "video_a2v_cross_attn_scale_shift_table"),
    ("scale_shift_table_a2v_ca_audio", "audio_a2v_cross_attn_scale_shift_table"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("prompt_adaln_single", "prompt_adaln"),  # and audio_prompt_adaln_single
)
# Renames of a key's first component only ("adaln_single" also ends other names).
TRANSFORMER_HEAD_RENAMES = (
    ("audio_adaln_single.", "audio_time_embed."),
    ("adaln_single.", "time_embed."),
)
# Keys under the transformer prefix that belong to the text connectors instead.
CONNECTOR_MARKERS = ("video_embeddings_connector", "audio_embeddings_connector", "transformer_1d_blocks",
                     "text_embedding_projection")
CONNECTOR_RENAMES = (
    ("video_embeddings_connector", "video_connector"),
    ("audio_embeddings_connector", "audio_connector"),
    ("transformer_1d_blocks", "transformer_blocks"),
    ("text_embedding_projection.video_aggregate_embed", "video_text_proj_in"),
    ("text_embedding_projection.audio_aggregate_embed", "audio_text_proj_in"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
)
OPTIONAL_CONNECTOR_HEAD = "connectors."  # some exports nest the connectors one level deeper

# The video VAE numbers its stages flat (a stage's resnets, then its resampler, as separate blocks);
# diffusers nests the resampler in the stage. Index i of the original maps to entry i here.
VAE_ENCODER_BLOCKS = ("down_blocks.0", "down_blocks.0.downsamplers.0", "down_blocks.1",
                      "down_blocks.1.downsamplers.0", "down_blocks.2", "down_blocks.2.downsamplers.0",
                      "down_blocks.3", "down_blocks.3.downsamplers.0", "mid_block")
VAE_DECODER_BLOCKS = ("mid_block", "up_blocks.0.upsamplers.0", "up_blocks.0", "up_blocks.1.upsamplers.0",
                      "up_blocks.1", "up_blocks.2.upsamplers.0", "up_blocks.2", "up_blocks.3.upsamplers.0",
                      "up_blocks.3")
VAE_RENAMES = (
    ("res_blocks", "resnets"),
    ("decoder.last_time_embedder", "decoder.time_embedder"),
    ("decoder.last_scale_shift_table", "decoder.scale_shift_table"),
    ("per_channel_statistics.mean-of-means", "latents_mean"),
    ("per_channel_statistics.std-of-means", "latents_std"),
)
# Statistics the checkpoint keeps that diffusers does not use.
VAE_UNUSED = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")
AUDIO_VAE_RENAMES = (
    ("per_channel_statistics.mean-of-means", "latents_mean"),
    ("per_channel_statistics.std-of-means", "latents_std"),
)
# The vocoder file nests ``vocoder.*`` (first stage), ``bwe_generator.*`` and ``mel_stft.*`` under ``vocoder.``.
VOCODER_RENAMES = (
    (".ups.", ".upsamplers."),  # not a bare "ups": that is also in "upsample"
    (".resblocks.", ".resnets."),
    (".conv_pre.", ".conv_in."),
    (".conv_post.", ".conv_out."),
    (".act_post.", ".act_out."),
    (".downsample.lowpass.", ".downsample."),
)
VOCODER_RECOMPUTED = ".resampler."  # a filter both sides compute at build time; never loaded


def _rename(key: str, substrings, heads=()) -> str:
    for old, new in heads:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    for old, new in substrings:
        key = key.replace(old, new)
    return key


def _reverse(pairs):
    return tuple((new, old) for old, new in reversed(pairs))


# --- transformer and connectors ----------------------------------------------------------------------

def transformer_key_to_diffusers(key: str) -> str:
    """A key of ``model.diffusion_model.*`` (prefix already removed) → the diffusers transformer's."""
    return _rename(key, TRANSFORMER_RENAMES, TRANSFORMER_HEAD_RENAMES)


def transformer_key_to_checkpoint(key: str) -> str:
    """The inverse of :func:`transformer_key_to_diffusers` (to write checkpoints in the original layout)."""
    return _rename(key, _reverse(TRANSFORMER_RENAMES), _reverse(TRANSFORMER_HEAD_RENAMES))


def connector_key_to_diffusers(key: str) -> str:
    """A connector key (``model.diffusion_model.`` removed, or a top-level ``text_embedding_projection.*``)
    → the diffusers ``LTX2TextConnectors``'."""
    return _rename(key, CONNECTOR_RENAMES, ((OPTIONAL_CONNECTOR_HEAD, ""),))


def connector_key_to_checkpoint(key: str) -> str:
    """The full single-file key of a diffusers connector key."""
    key = _rename(key, _reverse(CONNECTOR_RENAMES))
    return key if key.startswith("text_embedding_projection.") else TRANSFORMER_PREFIX + key


def is_connector_key(key: str) -> bool:
    return any(marker in key for marker in CONNECTOR_MARKERS)


# --- video VAE -----------------------------------------------------------------------------------------

_VAE_BLOCK = re.compile(r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.")


def vae_key_to_diffusers(key: str) -> str | None:
    """A ``vae.*`` key (prefix removed) → ``AutoencoderKLLTX2Video``'s; None for statistics it does not keep."""
    if key in VAE_UNUSED:
        return None
    match = _VAE_BLOCK.match(key)
    if match:
        side, index = match.group(1), int(match.group(2))
        blocks = VAE_ENCODER_BLOCKS if side.startswith("encoder") else VAE_DECODER_BLOCKS
        key = f"{side.split('.')[0]}.{blocks[index]}." + key[match.end():]
    return _rename(key, VAE_RENAMES)


def vae_key_to_checkpoint(key: str) -> str:
    key = _rename(key, _reverse(VAE_RENAMES))
    for side, blocks, original in (("encoder.", VAE_ENCODER_BLOCKS, "down_blocks"),
                                   ("decoder.", VAE_DECODER_BLOCKS, "up_blocks")):
        if not key.startswith(side):
            continue
        inner = key[len(side):]
        # Longest first: "down_blocks.0.downsamplers.0." before "down_blocks.0.".
        for index, block in sorted(enumerate(blocks), key=lambda item: -len(item[1])):
            if inner.startswith(block + "."):
                return f"{side}{original}.{index}." + inner[len(block) + 1:]
    return key


# --- the single file -------------------------------------------------------------------------------------

def key_to_diffusers(key: str) -> tuple[str, str] | None:
    """A single-file key → (component, diffusers key), or None for tensors no component uses."""
    if key.startswith(TRANSFORMER_PREFIX):
        inner = key[len(TRANSFORMER_PREFIX):]
        if is_connector_key(inner):
            return "connectors", connector_key_to_diffusers(inner)
        return "transformer", transformer_key_to_diffusers(inner)
    if key.startswith("text_embedding_projection."):
        return "connectors", connector_key_to_diffusers(key)
    if key.startswith("vae."):
        inner = vae_key_to_diffusers(key[len("vae."):])
        return None if inner is None else ("vae", inner)
    if key.startswith("audio_vae."):
        return "audio_vae", _rename(key[len("audio_vae."):], AUDIO_VAE_RENAMES)
    if key.startswith("vocoder."):
        if VOCODER_RECOMPUTED in key:
            return None
        return "vocoder", _rename(key[len("vocoder."):], VOCODER_RENAMES)
    return None


def key_to_checkpoint(component: str, key: str) -> str:
    """A diffusers key of ``component`` → its single-file key (the inverse of :func:`key_to_diffusers`)."""
    if component == "transformer":
        return TRANSFORMER_PREFIX + transformer_key_to_checkpoint(key)
    if component == "connectors":
        return connector_key_to_checkpoint(key)
    if component == "vae":
        return "vae." + vae_key_to_checkpoint(key)
    if component == "audio_vae":
        return "audio_vae." + _rename(key, _reverse(AUDIO_VAE_RENAMES))
    if component == "vocoder":
        return "vocoder." + _rename(key, _reverse(VOCODER_RENAMES))
    raise ValueError(component)


def split_checkpoint(keys) -> dict[str, dict[str, str]]:
    """For each component, ``{diffusers key: single-file key}``, so tensors can be read one at a time."""
    plan = {name: {} for name in COMPONENTS}
    for key in keys:
        target = key_to_diffusers(key)
        if target is not None:
            plan[target[0]][target[1]] = key
    return plan


def to_checkpoint(component: str, state_dict: dict) -> dict:
    """A component's diffusers state dict with single-file key names."""
    return {key_to_checkpoint(component, k): v for k, v in state_dict.items()}
