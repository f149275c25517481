"""Our LTX-2.3 key conversion against the real diffusers classes: a tiny diffusers transformer written
in the original Lightricks layout converts back and loads strictly, every weight in place."""

import pytest
import torch

from engine.convert import (
    TRANSFORMER_PREFIX,
    connector_key_to_checkpoint,
    split_checkpoint,
    transformer_key_to_checkpoint,
    transformer_key_to_diffusers,
)
from engine.tiny import configs

TRANSFORMER, CONNECTORS = configs()["transformer"], configs()["connectors"]


def transformer_state_dict(checkpoint: dict) -> dict:
    """The diffusers transformer's state dict from a single-file checkpoint's tensors."""
    return {k: checkpoint[v] for k, v in split_checkpoint(checkpoint)["transformer"].items()}


def connectors_state_dict(checkpoint: dict) -> dict:
    """The diffusers text connectors' state dict from a single-file checkpoint's tensors."""
    return {k: checkpoint[v] for k, v in split_checkpoint(checkpoint)["connectors"].items()}


@pytest.fixture(scope="module")
def tiny_transformer():
    from diffusers import LTX2VideoTransformer3DModel
    torch.manual_seed(0)
    return LTX2VideoTransformer3DModel(**TRANSFORMER)


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
    original = {TRANSFORMER_PREFIX + transformer_key_to_checkpoint(k): v.clone()
                for k, v in tiny_transformer.state_dict().items()}
    original["vae.decoder.conv_in.weight"] = torch.zeros(1)  # other components are skipped
    with init_empty_weights():
        rebuilt = LTX2VideoTransformer3DModel(**TRANSFORMER)
    rebuilt.load_state_dict(transformer_state_dict(original), strict=True, assign=True)
    for key, value in tiny_transformer.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_conversion_round_trips_key_by_key(tiny_transformer):
    for key in tiny_transformer.state_dict():
        assert transformer_key_to_diffusers(transformer_key_to_checkpoint(key)) == key


def test_connectors_split_from_the_checkpoint_and_load_strictly(tiny_transformer):
    from accelerate import init_empty_weights
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    torch.manual_seed(1)
    connectors = LTX2TextConnectors(**CONNECTORS)
    checkpoint = {connector_key_to_checkpoint(k): v.clone() for k, v in connectors.state_dict().items()}
    assert "text_embedding_projection.video_aggregate_embed.weight" in checkpoint
    assert (TRANSFORMER_PREFIX + "video_embeddings_connector.transformer_1d_blocks.0.attn1.q_norm.weight"
            in checkpoint)
    checkpoint.update({TRANSFORMER_PREFIX + transformer_key_to_checkpoint(k): v
                       for k, v in tiny_transformer.state_dict().items()})
    with init_empty_weights():
        rebuilt = LTX2TextConnectors(**CONNECTORS)
    rebuilt.load_state_dict(connectors_state_dict(checkpoint), strict=True, assign=True)
    for key, value in connectors.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    # ...and the transformer's share of the same file holds no connector tensor.
    assert set(transformer_state_dict(checkpoint)) == set(tiny_transformer.state_dict())
