# SPDX-License-Identifier: GPL-3.0-or-later
"""Each component's diffusers config, for one checkpoint.

Lightricks' releases carry their model's configuration in the file's metadata (``config``: a JSON object
with ``transformer``, ``vae``, ``audio_vae`` and ``scheduler`` sections, in ltx-core's own terms), and so do
the tiny models the tests make. When it is there, the diffusers config of each component is read off it
(:func:`from_metadata`); a file without it gets LTX-2.3 22B's (:data:`LTX23_CONFIGS`). The text
connectors' input width is the Gemma's hidden size (``caption_channels``) times its hidden states, which
ltx-core takes from the Gemma folder: it is read here off the projection's weight shape instead.
"""

from __future__ import annotations

import json
import re

from .protocol_io import EngineError
from .weights import Header

METADATA_KEY = "config"
TEXT_PROJECTION = "text_embedding_projection.video_aggregate_embed.weight"

LTX23_CONFIGS = {
    "transformer": dict(
        in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
        attention_head_dim=128, cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20,
        base_height=2048, base_width=2048, audio_in_channels=128, audio_out_channels=128, audio_patch_size=1,
        audio_patch_size_t=1, audio_num_attention_heads=32, audio_attention_head_dim=64,
        audio_cross_attention_dim=2048, audio_scale_factor=4, audio_pos_embed_max_pos=20,
        audio_sampling_rate=16000, audio_hop_length=160, num_layers=48, activation_fn="gelu-approximate",
        qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840,
        attention_bias=True, attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True,
        causal_offset=1, timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000,
        rope_type="split", gated_attn=True, cross_attn_mod=True, audio_gated_attn=True,
        audio_cross_attn_mod=True, use_prompt_embeddings=False, perturbed_attn=True),
    "connectors": dict(
        caption_channels=3840, text_proj_in_factor=49, video_connector_num_attention_heads=32,
        video_connector_attention_head_dim=128, video_connector_num_layers=8,
        video_connector_num_learnable_registers=128, video_gated_attn=True,
        audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64,
        audio_connector_num_layers=8, audio_connector_num_learnable_registers=128, audio_gated_attn=True,
        connector_rope_base_seq_len=4096, rope_theta=10000.0, rope_double_precision=True,
        causal_temporal_positioning=False, rope_type="split", per_modality_projections=True,
        video_hidden_dim=4096, audio_hidden_dim=2048, proj_bias=True),
    # Stage depths and timestep conditioning are read from the checkpoint's tensor names (vae_depths).
    "vae": dict(
        latent_channels=128, block_out_channels=(256, 512, 1024, 1024),
        decoder_block_out_channels=(256, 512, 512, 1024),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True, True),
        decoder_inject_noise=(False, False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
        upsample_residual=(False, False, False, False), upsample_factor=(2, 2, 1, 2), patch_size=4,
        encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros",
        decoder_spatial_padding_mode="zeros", spatial_compression_ratio=32, temporal_compression_ratio=8),
    "audio_vae": {},  # diffusers' defaults are LTX-2's audio VAE (unchanged in 2.3)
}

# ltx-core's VAE stages → diffusers' resampling kinds (the encoder's end in "_res": residual downsampling).
_RESAMPLING = {"compress_space": "spatial", "compress_time": "temporal", "compress_all": "spatiotemporal"}


def component_configs(header: Header) -> dict:
    """The diffusers config of each component of this checkpoint (transformer, connectors, vae, audio_vae)."""
    raw = header.metadata.get(METADATA_KEY)
    if raw:
        text_width = header.shapes[TEXT_PROJECTION][1] if TEXT_PROJECTION in header.shapes else None
        try:
            return from_metadata(json.loads(raw), text_width)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise EngineError("corrupt_weights", f"the checkpoint's config metadata cannot be read ({err!r}): "
                                                 "download the file again") from None
    configs = {name: dict(config) for name, config in LTX23_CONFIGS.items()}
    configs["vae"].update(vae_depths(header.keys))
    return configs


