# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of the model files before anything is loaded: present, whole (not a truncated download), and
the right thing (LTX-2.3, not LTX-2.0; an IC-LoRA; a Gemma 3 folder). Reads only safetensors headers,
so checking a 46 GB checkpoint takes milliseconds."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .protocol_io import EngineError

TRANSFORMER_PREFIX = "model.diffusion_model."
LTX23_ONLY_KEY = "prompt_adaln_single"  # the sigma-driven prompt AdaLN is new in LTX-2.3
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class Header:
    keys: tuple[str, ...]
    metadata: dict
    nbytes: dict  # tensor name → bytes on disk
    shapes: dict = field(default_factory=dict)  # tensor name → shape
    dtypes: dict = field(default_factory=dict)  # tensor name → safetensors dtype ("BF16", "F8_E4M3", …)

    def bytes_under(self, *prefixes: str) -> int:
        return sum(n for k, n in self.nbytes.items() if k.startswith(prefixes))

    def bytes_in_memory(self, *prefixes: str) -> int:
        """As :meth:`bytes_under`, with fp8 weights at the bf16 size they are dequantised to."""
        return sum(n * (2 if self.dtypes.get(k) == FP8_DTYPE else 1)
                   for k, n in self.nbytes.items() if k.startswith(prefixes))


def read_header(path: Path, what: str) -> Header:
    """The tensor names and metadata of a .safetensors file; refuses missing, truncated or foreign files."""
    if path.is_dir():
        raise EngineError("missing_weights", f"{what} {path} is a folder, not a .safetensors file: choose the file "
                                             "(in the add-on's preferences)")
    if not path.is_file():
        raise EngineError("missing_weights", f"{what} not found: {path} (set it in the add-on's preferences)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise EngineError("corrupt_weights", f"{what} {path} is empty or cut short: download it again")
        (length,) = struct.unpack("<Q", raw)
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise EngineError("corrupt_weights", f"{what} {path} is not a safetensors file, or it is damaged")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EngineError("corrupt_weights", f"{what} {path} has a damaged header: download it again") from None
    metadata = header.pop("__metadata__", None) or {}
    try:
        nbytes = {name: entry["data_offsets"][1] - entry["data_offsets"][0] for name, entry in header.items()}
        shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}
        dtypes = {name: entry["dtype"] for name, entry in header.items()}
        end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    except (TypeError, KeyError, IndexError):
        raise EngineError("corrupt_weights", f"{what} {path} has a damaged header: download it again") from None
    if 8 + length + end != size:
        raise EngineError("corrupt_weights", f"{what} {path} is {size:,} bytes but its header needs "
                                             f"{8 + length + end:,}: the download is incomplete, fetch it again")
    return Header(tuple(header), metadata, nbytes, shapes, dtypes)


def check_checkpoint(path: Path) -> Header:
    header = read_header(path, "LTX checkpoint")
    if not any(k.startswith(TRANSFORMER_PREFIX) for k in header.keys):
        raise EngineError("corrupt_weights", f"{path} is not an LTX-2 checkpoint (no {TRANSFORMER_PREFIX}* "
                                             "tensors): choose ltx-2.3-22b-dev.safetensors")
    if not any(LTX23_ONLY_KEY in k for k in header.keys):
        raise EngineError("ltx20_checkpoint", f"{path} is an LTX-2.0 checkpoint; the VR-360 IC-LoRA needs "
                                              "LTX-2.3: choose ltx-2.3-22b-dev.safetensors")
    # The video VAE is needed; the audio VAE's statistics are used when it is there, and the vocoder never
    # (the engine makes no sound).
    if not any(k.startswith("vae.") for k in header.keys):
        raise EngineError("corrupt_weights", f"{path} has no video VAE weights (vae.*): it is not the complete "
                                             "single-file checkpoint Lightricks ships")
    return header


def mismatch(expected, given, prefix: str = "") -> str | None:
    """What a strict load would refuse, in words (``None`` when the names match): how many weights are
    missing and unexpected, with an example of each (named as the file names them, with ``prefix``)."""
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if not missing and not unexpected:
        return None
    return "; ".join(part for part in (
        f"{len(missing)} missing (e.g. {prefix}{missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {prefix}{unexpected[0]})" if unexpected else "") if part)


