# SPDX-License-Identifier: GPL-3.0-or-later
"""Loading LTX-2.3 from the files a user has: the single-file checkpoint, the Gemma 3 folder, the LoRAs.

Each component is built empty from its LTX-2.3 config and filled with ``load_state_dict(strict=True,
assign=True)`` from tensors read one at a time, so a missing or foreign weight is an error that names
the file, never a silently random layer, and no component is held twice in memory.
"""

from __future__ import annotations

from pathlib import Path

from .configs import component_configs
from .convert import split_checkpoint
from .protocol_io import EngineError
from .weights import FP8_DTYPE, INPUT_SCALE, WEIGHT_SCALE, Header, dequantised, mismatch

COMPONENT_NAMES = {"transformer": "transformer", "connectors": "text connectors", "vae": "video VAE",
                   "audio_vae": "audio VAE", "vocoder": "vocoder"}


def component_class(name: str):
    import diffusers
    from diffusers.pipelines import ltx2
    return {"transformer": diffusers.LTX2VideoTransformer3DModel, "connectors": ltx2.LTX2TextConnectors,
            "vae": diffusers.AutoencoderKLLTX2Video, "audio_vae": diffusers.AutoencoderKLLTX2Audio,
            "vocoder": ltx2.LTX2VocoderWithBWE}[name]


def build_component(name: str, config: dict, tensors: dict, source: Path):
    """An empty ``name`` filled strictly from ``tensors`` (diffusers names)."""
    from accelerate import init_empty_weights

    cls = component_class(name)
    with init_empty_weights():
        module = cls.from_config(config)
    detail = mismatch(module.state_dict(), tensors)
    if detail:
        raise EngineError("corrupt_weights", f"{source}: the {COMPONENT_NAMES[name]} weights do not match "
                                             f"LTX-2.3 ({detail}): choose ltx-2.3-22b-dev.safetensors")
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:  # a shape mismatch: a different model size
        first = str(err).strip().splitlines()[-1].strip()
        raise EngineError("corrupt_weights", f"{source}: the {COMPONENT_NAMES[name]} weights do not fit "
                                             f"LTX-2.3 ({first})") from None
    return module.eval().requires_grad_(False)


LOADED = ("transformer", "connectors", "vae", "audio_vae")  # not the vocoder: the engine makes no sound


def load_components(path: Path, header: Header, device: str, dtype, names=LOADED, on_loaded=None) -> dict:
    """The named components of the single file, each read tensor by tensor onto ``device`` in ``dtype``
    (statistics and filters stay float32, as diffusers keeps them). A file without an audio VAE gets
    :func:`silent_audio_vae` in its place."""
    import torch
    from safetensors import safe_open

    configs = component_configs(header)
    plan = split_checkpoint(k for k in header.keys if not k.endswith((WEIGHT_SCALE, INPUT_SCALE)))
    loaded = {}
    with safe_open(str(path), framework="pt", device=device) as f:
        for name in names:
            if name == "audio_vae" and not plan[name]:
                loaded[name] = silent_audio_vae(configs[name], device)
            else:
                tensors = {}
                for key, original in plan[name].items():
                    tensor = f.get_tensor(original)
                    if header.dtypes.get(original) == FP8_DTYPE:
                        tensor = dequantised(tensor, f.get_tensor(original.removesuffix(".weight") + WEIGHT_SCALE),
                                             dtype)
                    keep_fp32 = name in ("vae", "audio_vae") and tensor.dtype == torch.float32
                    tensors[key] = tensor if keep_fp32 or not tensor.is_floating_point() else tensor.to(dtype)
                loaded[name] = build_component(name, configs[name], tensors, path)
            if on_loaded:
                on_loaded(name)
    return loaded


def silent_audio_vae(config: dict, device: str):
    """An audio VAE for a checkpoint without one. The pipeline only needs the audio latents' shape and
    statistics from it: the audio starts from noise drawn in the normalised space and is never decoded, so
    identity statistics leave the video exactly as the real ones would. Its weights are left uninitialised."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = component_class("audio_vae").from_config(config)
    module = module.to_empty(device=device)
    module.latents_mean.zero_()
    module.latents_std.fill_(1.0)
    return module.eval().requires_grad_(False)


def load_lora(pipe, path: Path, adapter: str, what: str) -> None:
    try:
        pipe.load_lora_weights(str(path), adapter_name=adapter)
    except (ValueError, RuntimeError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineError("wrong_lora", f"{path} does not fit LTX-2.3 ({message[:200]}): choose the "
                                        f"LTX-2.3 {what}") from None
