# SPDX-License-Identifier: GPL-3.0-or-later
"""Key conversion between Lightricks' single-file LTX-2.3 checkpoint and diffusers' components.

diffusers' ``from_single_file`` takes the LTX-2.0 config and renames and silently leaves 2.3-only
weights uninitialised, so the engine converts itself and loads with ``strict=True``. The tables
follow diffusers' ``convert_ltx2_to_diffusers.py --version 2.3``; each is a list of substring renames
applied in order, and reversible, so tiny test checkpoints can be written in the original layout.
"""

from __future__ import annotations

CHECKPOINT_TRANSFORMER_PREFIX = "model.diffusion_model."

# (Lightricks, diffusers): longer names first, where one contains another.
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
    ("audio_prompt_adaln_single", "audio_prompt_adaln"),
    ("prompt_adaln_single", "prompt_adaln"),
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


def _rename(key: str, substrings, heads) -> str:
    for old, new in heads:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    for old, new in substrings:
        key = key.replace(old, new)
    return key


def _reverse(pairs):
    return tuple((new, old) for old, new in reversed(pairs))


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
    key = _rename(key, _reverse(CONNECTOR_RENAMES), ())
    return key if key.startswith("text_embedding_projection.") else CHECKPOINT_TRANSFORMER_PREFIX + key


def is_connector_key(key: str) -> bool:
    return any(marker in key for marker in CONNECTOR_MARKERS)


def transformer_state_dict(checkpoint: dict) -> dict:
    """The diffusers transformer's state dict from a single-file checkpoint's tensors."""
    n = len(CHECKPOINT_TRANSFORMER_PREFIX)
    return {transformer_key_to_diffusers(k[n:]): v for k, v in checkpoint.items()
            if k.startswith(CHECKPOINT_TRANSFORMER_PREFIX) and not is_connector_key(k)}


def connectors_state_dict(checkpoint: dict) -> dict:
    """The diffusers text connectors' state dict from a single-file checkpoint's tensors."""
    n = len(CHECKPOINT_TRANSFORMER_PREFIX)
    out = {}
    for key, value in checkpoint.items():
        if key.startswith(CHECKPOINT_TRANSFORMER_PREFIX) and is_connector_key(key):
            out[connector_key_to_diffusers(key[n:])] = value
        elif key.startswith("text_embedding_projection."):
            out[connector_key_to_diffusers(key)] = value
    return out
