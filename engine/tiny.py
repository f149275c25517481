# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine make-tiny-models DIR``: a scaled-down LTX-2.3 model set with random weights, in the
real file layouts, so the real loading and generation code runs anywhere in seconds.

- ``ltx-2.3-tiny-dev.safetensors``: one file with Lightricks' key names (``model.diffusion_model.*``,
  ``text_embedding_projection.*``, ``vae.*``, ``audio_vae.*``, ``vocoder.*``), written by reversing our
  own conversion from tiny diffusers models. Its metadata carries the model's config in Lightricks' own
  format, as their releases do (``config``, read by :mod:`engine.configs`).
- ``ltx-2.3-tiny-dev-fp8.safetensors``: its fp8 twin in the layout of Lightricks' fp8 files: each Linear
  weight of the inner transformer blocks ``F8_E4M3`` with a scalar float32 ``weight_scale`` and
  ``input_scale``, the edge block(s) and everything else of the transformer bf16.
- ``ltx-2.3-tiny-distilled.safetensors``: another set of weights, named as the distilled checkpoint is.
- ``gemma-3-tiny/``: a Gemma 3 folder (config, bf16 safetensors, a tiny SentencePiece tokenizer as
  ``tokenizer.model`` and ``tokenizer.json``); ``gemma-3-tiny.safetensors`` and
  ``gemma-3-tiny-fp8-scaled.safetensors``: the same weights and tokenizer in ComfyUI's single-file
  layouts, bf16 and scaled fp8 (see :mod:`engine.text_encoder`).
- ``ic-lora-tiny.safetensors``: an IC-LoRA in the trainer's format (``diffusion_model.*.lora_A/B``,
  ``reference_downscale_factor`` in the metadata); ``ic-lora-1.0-tiny.safetensors``: one as 1.0 ships,
  without that metadata (a factor of 1); ``distilled-lora-tiny.safetensors``: the same format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .configs import METADATA_KEY, from_metadata
from .models import component_class

CHECKPOINT = "ltx-2.3-tiny-dev.safetensors"
CHECKPOINT_FP8 = "ltx-2.3-tiny-dev-fp8.safetensors"
CHECKPOINT_DISTILLED = "ltx-2.3-tiny-distilled.safetensors"
FP8_MAX = 448.0  # the largest float8_e4m3fn value
# Blocks the fp8 files keep in bf16: the first two and last two of the 48 (0, 1, 46, 47); at the tiny
# model's 2 blocks, block 0 (so that the file has both kinds).
TINY_BF16_BLOCKS = (0,)
TEXT_ENCODER = "gemma-3-tiny"
IC_LORA = "ic-lora-tiny.safetensors"
IC_LORA_1 = "ic-lora-1.0-tiny.safetensors"  # as the LoRA's 1.0 ships: no reference_downscale_factor (1)
DISTILLED_LORA = "distilled-lora-tiny.safetensors"

