"""Our LTX-2.3 key conversion against the real diffusers classes: a tiny diffusers transformer written
in the original Lightricks layout converts back and loads strictly, every weight in place."""

import pytest
import torch

from engine.convert import (CHECKPOINT_TRANSFORMER_PREFIX, transformer_key_to_checkpoint,
                            transformer_key_to_diffusers, transformer_state_dict)

TINY_23 = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
               attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
               audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
               num_layers=2, caption_channels=16, rope_type="split", rope_double_precision=False,
               gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
               use_prompt_embeddings=False, perturbed_attn=True)


@pytest.fixture(scope="module")
def tiny_transformer():
    from diffusers import LTX2VideoTransformer3DModel
    torch.manual_seed(0)
    return LTX2VideoTransformer3DModel(**TINY_23)


def test_original_names_are_the_lightricks_ones(tiny_transformer):
    names = {transformer_key_to_checkpoint(k) for k in tiny_transformer.state_dict()}
    for expected in ("patchify_proj.weight", "audio_patchify_proj.weight", "adaln_single.linear.weight",
                     "audio_adaln_single.linear.weight", "prompt_adaln_single.linear.weight",
                     "av_ca_a2v_gate_adaln_single.linear.weight", "transformer_blocks.0.attn1.q_norm.weight",
                     "transformer_blocks.0.scale_shift_table_a2v_ca_video"):
        assert expected in names, expected
    assert not any("time_embed" in n or "norm_q" in n or "prompt_adaln." in n for n in names)


def test_single_file_layout_converts_back_and_loads_strictly(tiny_transformer):
    from accelerate import init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel
    original = {CHECKPOINT_TRANSFORMER_PREFIX + transformer_key_to_checkpoint(k): v.clone()
                for k, v in tiny_transformer.state_dict().items()}
    original["vae.decoder.conv_in.weight"] = torch.zeros(1)  # other components are skipped
    with init_empty_weights():
        rebuilt = LTX2VideoTransformer3DModel(**TINY_23)
    rebuilt.load_state_dict(transformer_state_dict(original), strict=True, assign=True)
    for key, value in tiny_transformer.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_conversion_round_trips_key_by_key(tiny_transformer):
    for key in tiny_transformer.state_dict():
        assert transformer_key_to_diffusers(transformer_key_to_checkpoint(key)) == key
