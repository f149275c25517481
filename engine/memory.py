# SPDX-License-Identifier: GPL-3.0-or-later
"""What a model set puts on the GPU in each phase of a job, from the files' headers alone: the engine's
plan before it loads (:mod:`engine.ltx`) and ``models find``'s figures (:mod:`engine.find`) are this one
computation. Weights only; activations come on top (the engine reports its measured peak)."""

from __future__ import annotations

from .weights import TRANSFORMER_PREFIX, Header

LOW_VRAM_BLOCKS_PER_GROUP = 4  # low VRAM: the transformer's blocks go to the GPU this many at a time
CONNECTORS = ("model.diffusion_model.video_embeddings_connector", "model.diffusion_model.audio_embeddings_connector")


def gigabytes(nbytes: float) -> float:
    return round(nbytes / 2**30, 1)


def memory_plan(header: Header, text_encoder_bytes: int, low_vram: bool) -> dict:
    """GiB on the GPU per phase: ``text_gb`` (Gemma, encoding the prompt), ``denoise_gb`` (transformer,
    connectors and both VAEs), ``decode_gb`` (what stays for the VAE's decode). An fp8 file's weights
    count at the bf16 size they are dequantised to; the vocoder is never loaded."""
    transformer = header.bytes_in_memory(TRANSFORMER_PREFIX) - header.bytes_in_memory(*CONNECTORS)
    rest = header.bytes_in_memory(TRANSFORMER_PREFIX, "text_embedding_projection.", "vae.", "audio_vae.") - transformer
    if low_vram:  # fp8 storage, and only a few groups of blocks on the GPU at a time
        transformer = transformer // 2 * min(1.0, 4 * LOW_VRAM_BLOCKS_PER_GROUP / 48)
    return {"text_gb": gigabytes(text_encoder_bytes), "denoise_gb": gigabytes(transformer + rest),
            "decode_gb": gigabytes(rest)}