# The model's configuration as Lightricks' files carry it (``config`` metadata, ltx-core's names): the
# LTX-2.3 architecture at tiny sizes. The engine reads the diffusers configs off it (engine/configs.py).
METADATA_CONFIG = {
    "transformer": {
        "in_channels": 4, "out_channels": 4, "num_attention_heads": 2, "attention_head_dim": 8,
        "cross_attention_dim": 16, "audio_in_channels": 4, "audio_out_channels": 4,
        "audio_num_attention_heads": 2, "audio_attention_head_dim": 4, "audio_cross_attention_dim": 8,
        "num_layers": 2, "caption_channels": 16, "activation_fn": "gelu-approximate", "qk_norm": "rms_norm",
        "norm_elementwise_affine": False, "norm_eps": 1e-6, "attention_bias": True,
        "positional_embedding_theta": 10000.0, "positional_embedding_max_pos": [20, 2048, 2048],
        "audio_positional_embedding_max_pos": [20], "frequencies_precision": "float32", "rope_type": "split",
        "causal_temporal_positioning": True, "timestep_scale_multiplier": 1000,
        "av_ca_timestep_scale_multiplier": 1000.0, "apply_gated_attention": True, "cross_attention_adaln": True,
        "caption_proj_before_connector": True, "connector_num_attention_heads": 2,
        "connector_attention_head_dim": 8, "audio_connector_num_attention_heads": 2,
        "audio_connector_attention_head_dim": 4, "connector_num_layers": 1, "connector_num_learnable_registers": 8,
        "connector_positional_embedding_max_pos": [4096], "connector_apply_gated_attention": True},
    # The LTX-2.3 video VAE's stages (4 down and 4 up, the decoder's temporal-then-spatial tail) at 1/32 of
    # its widths: real ×32 spatial and ×8 temporal compression.
    "vae": {
        "latent_channels": 4, "patch_size": 4, "encoder_base_channels": 4, "decoder_base_channels": 4,
        "encoder_blocks": [["res_x", {"num_layers": 1}], ["compress_space_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}], ["compress_time_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 1}],
                           ["res_x", {"num_layers": 1}]],
        "decoder_blocks": [["res_x", {"num_layers": 1}], ["compress_space", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}], ["compress_time", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 1}],
                           ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}]],
        "causal_decoder": False, "timestep_conditioning": False, "spatial_padding_mode": "zeros"},
    "audio_vae": {"model": {"params": {"ddconfig": {
        "ch": 4, "ch_mult": [1, 2, 4], "num_res_blocks": 1, "z_channels": 2, "mel_bins": 8, "in_channels": 2,
        "out_ch": 2, "double_z": True}}}},
}
TEXT_HIDDEN_STATES = 3  # the tiny Gemma's 2 layers and its embeddings
VOCODER = dict(final_act_fn="clamp", in_channels=16, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4],
               upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]],
               bwe_in_channels=32, bwe_hidden_channels=16, bwe_upsample_kernel_sizes=[4, 4, 4],
               bwe_upsample_factors=[2, 2, 2], bwe_resnet_kernel_sizes=[3], bwe_resnet_dilations=[[1, 3]],
               filter_length=16, hop_length=4, window_length=16, num_mel_channels=16,
               input_sampling_rate=16000, output_sampling_rate=32000)
# The tiny Gemma: Gemma 3 12B's architecture (engine.text_encoder.GEMMA3_12B_TEXT_SETTINGS: rope, sliding
# window, …, which ComfyUI's single file cannot carry) at tiny sizes. Its vocabulary is the tiny SentencePiece
# tokenizer's pieces and 16 spare rows, as Gemma 3's 262,208 rows are its tokenizer's 262,144 and 64 more.
TOKENIZER_PIECES = 320  # SentencePiece's minimum with byte fallback is 256 bytes + the specials; the rest are merges
GEMMA_TEXT = dict(vocab_size=TOKENIZER_PIECES + 16, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
TEXT_ENCODER_FILE = "gemma-3-tiny.safetensors"
TEXT_ENCODER_FP8 = "gemma-3-tiny-fp8-scaled.safetensors"
GEMMA_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    image_size=28, patch_size=14)
WORDS = ("equirectangular", "city", "street", "sky", "night", "day", "forest", "beach", "mountain", "room",
         "blurry", "low", "quality", "worst", "distorted", "a", "the")
LORA_RANK = 4
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def configs() -> dict:
    """The tiny components' diffusers configs, as the engine reads them off the file's metadata."""
    text_width = METADATA_CONFIG["transformer"]["caption_channels"] * TEXT_HIDDEN_STATES
    return from_metadata(METADATA_CONFIG, text_width)


def build_components(seed: int = 0) -> dict:
    """The tiny diffusers components with seeded random weights (and a vocoder, which the file has and the
    engine does not load)."""
    import torch
    from diffusers.pipelines.ltx2 import LTX2VocoderWithBWE

    torch.manual_seed(seed)
    components = {name: component_class(name)(**config) for name, config in configs().items()}
    components["vocoder"] = LTX2VocoderWithBWE(**VOCODER)
    # Random statistics, so that normalisation is exercised and not the identity.
    for name in ("vae", "audio_vae"):
        stats = components[name]
        stats.latents_mean.copy_(torch.randn_like(stats.latents_mean) * 0.1)
        stats.latents_std.copy_(1 + torch.rand_like(stats.latents_std))
    return components


