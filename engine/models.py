# SPDX-License-Identifier: GPL-3.0-or-later
"""Loading LTX-2.3 from the files a user has: the single-file checkpoint, the Gemma 3 folder, the LoRAs.

Each component is built empty from its LTX-2.3 config and filled with ``load_state_dict(strict=True,
assign=True)`` from tensors read one at a time, so a missing or foreign weight is an error that names
the file, never a silently random layer, and no component is held twice in memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .convert import COMPONENTS, split_checkpoint
from .protocol_io import EngineError
from .weights import Header

# A checkpoint may carry its own diffusers configs (the tiny test models do); otherwise LTX-2.3 22B's.
CONFIG_METADATA_KEY = "equi360.diffusers_configs"

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
    # Stage depths and timestep conditioning are read from the checkpoint (see vae_config).
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
    # diffusers' LTX2VocoderWithBWE defaults are LTX-2.3's (16 kHz mel → 48 kHz), except that Lightricks'
    # vocoder clamps its first stage to ±1 before the bandwidth extension.
    "vocoder": dict(final_act_fn="clamp"),
}

COMPONENT_NAMES = {"transformer": "transformer", "connectors": "text connectors", "vae": "video VAE",
                   "audio_vae": "audio VAE", "vocoder": "vocoder"}


def component_class(name: str):
    import diffusers
    from diffusers.pipelines import ltx2
    return {"transformer": diffusers.LTX2VideoTransformer3DModel, "connectors": ltx2.LTX2TextConnectors,
            "vae": diffusers.AutoencoderKLLTX2Video, "audio_vae": diffusers.AutoencoderKLLTX2Audio,
            "vocoder": ltx2.LTX2VocoderWithBWE}[name]


def component_configs(header: Header) -> dict:
    """The diffusers config of each component of this checkpoint."""
    embedded = header.metadata.get(CONFIG_METADATA_KEY)
    if embedded:
        return json.loads(embedded)
    configs = {name: dict(config) for name, config in LTX23_CONFIGS.items()}
    configs["vae"].update(vae_depths(header.keys))
    return configs


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


def build_component(name: str, config: dict, tensors: dict, source: Path):
    """An empty ``name`` filled strictly from ``tensors`` (diffusers names)."""
    from accelerate import init_empty_weights

    cls = component_class(name)
    with init_empty_weights():
        module = cls.from_config(config)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "") if part)
        raise EngineError("corrupt_weights", f"{source}: the {COMPONENT_NAMES[name]} weights do not match "
                                             f"LTX-2.3 ({detail}): choose ltx-2.3-22b-dev.safetensors")
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:  # a shape mismatch: a different model size
        first = str(err).strip().splitlines()[-1].strip()
        raise EngineError("corrupt_weights", f"{source}: the {COMPONENT_NAMES[name]} weights do not fit "
                                             f"LTX-2.3 ({first})") from None
    return module.eval().requires_grad_(False)


def load_components(path: Path, header: Header, device: str, dtype, names=COMPONENTS, on_loaded=None) -> dict:
    """The named components of the single file, each read tensor by tensor onto ``device`` in ``dtype``
    (statistics and filters stay float32, as diffusers keeps them)."""
    import torch
    from safetensors import safe_open

    configs, plan = component_configs(header), split_checkpoint(header.keys)
    loaded = {}
    with safe_open(str(path), framework="pt", device=device) as f:
        for name in names:
            tensors = {}
            for key, original in plan[name].items():
                tensor = f.get_tensor(original)
                keep_fp32 = name in ("vae", "audio_vae", "vocoder") and tensor.dtype == torch.float32
                tensors[key] = tensor if keep_fp32 or not tensor.is_floating_point() else tensor.to(dtype)
            loaded[name] = build_component(name, configs[name], tensors, path)
            if on_loaded:
                on_loaded(name)
    return loaded


def load_text_encoder(folder: Path, device: str, dtype):
    """Gemma 3 and its tokenizer from a local folder (nothing is downloaded)."""
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                               device_map=device)
    except (OSError, ValueError) as err:
        raise EngineError("corrupt_weights", f"text encoder {folder} could not be loaded ({err}): "
                                             "choose the Gemma 3 12B folder") from None
    return tokenizer, model.eval().requires_grad_(False)


def load_lora(pipe, path: Path, adapter: str, what: str) -> None:
    try:
        pipe.load_lora_weights(str(path), adapter_name=adapter)
    except (ValueError, RuntimeError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineError("wrong_lora", f"{path} does not fit LTX-2.3 ({message[:200]}): choose the "
                                        f"LTX-2.3 {what}") from None
