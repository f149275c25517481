# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's preferences (the engine and its model files) and the per-scene state."""

import json
import subprocess
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..blender_equi360 import Equi360Error
from ..blender_equi360.jobs.delivery_settings import SIZES, DeliverySettings
from ..blender_equi360.jobs.lora_versions import CANVASES, DEFAULT_LORA_VERSION, LORA_VERSIONS
from ..blender_equi360.jobs.windows import MAX_WINDOW, MIN_OVERLAP, MIN_WINDOW, OVERLAP_FRAMES, WINDOW_FRAMES

ADDON_ROOT = Path(__file__).resolve().parents[1]  # the extension folder: holds engine/ and blender_equi360/
PACKAGE = __package__.rpartition(".")[0]          # bl_ext.<repo>.equi360
MODEL_ROLES = ("checkpoint", "text_encoder", "ic_lora", "distilled_lora")  # as job.json's ``models``


def preferences(context=None):
    return (context or bpy.context).preferences.addons[PACKAGE].preferences


def use_model_files(prefs, paths: dict, file_says_kind: bool, lora_version: str | None = None,
                    recipes=()) -> list[str]:
    """Set the four model paths (a part the set has not is cleared) and what must go with them: the checkpoint
    kind back to Auto when the file says its kind (kept when it does not and it is the file the kind was set
    for), the LoRA version of the IC-LoRA, a preset the set can run. Returns those other changes, in words."""
    changes = []
    same_checkpoint = bpy.path.abspath(prefs.checkpoint) == paths.get("checkpoint")
    for role in MODEL_ROLES:
        setattr(prefs, role, paths.get(role) or "")
    if (file_says_kind or not same_checkpoint) and prefs.checkpoint_variant != "auto":
        prefs.checkpoint_variant = "auto"
        changes.append("checkpoint kind: Auto")
    if lora_version in LORA_VERSIONS and prefs.lora_version != lora_version:
        prefs.lora_version = lora_version
        changes.append(f"LoRA version: v{lora_version}")
    if recipes and prefs.preset not in recipes:
        prefs.preset = recipes[0]
        changes.append(f"preset: {recipes[0]} (the set runs {' and '.join(recipes)} only)")
    return changes


class EQUI360_PG_found_set(bpy.types.PropertyGroup):
    """One complete model set that Find Models found (``python -m engine models find``)."""
    label: StringProperty()        # the set in one line, for the list
    summary: StringProperty()      # its recipes and GPU memory, for the tooltip and the report
    checkpoint: StringProperty()
    text_encoder: StringProperty()
    ic_lora: StringProperty()
    distilled_lora: StringProperty()
    variant: StringProperty()      # dev | distilled | "" (the file does not say)
    lora_version: StringProperty()
    recipes: StringProperty()      # comma-separated


_found_set_items_alive = []  # Blender keeps pointers to a dynamic enum's strings: they must outlive the call


def _found_set_items(prefs, context):
    _found_set_items_alive[:] = [(str(i), entry.label, entry.summary) for i, entry in enumerate(prefs.found_sets)]
    return _found_set_items_alive


def use_found_set(prefs, index: int) -> list[str]:
    """Fill the model preferences from the found set ``index``; returns the other changes."""
    entry = prefs.found_sets[index]
    changes = use_model_files(prefs, {role: getattr(entry, role) for role in MODEL_ROLES}, bool(entry.variant),
                              entry.lora_version, [r for r in entry.recipes.split(",") if r])
    prefs.models_report = "\n".join([f"Using: {entry.label}", entry.summary, *changes])
    return changes


def _on_found_set_chosen(prefs, context):
    use_found_set(prefs, int(prefs.found_set))