def write_checkpoint(path: Path, components: dict) -> None:
    """All five components in one file with Lightricks' key names, and the model's config in the metadata."""
    import torch
    from safetensors.torch import save_file

    from .convert import to_checkpoint

    tensors = {}
    for name, module in components.items():
        tensors.update(to_checkpoint(name, {k: v.detach().contiguous() for k, v in module.state_dict().items()}))
    # Statistics Lightricks' file has and diffusers does not use.
    channels = METADATA_CONFIG["vae"]["latent_channels"]
    tensors["vae.per_channel_statistics.channel"] = torch.arange(channels, dtype=torch.float32)
    tensors["vae.per_channel_statistics.mean-of-stds"] = torch.ones(channels)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(METADATA_CONFIG), "model_version": "2.3.0"})


def write_fp8_checkpoint(source: Path, path: Path, bf16_blocks=TINY_BF16_BLOCKS) -> None:
    """The fp8 twin of the checkpoint ``source``, quantised as Lightricks' fp8 files are: per tensor,
    ``weight_scale = max|w| / 448`` and ``weight = (w / weight_scale)`` in float8_e4m3fn."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            tensor = f.get_tensor(key)
            block = re.match(r"model\.diffusion_model\.transformer_blocks\.(\d+)\.", key)
            if block and int(block[1]) not in bf16_blocks and key.endswith(".weight") and tensor.ndim == 2:
                scale = tensor.abs().max().float() / FP8_MAX
                stem = key.removesuffix(".weight")
                tensors[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
                tensors[stem + ".weight_scale"] = scale.reshape(())
                tensors[stem + ".input_scale"] = torch.tensor(1.0)
            elif key.startswith("model.diffusion_model."):
                tensors[key] = tensor.to(torch.bfloat16)
            else:
                tensors[key] = tensor
    save_file(tensors, str(path), metadata=metadata)


def write_text_encoder(folder: Path, seed: int = 0) -> None:
    """The tiny Gemma 3 as a Hugging Face folder, and next to it the same weights and tokenizer in ComfyUI's
    single files: bf16 with the vision tower, and scaled fp8 without it."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from .text_encoder import GEMMA3_12B_TEXT_SETTINGS, TEXT_PREFIX, TOKENIZER_KEY, tokenizer_from_sentencepiece

    spiece = train_tiny_sentencepiece()
    tokenizer = tokenizer_from_sentencepiece(spiece, folder / "tokenizer.model")
    torch.manual_seed(seed)
    config = Gemma3Config(text_config={**GEMMA_TEXT, **GEMMA3_12B_TEXT_SETTINGS}, vision_config=GEMMA_VISION,
                          mm_tokens_per_image=4, image_token_index=TOKENIZER_PIECES,
                          boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"))
    model = Gemma3ForConditionalGeneration(config).to(torch.bfloat16)  # bf16, as Google's folder is
    model.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(spiece)
    tokenizer.save_pretrained(folder)

    def named(prefix, module):
        return {prefix + k: v.detach().contiguous() for k, v in module.state_dict().items()}

    language = named(TEXT_PREFIX, model.model.language_model)
    vision = {**named("vision_model.", model.model.vision_tower),
              **named("multi_modal_projector.", model.model.multi_modal_projector)}
    tokenizer_tensor = {TOKENIZER_KEY: torch.frombuffer(bytearray(spiece), dtype=torch.uint8)}
    save_file({**language, **vision, **tokenizer_tensor}, str(folder.parent / TEXT_ENCODER_FILE))
    save_file({**scaled_fp8(language), **tokenizer_tensor}, str(folder.parent / TEXT_ENCODER_FP8))


def train_tiny_sentencepiece() -> bytes:
    """A SentencePiece BPE model trained on the tiny vocabulary's words with Gemma's settings (byte fallback,
    digits split, no dummy prefix, spaces kept, <pad> <eos> <bos> <unk> first, its control and user-defined
    pieces); the same bytes every time."""
    import io

    import sentencepiece

    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + ["0123456789, . ! ? - 360°"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="bpe", vocab_size=TOKENIZER_PIECES,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=["<mask>", "<start_of_image>", "<end_of_image>"],
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], num_threads=1, minloglevel=2)
    return model.getvalue()


