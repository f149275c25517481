"""Model files are checked before loading: missing, truncated, LTX-2.0 instead of 2.3, wrong LoRA."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.protocol_io import EngineError
from engine.weights import check_checkpoint, check_lora

T = np.zeros((2, 2), np.float32)


def checkpoint(path, version="2.3", parts=("vae.", "audio_vae.", "vocoder.")):
    tensors = {"model.diffusion_model.transformer_blocks.0.attn1.to_q.weight": T}
    if version == "2.3":
        tensors["model.diffusion_model.transformer_blocks.0.prompt_adaln_single.linear.weight"] = T
    tensors.update({f"{p}decoder.conv_in.weight": T for p in parts})
    save_file(tensors, str(path))
    return path


def code_of(fn, *args):
    with pytest.raises(EngineError) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return info.value.code


def test_an_ltx23_checkpoint_passes(tmp_path):
    header = check_checkpoint(checkpoint(tmp_path / "ltx-2.3.safetensors"))
    assert any("prompt_adaln_single" in k for k in header.keys)


def test_an_ltx20_checkpoint_is_refused_by_name(tmp_path):
    assert code_of(check_checkpoint, checkpoint(tmp_path / "ltx-2.safetensors", version="2.0")) == "ltx20_checkpoint"


def test_missing_truncated_foreign_and_incomplete_files(tmp_path):
    assert code_of(check_checkpoint, tmp_path / "nope.safetensors") == "missing_weights"
    whole = checkpoint(tmp_path / "whole.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-5])  # an interrupted download
    assert code_of(check_checkpoint, cut) == "corrupt_weights"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>not found</html>" * 4)
    assert code_of(check_checkpoint, junk) == "corrupt_weights"
    no_vae = checkpoint(tmp_path / "transformer_only.safetensors", parts=("audio_vae.", "vocoder."))
    assert code_of(check_checkpoint, no_vae) == "corrupt_weights"


def test_ic_lora_format_and_reference_downscale_factor(tmp_path):
    key = "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"
    save_file({key: T}, str(tmp_path / "ic.safetensors"), metadata={"reference_downscale_factor": "2"})
    assert check_lora(tmp_path / "ic.safetensors")[1] == 2
    save_file({key: T}, str(tmp_path / "plain.safetensors"))
    assert check_lora(tmp_path / "plain.safetensors")[1] == 1
    save_file({key: T}, str(tmp_path / "odd.safetensors"), metadata={"reference_downscale_factor": "half"})
    assert code_of(check_lora, tmp_path / "odd.safetensors") == "wrong_lora"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": T}, str(tmp_path / "sd.safetensors"))
    assert code_of(check_lora, tmp_path / "sd.safetensors") == "wrong_lora"
    assert code_of(check_lora, checkpoint(tmp_path / "ckpt.safetensors")) == "wrong_lora"