class EQUI360_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="The Python of the engine's environment (with CUDA torch and diffusers), e.g. …/.venv/bin/python; "
                    "Install Engine makes one and sets it")
    engine_dir: StringProperty(
        name="Engine folder", subtype="DIR_PATH",
        description="Where Install Engine makes the engine's Python environment (a few GB; default: the extension's "
                    "user folder)")
    checkpoint: StringProperty(name="LTX-2.3 checkpoint", subtype="FILE_PATH",
                               description="ltx-2.3-22b-distilled-1.1.safetensors or ltx-2.3-22b-dev.safetensors, "
                                           "or their -fp8 versions")
    text_encoder: StringProperty(name="Text encoder", subtype="FILE_PATH",
                                 description="Gemma 3 12B: its Hugging Face folder (config.json, tokenizer, "
                                             "safetensors), or ComfyUI's gemma_3_12B_it(_fp8_scaled).safetensors")
    ic_lora: StringProperty(name="VR-360 IC-LoRA", subtype="FILE_PATH",
                            description="360vroutpaint_v2_step09000.safetensors (1.0) or the v0.1 file")
    distilled_lora: StringProperty(name="Distilled LoRA", subtype="FILE_PATH",
                                   description="ltx-2.3-22b-distilled-lora-384-1.1.safetensors: the fast preset on "
                                               "the dev checkpoint (not needed with the distilled one)")
    models_dir: StringProperty(
        name="Models folder", subtype="DIR_PATH",
        description="Where Download Models puts a model set (in ComfyUI's layout: checkpoints/, text_encoders/, "
                    "loras/; a ComfyUI models folder works) and where Find Models looks first, besides ComfyUI "
                    "installs and the Hugging Face cache (default: the extension's user folder)")
    found_sets: CollectionProperty(type=EQUI360_PG_found_set)
    found_set: EnumProperty(name="Model set", items=_found_set_items, update=_on_found_set_chosen,
                            description="The complete model sets Find Models found, most capable first: choose "
                                        "one to use its files")
    models_report: StringProperty(name="Model files", default="")  # what Find / Download Models said last
    checkpoint_variant: EnumProperty(name="Checkpoint kind", default="auto", items=(
        ("auto", "Auto", "As the file says (its metadata or its name)"),
        ("dev", "Dev", "The dev model: both presets (fast with the distilled LoRA)"),
        ("distilled", "Distilled", "The distilled model: the fast preset, no distilled LoRA")))
    lora_version: EnumProperty(name="LoRA version", default=DEFAULT_LORA_VERSION, items=[
        (name, f"v{name}", f"References for the VR-360 LoRA {name}: {v.canvas}, sources of "
                           f"{v.hfov_deg[0]:.0f}–{v.hfov_deg[1]:.0f}° across"
                           + (", cropped to 2.39:1" if v.crop != "none" else ""))
        for name, v in reversed(LORA_VERSIONS.items())])
    canvas: EnumProperty(name="Canvas", default="auto", items=[
        ("auto", "Auto", "The LoRA version's canvas"),
        *[(size, size.replace("x", "×"), "The model's canvas for the reference") for size in CANVASES]])
    crop: EnumProperty(name="Crop", default="auto", items=(
        ("auto", "Auto", "The LoRA version's: none for 1.0, to 2.39:1 for v0.1"),
        ("none", "None", "The picture as it is"),
        ("center", "2.39:1", "Cropped to 2.39:1, keeping the middle rows")))
    sampler: EnumProperty(name="Sampler", default="auto", items=(
        ("auto", "Auto", "The preset's: Euler for quality, Euler ancestral for fast"),
        ("euler", "Euler", "Deterministic steps"),
        ("euler_ancestral", "Euler ancestral", "Fresh noise each step, as the LoRA's author samples")))
    backend: EnumProperty(name="Backend", default="auto", items=(
        ("auto", "Auto", "LTX-2.3 when a GPU and the model files are there, otherwise a draft"),
        ("ltx", "LTX-2.3", "The model; fails without a CUDA GPU"),
        ("draft", "Draft", "A classical fill: no GPU, no model, seconds")))
    preset: EnumProperty(name="Preset", default="fast", items=(
        ("fast", "Fast", "The LoRA author's recipe: 8 distilled steps at CFG 1 (distilled checkpoint, or dev with "
                         "the distilled LoRA)"),
        ("quality", "Quality", "Dev checkpoint, 30 guided steps")))
    low_vram: BoolProperty(name="Low VRAM", description="fp8 weights streamed to the GPU, for 24 GB cards")
    delivery_size: EnumProperty(name="Delivery", default=DeliverySettings().size, items=[
        (size, size.replace("x", "×"), what) for size, what in SIZES.items()])
    window_frames: IntProperty(
        name="Window", default=WINDOW_FRAMES, min=MIN_WINDOW, max=MAX_WINDOW, step=8,
        description="A longer strip is made in overlapping windows of this many frames (8k+1; 121 = 5 s at 24 fps, "
                    "what the model is trained on)")
    window_overlap: IntProperty(
        name="Overlap", default=OVERLAP_FRAMES, min=MIN_OVERLAP, max=MAX_WINDOW // 2,
        description="Frames each window shares with the previous one (8k+1, at most half the window): it is "
                    "conditioned on them and they are cross-faded, so the generated region carries on across windows")
    delivery_codec: EnumProperty(name="Codec", default="auto", items=(
        ("auto", "Auto", "H.264 up to 4096×2048 (what hardware decoders take), HEVC above"),
        ("h264", "H.264", "Plays everywhere; hardware decoders stop at 4096×2048"),
        ("hevc", "HEVC", "Smaller files at the same quality; needs an HEVC decoder")))
    delivery_crf: IntProperty(name="Quality (CRF)", default=-1, min=-1, max=51,
                              description="Constant rate factor: lower is better and bigger; -1: the codec's "
                                          "delivery default (H.264 12, HEVC 14)")
    delivery_pixel_format: EnumProperty(name="Pixel format", default="yuv420p", items=(
        ("yuv420p", "8-bit 4:2:0", "What every player decodes"),
        ("yuv420p10le", "10-bit 4:2:0", "Smoother skies with HEVC; few players decode 10-bit H.264")))
    spherical_metadata: BoolProperty(name="360° metadata", default=True,
                                     description="Mark the video as 360° (V1 and V2 spherical metadata) so "
                                                 "headsets, YouTube and players show it as a sphere")
    suffix_360: BoolProperty(name="_360 in the name", description="result_360.mp4: some players only read that")
    audio: BoolProperty(name="Sound", default=True, description="Carry the strip's sound over, in sync")
    passes: EnumProperty(name="Passes", default="none", items=(
        ("none", "None", "The video only"),
        ("exr", "OpenEXR", "Half-float linear EXR frames as well, for compositing"),
        ("png16", "PNG 16-bit", "16-bit PNG frames as well, for compositing")))
    pass_alpha: EnumProperty(name="Generated region", default="alpha", items=(
        ("alpha", "As alpha", "The passes' alpha is 1 where the picture is generated, 0 on the plate"),
        ("separate", "Separate mask", "A mask sequence next to the passes")))
    output_dir: StringProperty(name="Output folder", subtype="DIR_PATH",
                               description="Where job folders go (default: the extension's user folder)")
    check_report: StringProperty(name="Engine check", default="")
    flamenco_manager_url: StringProperty(
        name="Flamenco manager", default="http://localhost:8080",
        description="The URL of the render farm's Flamenco manager (Submit to Flamenco)")
    farm_job_root: StringProperty(
        name="Farm job folder", subtype="DIR_PATH",
        description="Where farm job folders go: a folder on the shared storage every Flamenco worker sees")
    flamenco_worker_tag: StringProperty(
        name="Worker tag", description="Only Flamenco workers with this tag take the jobs (empty: any worker)")
    use_remote: BoolProperty(
        name="Run the engine on another machine (SSH)",
        description="Convert on a remote machine through the system's ssh (key authentication only): the strip's "
                    "clip is uploaded, the result downloaded into the local job folder")
    remote_host: StringProperty(name="Host", description="user@host or user@host:port (or an ~/.ssh/config alias)")
    remote_identity: StringProperty(
        name="Identity file", subtype="FILE_PATH",
        description="The private key the remote machine accepts (its .pub in the remote ~/.ssh/authorized_keys); "
                    "empty: ssh's own choice")
    remote_python: StringProperty(name="Remote engine Python", default="~/equi360/.venv/bin/python",
                                  description="The engine's Python on the remote machine (what `python -m engine "
                                              "setup` made there)")
    remote_root: StringProperty(name="Remote engine folder", default="~/equi360",
                                description="The folder on the remote machine that holds engine/ and "
                                            "blender_equi360/")
    remote_jobs: StringProperty(name="Remote jobs folder", default="~/equi360/jobs",
                                description="Where the job folders go on the remote machine")

    def draw(self, context):
        layout = self.layout
        from .install import draw_engine  # here, not at the top: install.py and models.py import this module
        from .models import draw_model_files
        draw_engine(layout, self)
        draw_model_files(layout, self, context)
        row = layout.row()
        row.prop(self, "backend")
        row.prop(self, "preset")
        row.prop(self, "sampler")
        row.prop(self, "low_vram")
        row = layout.row()
        row.prop(self, "checkpoint_variant")
        row.prop(self, "lora_version")
        row.prop(self, "canvas")
        row.prop(self, "crop")
        delivery = layout.box()
        delivery.label(text="Delivery")
        delivery.prop(self, "delivery_size")
        row = delivery.row()
        row.prop(self, "delivery_codec")
        row.prop(self, "delivery_crf")
        row.prop(self, "delivery_pixel_format")
        row = delivery.row()
        row.prop(self, "spherical_metadata")
        row.prop(self, "suffix_360")
        row.prop(self, "audio")
        row = delivery.row()
        row.prop(self, "passes")
        row.prop(self, "pass_alpha")
        row = layout.row()
        row.prop(self, "window_frames")
        row.prop(self, "window_overlap")
        layout.prop(self, "output_dir")
        farm = layout.box()
        farm.label(text="Render farm (Flamenco)")
        for name in ("flamenco_manager_url", "farm_job_root", "flamenco_worker_tag"):
            farm.prop(self, name)
        remote = layout.box()
        remote.prop(self, "use_remote")
        column = remote.column()
        column.active = self.use_remote
        for name in ("remote_host", "remote_identity", "remote_python", "remote_root", "remote_jobs"):
            column.prop(self, name)