def from_metadata(config: dict, text_width: int | None = None) -> dict:
    """diffusers configs from Lightricks' ``config`` metadata (ltx-core's names and layout); ``text_width``:
    the text projection's input width (the Gemma's hidden size × its hidden states; None: Gemma 3 12B's)."""
    t = config["transformer"]
    return {"transformer": _transformer(t), "connectors": _connectors(t, text_width),
            "vae": _video_vae(config["vae"]), "audio_vae": _audio_vae(config["audio_vae"])}


def _transformer(t: dict) -> dict:
    max_pos = t["positional_embedding_max_pos"]
    gated, cross_mod = t.get("apply_gated_attention", False), t.get("cross_attention_adaln", False)
    return dict(
        in_channels=t["in_channels"], out_channels=t["out_channels"], patch_size=1, patch_size_t=1,
        num_attention_heads=t["num_attention_heads"], attention_head_dim=t["attention_head_dim"],
        cross_attention_dim=t["cross_attention_dim"], vae_scale_factors=(8, 32, 32),
        pos_embed_max_pos=max_pos[0], base_height=max_pos[1], base_width=max_pos[2],
        audio_in_channels=t["audio_in_channels"], audio_out_channels=t["audio_out_channels"],
        audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=t["audio_num_attention_heads"],
        audio_attention_head_dim=t["audio_attention_head_dim"],
        audio_cross_attention_dim=t["audio_cross_attention_dim"], audio_scale_factor=4,
        audio_pos_embed_max_pos=t["audio_positional_embedding_max_pos"][0], audio_sampling_rate=16000,
        audio_hop_length=160, num_layers=t["num_layers"], activation_fn=t["activation_fn"],
        qk_norm=_qk_norm(t["qk_norm"]), norm_elementwise_affine=t["norm_elementwise_affine"],
        norm_eps=t["norm_eps"], caption_channels=t["caption_channels"], attention_bias=t["attention_bias"],
        attention_out_bias=t["attention_bias"], rope_theta=t["positional_embedding_theta"],
        rope_double_precision=t.get("frequencies_precision") == "float64",
        causal_offset=1 if t.get("causal_temporal_positioning") else 0,
        timestep_scale_multiplier=t["timestep_scale_multiplier"],
        cross_attn_timestep_scale_multiplier=t["av_ca_timestep_scale_multiplier"],
        rope_type=t.get("rope_type", "interleaved"), gated_attn=gated, cross_attn_mod=cross_mod,
        audio_gated_attn=gated, audio_cross_attn_mod=cross_mod,
        use_prompt_embeddings=not t.get("caption_proj_before_connector", False), perturbed_attn=True)


def _qk_norm(name: str) -> str:
    if name != "rms_norm":
        raise ValueError(f"query/key norm {name!r} is not LTX-2.3's")
    return "rms_norm_across_heads"  # ltx-core normalises q and k over all heads at once


def _connectors(t: dict, text_width: int | None) -> dict:
    caption = t["caption_channels"]  # the Gemma's hidden size
    layers = t["connector_num_layers"]
    registers = t.get("connector_num_learnable_registers", 128)
    return dict(
        caption_channels=caption, text_proj_in_factor=text_width // caption if text_width else 49,
        video_connector_num_attention_heads=t["connector_num_attention_heads"],
        video_connector_attention_head_dim=t["connector_attention_head_dim"], video_connector_num_layers=layers,
        video_connector_num_learnable_registers=registers, video_gated_attn=t["connector_apply_gated_attention"],
        audio_connector_num_attention_heads=t["audio_connector_num_attention_heads"],
        audio_connector_attention_head_dim=t["audio_connector_attention_head_dim"],
        audio_connector_num_layers=layers, audio_connector_num_learnable_registers=registers,
        audio_gated_attn=t["connector_apply_gated_attention"],
        connector_rope_base_seq_len=t["connector_positional_embedding_max_pos"][0],
        rope_theta=t["positional_embedding_theta"], rope_double_precision=t.get("frequencies_precision") == "float64",
        causal_temporal_positioning=False, rope_type=t.get("rope_type", "interleaved"),
        per_modality_projections=t.get("caption_proj_before_connector", False),
        video_hidden_dim=t["num_attention_heads"] * t["attention_head_dim"],
        audio_hidden_dim=t["audio_num_attention_heads"] * t["audio_attention_head_dim"], proj_bias=True)


