# SPDX-License-Identifier: GPL-3.0-or-later
"""The model files Equi360 runs, as published on the Hugging Face Hub: the sets ``python -m engine models
fetch SET DIR`` downloads (``python -m engine models sets`` lists them).

Data only. Each set is a complete model set for one or both recipes (``quality``: guided, the dev
checkpoint; ``fast``: 8 distilled steps at CFG 1, the distilled checkpoint alone or dev + the distilled
LoRA). Files land in DIR in ComfyUI's layout (``checkpoints/``, ``text_encoders/``, ``loras/``), so a
ComfyUI ``models`` folder can be the download folder and ComfyUI uses the same files.

The VR-360 IC-LoRA's releases (their file names and canvases) are declared in
:mod:`blender_equi360.jobs.lora_versions`. The sizes here are approximate (for the listing and the
README); ``fetch`` checks each file against the size the hub reports for it, before downloading (the disk
space) and after (the file on disk).
"""

from __future__ import annotations

from dataclasses import dataclass

from blender_equi360.jobs.lora_versions import DEFAULT_LORA_VERSION, LORA_VERSIONS

GB = 10**9

LTX_REPO = "Lightricks/LTX-2.3"
LTX_FP8_REPO = "Lightricks/LTX-2.3-fp8"
COMFY_LTX_REPO = "Comfy-Org/ltx-2"  # ComfyUI's repackaged single-file text encoders
GEMMA_REPO = "Lightricks/gemma-3-12b-it-qat-q4_0-unquantized"  # ungated copy of google/gemma-3-12b-it-qat-…
IC_LORA_REPO = "TheBurgstall/VR-360-Outpaint-LTX2.3-IC-LoRA"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository, saved as ``DIR/subfolder/<its name>``."""
    role: str          # the job.json ``models`` field it fills: checkpoint, text_encoder, ic_lora, distilled_lora
    repo: str
    path: str          # in the repository
    subfolder: str     # in DIR: ComfyUI's model folder for it
    approx_bytes: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def local_name(self) -> str:
        return f"{self.subfolder}/{self.name}"


@dataclass(frozen=True)
class RemoteFolder:
    """The top-level files of a repository that match ``patterns``, saved in ``DIR/subfolder/`` (a Hugging
    Face model folder, as transformers reads it)."""
    role: str
    repo: str
    patterns: tuple[str, ...]
    subfolder: str
    approx_bytes: int

    @property
    def local_name(self) -> str:
        return self.subfolder


@dataclass(frozen=True)
class ModelSet:
    name: str
    description: str
    recipes: tuple[str, ...]
    files: tuple[RemoteFile | RemoteFolder, ...]

    @property
    def approx_bytes(self) -> int:
        return sum(f.approx_bytes for f in self.files)


# The files.
DEV = RemoteFile("checkpoint", LTX_REPO, "ltx-2.3-22b-dev.safetensors", "checkpoints", 46_149_345_334)
DISTILLED = RemoteFile("checkpoint", LTX_REPO, "ltx-2.3-22b-distilled-1.1.safetensors", "checkpoints",
                       46_149_345_334)
DISTILLED_LORA = RemoteFile("distilled_lora", LTX_REPO, "ltx-2.3-22b-distilled-lora-384-1.1.safetensors", "loras",
                            7_605_507_256)
DEV_FP8 = RemoteFile("checkpoint", LTX_FP8_REPO, "ltx-2.3-22b-dev-fp8.safetensors", "checkpoints", 29 * GB)
DISTILLED_FP8 = RemoteFile("checkpoint", LTX_FP8_REPO, "ltx-2.3-22b-distilled-fp8.safetensors", "checkpoints",
                           29 * GB)
GEMMA_BF16_FILE = RemoteFile("text_encoder", COMFY_LTX_REPO, "split_files/text_encoders/gemma_3_12B_it.safetensors",
                             "text_encoders", 24 * GB)
GEMMA_FP8_FILE = RemoteFile("text_encoder", COMFY_LTX_REPO,
                            "split_files/text_encoders/gemma_3_12B_it_fp8_scaled.safetensors", "text_encoders",
                            13 * GB)
# What transformers needs of the folder: weights, configs, tokenizer (not the README, not other formats).
GEMMA_FOLDER = RemoteFolder("text_encoder", GEMMA_REPO, ("*.safetensors", "*.json", "tokenizer.model", "*.jinja"),
                            "text_encoders/gemma-3-12b-it-qat-q4_0-unquantized", 25 * GB)
IC_LORA = RemoteFile("ic_lora", IC_LORA_REPO, LORA_VERSIONS[DEFAULT_LORA_VERSION].file_names[0], "loras",
                     13 * GB // 10)

SETS = {s.name: s for s in (
    ModelSet("distilled-fp8", "the distilled checkpoint in fp8 (8 steps), ComfyUI's fp8 Gemma and the IC-LoRA 1.0: "
                              "the IC-LoRA author's recipe for GPUs up to 48 GB, the smallest download",
             ("fast",), (DISTILLED_FP8, GEMMA_FP8_FILE, IC_LORA)),
    ModelSet("distilled", "the distilled checkpoint 1.1 in bf16 (8 steps), Gemma in bf16 (ComfyUI's single file) and "
                          "the IC-LoRA 1.0", ("fast",), (DISTILLED, GEMMA_BF16_FILE, IC_LORA)),
    ModelSet("dev", "the dev checkpoint in bf16 with the distilled LoRA 1.1 (both recipes), the Gemma 3 folder and "
                    "the IC-LoRA 1.0: the best quality, the biggest download",
             ("quality", "fast"), (DEV, DISTILLED_LORA, GEMMA_FOLDER, IC_LORA)),
    ModelSet("dev-fp8", "the dev checkpoint in fp8 with the distilled LoRA 1.1 (both recipes), ComfyUI's fp8 Gemma "
                        "and the IC-LoRA 1.0", ("quality", "fast"), (DEV_FP8, DISTILLED_LORA, GEMMA_FP8_FILE, IC_LORA)),
)}

def catalog() -> dict:
    """The sets as JSON for ``python -m engine models sets`` (the add-on lists them from it)."""
    def entry(f):
        where = {"path": f.path} if isinstance(f, RemoteFile) else {"patterns": list(f.patterns)}
        return {"role": f.role, "repo": f.repo, **where, "local": f.local_name, "approx_gb": _gb(f.approx_bytes)}
    return {name: {"description": s.description, "recipes": list(s.recipes), "approx_gb": _gb(s.approx_bytes),
                   "files": [entry(f) for f in s.files]} for name, s in SETS.items()}


def _gb(nbytes: int) -> float:
    return round(nbytes / GB, 1)