def check_engine(prefs, job_dir=None) -> dict:
    """``python -m engine check`` in the engine's Python, as a dict; Equi360Error says why it could not run."""
    if not prefs.engine_python:
        raise Equi360Error("set the engine's Python in the add-on preferences")
    python = bpy.path.abspath(prefs.engine_python)
    command = [python, "-m", "engine", "check"] + ([str(job_dir)] if job_dir else [])
    try:
        run = subprocess.run(command, cwd=ADDON_ROOT, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Equi360Error(f"could not run the engine's Python {python!r} ({err}): set the engine's Python to the "
                           "interpreter of the engine's environment") from None
    if run.returncode != 0:
        last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit status {run.returncode}"
        raise Equi360Error(f"the engine check failed: {last}")
    try:
        return json.loads(run.stdout)
    except json.JSONDecodeError:
        raise Equi360Error(f"{python!r} is not the engine's Python: its check printed no report") from None


def summarize_check(report: dict) -> str:
    gpu = report["gpu"]
    lines = [f"GPU: {gpu['name']} ({gpu['memory_gb']} GB)" if gpu.get("cuda") else f"GPU: none ({gpu.get('why')})"]
    for name, entry in (report.get("models") or {}).items():
        if isinstance(entry, dict) and entry.get("configured"):
            lines.append(f"{name}: {'OK' if entry.get('ok') else entry.get('message', 'missing')}")
    lines.append("Missing: " + (", ".join(report["missing"]) or "nothing"))
    return "\n".join(lines)


class EQUI360_PG_scene(bpy.types.PropertyGroup):
    job_dir: StringProperty(name="Job folder", subtype="DIR_PATH",
                            description="The job of the last reference or conversion (job.json names its files)")
    heading_deg: FloatProperty(name="Heading", description="Where the plate faces in the world, from +X to +Y")
    source_channel: IntProperty(default=1)
    source_start: IntProperty(default=1)
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    status: StringProperty(name="Status")
    running: BoolProperty(default=False)