def scaled_fp8(tensors: dict) -> dict:
    """``tensors`` with each layer's projection weights in ComfyUI's per-layer scaled fp8: float8_e4m3fn
    ``weight``, a scalar float32 ``weight_scale`` (max|w| / 448) and ``input_scale``, and the layer's format
    as ``comfy_quant`` JSON bytes. Embeddings and norms stay as they are."""
    import torch

    quantised = {}
    for key, tensor in tensors.items():
        if key.endswith("_proj.weight") and tensor.ndim == 2:
            layer = key.removesuffix(".weight")
            scale = tensor.abs().max().float() / FP8_MAX
            quantised[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            quantised[layer + ".weight_scale"] = scale.reshape(())
            quantised[layer + ".input_scale"] = torch.tensor(1.0)
            quantised[layer + ".comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
        else:
            quantised[key] = tensor
    return quantised


def write_lora(path: Path, seed: int, reference_downscale_factor: int | None = 1) -> None:
    """A rank-4 LoRA on every block's attention and feed-forward, in the LTX trainer's key format."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    transformer = METADATA_CONFIG["transformer"]
    inner = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    cross = transformer["cross_attention_dim"]
    shapes = {"attn1.to_q": (inner, inner), "attn1.to_k": (inner, inner), "attn1.to_v": (inner, inner),
              "attn1.to_out.0": (inner, inner), "attn2.to_q": (inner, inner), "attn2.to_k": (inner, cross),
              "attn2.to_v": (inner, cross), "attn2.to_out.0": (inner, inner), "ff.net.0.proj": (4 * inner, inner),
              "ff.net.2": (inner, 4 * inner)}
    tensors = {}
    for block in range(transformer["num_layers"]):
        for target in LORA_TARGETS:
            out_dim, in_dim = shapes[target]
            key = f"diffusion_model.transformer_blocks.{block}.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, in_dim, generator=generator) * 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_dim, LORA_RANK, generator=generator) * 0.5
    metadata = {} if reference_downscale_factor is None else {
        "reference_downscale_factor": str(reference_downscale_factor)}
    save_file(tensors, str(path), metadata=metadata)


def make_tiny_models(folder) -> dict:
    """Write the tiny model set into ``folder``; returns the paths: the dev set under ``job.json``'s
    ``models`` names, and the other layouts (``checkpoint_fp8``, ``checkpoint_distilled``, …)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder / CHECKPOINT, build_components())
    write_fp8_checkpoint(folder / CHECKPOINT, folder / CHECKPOINT_FP8)
    write_checkpoint(folder / CHECKPOINT_DISTILLED, build_components(seed=3))
    write_text_encoder(folder / TEXT_ENCODER)
    write_lora(folder / IC_LORA, seed=1)
    write_lora(folder / IC_LORA_1, seed=4, reference_downscale_factor=None)
    write_lora(folder / DISTILLED_LORA, seed=2, reference_downscale_factor=None)
    return {"checkpoint": str(folder / CHECKPOINT), "text_encoder": str(folder / TEXT_ENCODER),
            "ic_lora": str(folder / IC_LORA), "distilled_lora": str(folder / DISTILLED_LORA),
            "checkpoint_fp8": str(folder / CHECKPOINT_FP8), "checkpoint_distilled": str(folder / CHECKPOINT_DISTILLED),
            "text_encoder_file": str(folder / TEXT_ENCODER_FILE), "text_encoder_fp8": str(folder / TEXT_ENCODER_FP8),
            "ic_lora_1": str(folder / IC_LORA_1)}