def dequantised(weight, scale, dtype):
    """An fp8 weight as the model it was quantised from has it: ``weight · scale`` (a per-tensor scale: the raw
    fp8 values are hundreds of times too large). Computed in float32, then cast to ``dtype``."""
    import torch
    return (weight.to(torch.float32) * scale.to(torch.float32).reshape(())).to(dtype)


FP8_DTYPE = "F8_E4M3"
WEIGHT_SCALE = ".weight_scale"  # the fp8 files' per-tensor scale: the weight is weight.to(bf16) * weight_scale
INPUT_SCALE = ".input_scale"    # their calibrated activation scale, for fp8 matrix units
# Words in a file's metadata values or its name that say which model it is; distilled first ("distilled"
# files of other makers' releases also carry "dev" in their paths, never the reverse).
VARIANT_WORDS = (("distilled", "distilled"), ("dev", "dev"))
VARIANT_METADATA_KEYS = ("model_variant", "variant", "modelspec.title", "model_name", "name")


@dataclass(frozen=True)
class CheckpointKind:
    variant: str    # "dev" (guided, 30 steps) or "distilled" (8 steps, CFG 1)
    fp8: bool       # F8_E4M3 weights stored with their scales
    told_by: str    # where the variant was read: "job" (checkpoint_variant), "metadata" or "name"


def checkpoint_kind(path: Path, header: Header, choice: str = "auto") -> CheckpointKind:
    """Which LTX-2.3 checkpoint this is. fp8 is read off the tensors' types. The variant is the job's
    ``checkpoint_variant`` when it is not "auto"; else the file's metadata where a value names it; else its
    file name (Lightricks' names say ``dev`` or ``distilled``); else an error that says how to choose."""
    fp8_weights = [k for k, dtype in header.dtypes.items() if dtype == FP8_DTYPE]
    missing = [k for k in fp8_weights
               if k.endswith(".weight") and k.removesuffix(".weight") + WEIGHT_SCALE not in header.nbytes]
    if missing:
        raise EngineError("corrupt_weights", f"{path}: {len(missing)} fp8 weights have no {WEIGHT_SCALE} (e.g. "
                                             f"{missing[0]}); without it they are hundreds of times too large: "
                                             "download the official fp8 file again")
    fp8 = bool(fp8_weights)
    if choice != "auto":
        return CheckpointKind(choice, fp8, "job")
    for key in VARIANT_METADATA_KEYS:
        value = str(header.metadata.get(key, "")).lower()
        for word, variant in VARIANT_WORDS:
            if word in value:
                return CheckpointKind(variant, fp8, "metadata")
    name = path.name.lower()
    for word, variant in VARIANT_WORDS:
        if word in name:
            return CheckpointKind(variant, fp8, "name")
    raise EngineError("unknown_checkpoint", f"{path.name} does not say whether it is the dev or the distilled "
                                            "LTX-2.3 checkpoint (neither its metadata nor its name): set "
                                            "checkpoint_variant to dev or distilled (the add-on's preferences: "
                                            "Checkpoint kind)")


def check_lora(path: Path, what: str = "IC-LoRA") -> tuple[Header, int]:
    """A LoRA in trainer/ComfyUI (``diffusion_model.``) or diffusers (``transformer.``) key format. Returns
    its header and the reference downscale factor stored in its metadata (1 when absent)."""
    header = read_header(path, what)
    lora_keys = [k for k in header.keys if ".lora_A." in k or ".lora_B." in k
                 or ".lora_down." in k or ".lora_up." in k]
    if not lora_keys:
        raise EngineError("wrong_lora", f"{path} holds no LoRA weights (no lora_A/lora_B tensors): choose the "
                                        f"{what} .safetensors file")
    if not all(k.startswith(("diffusion_model.", "transformer.", "text_embedding_projection.")) for k in lora_keys):
        raise EngineError("wrong_lora", f"{path} is a LoRA for another model (keys like {lora_keys[0]!r}): "
                                        f"choose the LTX-2.3 {what}")
    recorded = header.metadata.get("reference_downscale_factor", "1")
    factor = int(recorded) if str(recorded).strip().isdigit() else 0
    if factor < 1:
        raise EngineError("wrong_lora", f"{path}: reference_downscale_factor {recorded!r} in its metadata is not "
                                        "a positive integer")
    return header, factor