def _video_vae(v: dict) -> dict:
    encoder, decoder = _stages(v["encoder_blocks"], v["encoder_base_channels"], "_res"), \
        _stages(v["decoder_blocks"], v["decoder_base_channels"], "")
    spatial = sum(kind in ("spatial", "spatiotemporal") for kind in encoder["kinds"])
    temporal = sum(kind in ("temporal", "spatiotemporal") for kind in encoder["kinds"])
    return dict(
        latent_channels=v["latent_channels"], block_out_channels=encoder["channels"],
        decoder_block_out_channels=decoder["channels"], layers_per_block=encoder["layers"],
        decoder_layers_per_block=decoder["layers"],
        spatio_temporal_scaling=(True,) * len(encoder["kinds"]),
        decoder_spatio_temporal_scaling=(True,) * len(decoder["kinds"]),
        decoder_inject_noise=(False,) * len(decoder["layers"]),
        downsample_type=encoder["kinds"], upsample_type=tuple(reversed(decoder["kinds"])),
        upsample_residual=(False,) * len(decoder["kinds"]), upsample_factor=decoder["factors"],
        patch_size=v["patch_size"], encoder_causal=True, decoder_causal=v.get("causal_decoder", False),
        encoder_spatial_padding_mode=v.get("spatial_padding_mode", "zeros"),
        decoder_spatial_padding_mode=v.get("spatial_padding_mode", "zeros"),
        spatial_compression_ratio=v["patch_size"] * 2 ** spatial, temporal_compression_ratio=2 ** temporal,
        timestep_conditioning=v.get("timestep_conditioning", False))


def _stages(blocks: list, base: int, suffix: str) -> dict:
    """ltx-core's block list (image side first) → diffusers' per-stage channels, depths, resampling kinds
    and channel factors, all in that same order."""
    channels, layers, kinds, factors, width = [], [], [], [], base
    for name, params in blocks:
        if name == "res_x":
            layers.append(params["num_layers"])
        elif name.endswith(suffix) and name[:len(name) - len(suffix)] in _RESAMPLING:
            kinds.append(_RESAMPLING[name[:len(name) - len(suffix)]])
            factors.append(params.get("multiplier", 1))
            width *= factors[-1]
            channels.append(width)
        else:
            raise ValueError(f"VAE block {name!r} is not one of LTX-2.3's")
    return {"channels": tuple(channels), "layers": tuple(layers), "kinds": tuple(kinds), "factors": tuple(factors)}


def _audio_vae(a: dict) -> dict:
    dd = a["model"]["params"]["ddconfig"]
    return dict(base_channels=dd["ch"], latent_channels=dd["z_channels"], mel_bins=dd["mel_bins"],
                num_res_blocks=dd["num_res_blocks"], ch_mult=tuple(dd["ch_mult"]), in_channels=dd["in_channels"],
                output_channels=dd["out_ch"], double_z=dd["double_z"])


def vae_depths(keys) -> dict:
    """The video VAE's resnets per stage and its timestep conditioning, read off the checkpoint's names."""
    counts = {}
    for key in keys:
        match = re.match(r"vae\.(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.res_blocks\.(\d+)\.", key)
        if match:
            stage = (match.group(1), int(match.group(2)))
            counts[stage] = max(counts.get(stage, 0), int(match.group(3)) + 1)
    # Resnet stages are the even-numbered blocks (0, 2, 4, 6, 8); odd ones resample. The file numbers the
    # decoder from the latent side; diffusers lists its depths in the encoder's order.
    encoder = tuple(counts.get(("encoder", i), 0) for i in range(0, 9, 2))
    decoder = tuple(counts.get(("decoder", i), 0) for i in range(8, -1, -2))
    return {"layers_per_block": encoder, "decoder_layers_per_block": decoder,
            "timestep_conditioning": any(k.startswith("vae.decoder.last_time_embedder.") for k in keys)}
