# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine models find [DIR…]``: the model sets this machine already has, as JSON.

Where it looks, in this order (a folder reached twice is read once, under its first origin):

1. each DIR given, recursively (at most ``MAX_DEPTH`` folders deep and ``MAX_FOLDERS`` folders per DIR);
   a DIR that is a ComfyUI install is read as one (below);
2. ComfyUI installs: those in ``EQUI360_COMFYUI`` (folders separated by the system's path separator),
   ``~/ComfyUI``, ``~/Documents/ComfyUI`` (the desktop app's default), ``~/comfy/ComfyUI`` and
   ``~/Documents/comfy/ComfyUI`` (comfy-cli's); of each, its model folders (``models/checkpoints``,
   ``diffusion_models``/``unet``, ``text_encoders``/``clip``, ``loras``) and the folders its
   ``extra_model_paths.yaml`` names for them; and the desktop app's own ``extra_models_config.yaml``;
3. the Hugging Face cache (``HF_HUB_CACHE``, or ``HF_HOME/hub``, or ``~/.cache/huggingface/hub``).

Each ``.safetensors`` file is identified by its header alone (milliseconds, whatever its size; no weights
are read): an LTX-2.3 checkpoint (dev or distilled, bf16 or fp8), the VR-360 IC-LoRA (1.0 or v0.1, told
by its file name), the distilled LoRA, or a Gemma 3 single file (ComfyUI's); a folder with a Gemma 3
``config.json`` is a text encoder folder. Each is put through the engine's own check (``engine.weights``,
``engine.text_encoder``), so a file the engine would refuse (LTX-2.0, an fp4 Gemma, a truncated download)
is listed with the reason instead of offered. Other files are left out without a word, except damaged ones
whose names say they are ours.

The output: every complete set, paths named as job.json's ``models`` (``checkpoint``, ``text_encoder``,
``ic_lora``, ``distilled_lora``), with its recipes, canvases and the GPU memory its weights take; and the
files that are in no complete set, with why. See :func:`find` for the shape.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from blender_equi360.jobs.lora_versions import CANVASES, DEFAULT_LORA_VERSION, LORA_VERSIONS

from .configs import TEXT_PROJECTION
from .memory import memory_plan
from .model_sets import DISTILLED_LORA
from .protocol_io import EngineError
from .text_encoder import EMBEDDINGS, check_text_encoder
from .weights import Header, check_checkpoint, check_lora, checkpoint_kind, read_header

COMFYUI_ENV = "EQUI360_COMFYUI"
MAX_DEPTH = 6        # below each DIR: ComfyUI's models/<type>/<subfolder>/<file> is 3 deep
MAX_FOLDERS = 5000   # per DIR: enough for any model store, bounded for a DIR such as the home folder
# Folders never worth entering: code, environments, caches of other tools.
SKIPPED_FOLDERS = {"__pycache__", "node_modules", "site-packages", "custom_nodes", "python_embeded"}
# ComfyUI's model folder types that can hold our files; ``unet`` and ``clip`` are the old names of
# ``diffusion_models`` and ``text_encoders``.
COMFYUI_MODEL_TYPES = ("checkpoints", "diffusion_models", "unet", "text_encoders", "clip", "loras")
SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")  # one part of a folder's model, never a model alone
OUR_NAMES = re.compile(r"ltx|gemma|360|equirect", re.IGNORECASE)  # a damaged file with such a name is reported
GEMMA3_LAYER = re.compile(r"^model\.layers\.(\d+)\.self_attn\.q_norm\.")  # Gemma 3's: not Gemma 2's, not vision
LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.")
TRANSFORMER_PREFIX = "model.diffusion_model."
LTX2_MARKER = "audio_patchify_proj"  # the audio stream: LTX-2 (2.0 and 2.3), not LTX-Video 0.9
ROLES = ("checkpoint", "text_encoder", "ic_lora", "distilled_lora")
# The VR-360 IC-LoRA's releases by file name (the files carry no version of their own).
VR360_IC_LORAS = {name.lower(): release.name for release in LORA_VERSIONS.values() for name in release.file_names}


# --- where to look ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Root:
    path: Path
    origin: str          # why it is searched, for the report


def comfyui_installs() -> list[Path]:
    """ComfyUI installs in the usual places and in ``EQUI360_COMFYUI``, those that exist."""
    home = Path.home()
    named = [Path(p).expanduser() for p in os.environ.get(COMFYUI_ENV, "").split(os.pathsep) if p.strip()]
    usual = [home / "ComfyUI", home / "Documents" / "ComfyUI", home / "comfy" / "ComfyUI",
             home / "Documents" / "comfy" / "ComfyUI"]
    return [p for p in named + usual if is_comfyui_install(p)]


def is_comfyui_install(folder: Path) -> bool:
    return (folder / "models").is_dir() and any((folder / name).exists() for name in (
        "main.py", "extra_model_paths.yaml", "comfy", "user"))


def desktop_app_config() -> Path | None:
    """The ComfyUI desktop app's model paths (it writes them to its own settings folder, not to the install)."""
    if sys.platform == "win32":
        settings = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        settings = Path.home() / "Library" / "Application Support"
    else:
        settings = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = settings / "ComfyUI" / "extra_models_config.yaml"
    return path if path.is_file() else None


def comfyui_roots(install: Path, origin: str, notes: list[str]) -> list[Root]:
    """An install's model folders for our types, and those its extra_model_paths.yaml adds."""
    roots = [Root(install / "models" / kind, origin) for kind in COMFYUI_MODEL_TYPES]
    yaml_path = install / "extra_model_paths.yaml"
    return roots + (_read_yaml(yaml_path, notes) if yaml_path.is_file() else [])


def extra_model_paths(yaml_path: Path) -> list[Root]:
    """The folders a ComfyUI ``extra_model_paths.yaml`` names for our model types, as ComfyUI reads them: named
    sections, each with an optional ``base_path`` (``~`` and variables expanded; relative to the file's folder
    when relative) and, per type, one or more paths (one a line), each relative to ``base_path``."""
    try:
        import yaml  # PyYAML: a dependency of huggingface_hub and transformers, so always in the engine's Python
    except ImportError:
        raise EngineError("bad_input", f"{yaml_path} not read: PyYAML is not installed in the engine's Python "
                                      "(pip install pyyaml)") from None
    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise EngineError("bad_input", f"{yaml_path} not read: {err}") from None
    here, roots = yaml_path.parent, []
    for section, entries in config.items() if isinstance(config, dict) else ():
        if not isinstance(entries, dict):  # an empty or malformed section: ComfyUI skips it too
            continue
        base = entries.get("base_path")
        base = here / _expanded(str(base)) if base is not None else None  # an absolute base_path replaces `here`
        for kind in COMFYUI_MODEL_TYPES:
            for line in str(entries.get(kind) or "").splitlines():
                if line.strip():
                    path = _expanded(line.strip())
                    where = Path(os.path.normpath((base or here) / path))  # without "..": a path a user reads
                    roots.append(Root(where, f"{yaml_path} ({section}: {kind})"))
    return roots


def _expanded(text: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(text)))


def hf_cache_roots() -> list[Root]:
    """Every snapshot of every model repository in the Hugging Face cache."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound
    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)
    except (CacheNotFound, OSError):
        return []
    return [Root(revision.snapshot_path, f"Hugging Face cache ({repo.repo_id})")
            for repo in sorted(cache.repos, key=lambda r: r.repo_id) if repo.repo_type == "model"
            for revision in sorted(repo.revisions, key=lambda r: r.commit_hash)]


def search_roots(dirs: list[Path], notes: list[str]) -> list[Root]:
    roots = []
    for folder in dirs:
        if is_comfyui_install(folder):
            roots += comfyui_roots(folder, f"ComfyUI install {folder} (given)", notes)
            continue
        roots.append(Root(folder, "given"))
        if (folder / "extra_model_paths.yaml").is_file():
            roots += _read_yaml(folder / "extra_model_paths.yaml", notes)
    for install in comfyui_installs():
        roots += comfyui_roots(install, f"ComfyUI install {install}", notes)
    if (desktop := desktop_app_config()) is not None:
        roots += _read_yaml(desktop, notes)
    return roots + hf_cache_roots()


def _read_yaml(path: Path, notes: list[str]) -> list[Root]:
    try:
        return extra_model_paths(path)
    except EngineError as err:
        notes.append(str(err))
        return []


# --- walking ----------------------------------------------------------------------------------------------------

@dataclass
class Walk:
    """Folders already read (by their real path, so links and overlapping roots cost nothing twice)."""
    seen: set = field(default_factory=set)
    notes: list = field(default_factory=list)

    def folders(self, root: Root):
        """Yields (folder, its .safetensors files, whether it holds a config.json), depth first, bounded."""
        stack, visited = [(root.path, 0)], 0
        while stack:
            folder, depth = stack.pop()
            real = os.path.realpath(folder)
            if real in self.seen:
                continue
            self.seen.add(real)
            visited += 1
            if visited > MAX_FOLDERS:
                self.notes.append(f"{root.path}: stopped after {MAX_FOLDERS} folders; give a narrower folder")
                return
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError:
                continue
            files = [Path(e.path) for e in entries if e.name.endswith(".safetensors") and _is_file(e)]
            yield folder, files, any(e.name == "config.json" for e in entries)
            if depth < MAX_DEPTH:
                stack += [(Path(e.path), depth + 1) for e in reversed(entries)
                          if _is_dir(e) and not e.name.startswith(".") and e.name not in SKIPPED_FOLDERS]


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


# --- what each file is ------------------------------------------------------------------------------------------

@dataclass
class Found:
    path: Path
    role: str | None          # one of ROLES, or None for a file that cannot take a role
    what: str                 # in words
    origin: str
    problem: str | None = None            # why it cannot be used
    variant: str | None = None            # checkpoint: dev | distilled (None: the file does not say)
    fp8: bool = False                     # checkpoint, text encoder: fp8 weights
    version: str | None = None            # IC-LoRA: a release of LORA_VERSIONS
    text_width: int | None = None         # the text features a checkpoint reads, or a Gemma gives
    header: Header | None = None          # checkpoint: its tensors (for the memory plan)
    weight_bytes: int = 0                 # text encoder: its weights on the GPU

    def short(self) -> dict:
        return {"path": str(self.path), "role": self.role, "what": self.what, "found_in": self.origin}


def identify_file(path: Path, origin: str) -> Found | None:
    try:
        header = read_header(path, "model file")
    except EngineError as err:
        return Found(path, None, "damaged file", origin, problem=str(err)) if OUR_NAMES.search(path.name) else None
    keys = header.keys
    if any(k.startswith(TRANSFORMER_PREFIX) and LTX2_MARKER in k for k in keys):
        return identify_checkpoint(path, header, origin)
    if any(marker in k for k in keys for marker in LORA_MARKERS):
        return identify_lora(path, origin)
    if EMBEDDINGS in keys and any(GEMMA3_LAYER.match(k) for k in keys):
        return identify_text_encoder(path, origin, text_width(header))
    return None


def identify_checkpoint(path: Path, header: Header, origin: str) -> Found:
    try:
        check_checkpoint(path)
    except EngineError as err:  # LTX-2.0, or a transformer without its VAEs (a split file)
        return Found(path, None, "LTX-2 file", origin, problem=str(err))
    found = Found(path, "checkpoint", "LTX-2.3 checkpoint", origin, header=header)
    projection = header.shapes.get(TEXT_PROJECTION)
    found.text_width = projection[1] if projection and len(projection) == 2 else None
    try:
        kind = checkpoint_kind(path, header)
        found.variant, found.fp8 = kind.variant, kind.fp8
    except EngineError as err:
        if err.code != "unknown_checkpoint":  # fp8 weights without their scales
            found.role, found.problem = None, str(err)
        found.fp8 = any(d.startswith("F8_") for d in header.dtypes.values())
    found.what = f"LTX-2.3 {found.variant or 'dev or distilled (not said)'} checkpoint{' (fp8)' if found.fp8 else ''}"
    return found


def identify_lora(path: Path, origin: str) -> Found | None:
    name = path.name.lower()
    version = VR360_IC_LORAS.get(name)
    try:
        header, _ = check_lora(path)
    except EngineError as err:  # a LoRA for another model: none of ours, unless it has the VR-360 LoRA's name
        return Found(path, None, "VR-360 IC-LoRA?", origin, problem=str(err)) if version else None
    if not any("transformer_blocks." in k for k in header.keys):
        return None
    if version:
        return Found(path, "ic_lora", f"VR-360 IC-LoRA {version}", origin, version=version)
    if "distilled" in name:
        if "19b" in name:
            return Found(path, None, "LTX-2.0 distilled LoRA", origin,
                         problem=f"the distilled LoRA of LTX-2.0 (19B): the dev checkpoint of LTX-2.3 needs "
                                 f"{DISTILLED_LORA.name}")
        return Found(path, "distilled_lora", "LTX-2.3 distilled LoRA", origin)
    if "reference_downscale_factor" in header.metadata or re.search(r"ic[-_ ]?lora", name):
        return Found(path, None, "unknown IC-LoRA", origin,
                     problem=f"an IC-LoRA, but not the VR-360 one by its name ({', '.join(VR360_IC_LORAS)}): if "
                             "it is a renamed copy, choose it by hand in the preferences")
    return None


def identify_text_encoder(path: Path, origin: str, width: int | None) -> Found:
    """A Gemma 3 folder or ComfyUI single file, as the engine's own check sees it (an fp4 file, a file without
    its tokenizer, a shard of a folder are refused there, with what to use instead)."""
    try:
        files = check_text_encoder(path)
    except EngineError as err:
        return Found(path, None, "Gemma 3 text encoder", origin, problem=str(err))
    layout = "folder" if files.layout == "folder" else "single file"
    return Found(path, "text_encoder", f"Gemma 3 {layout} ({files.storage})", origin,
                 fp8=files.storage == "fp8_scaled", text_width=width, weight_bytes=files.weight_bytes)


def text_width(header: Header) -> int:
    """The text features a Gemma gives the connectors: its hidden size × (its layers + the embeddings)."""
    layers = {int(m.group(1)) for k in header.keys if (m := GEMMA3_LAYER.match(k))}
    return header.shapes[EMBEDDINGS][1] * (len(layers) + 1)


def identify_folder(folder: Path, origin: str) -> Found | None:
    """A Hugging Face Gemma 3 folder; None for any other folder with a config.json."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or config.get("model_type") != "gemma3":
        return None
    text = config.get("text_config") or {}
    size = text.get("hidden_size"), text.get("num_hidden_layers")
    return identify_text_encoder(folder, origin, size[0] * (size[1] + 1) if all(isinstance(n, int) for n in size)
                                 else None)


# --- complete sets ----------------------------------------------------------------------------------------------

def _fits(checkpoint: Found, encoder: Found) -> bool:
    """The checkpoint's text projection reads the Gemma's hidden size × (layers + 1): a Gemma of another size
    cannot feed it. Unknown widths are taken to fit."""
    return None in (checkpoint.text_width, encoder.text_width) or checkpoint.text_width == encoder.text_width


def recipes(variant: str | None, distilled_lora: Found | None) -> list[str]:
    if variant == "distilled":
        return ["fast"]
    if variant == "dev":
        return ["quality", "fast"] if distilled_lora else ["quality"]
    return []


def assemble(found: list[Found]) -> tuple[list[dict], list[dict]]:
    """The complete sets (one per usable checkpoint, the best partners chosen and the others listed as
    alternatives), and every file in none of them, with why."""
    usable = {role: [f for f in found if f.role == role] for role in ROLES}
    sets, used, missing_by_checkpoint = [], set(), {}
    for checkpoint in usable["checkpoint"]:
        # Prefer a text encoder of the checkpoint's precision, then one found in the same place.
        encoders = sorted((e for e in usable["text_encoder"] if _fits(checkpoint, e)),
                          key=lambda e: (e.fp8 != checkpoint.fp8, e.origin != checkpoint.origin))
        ic_loras = sorted(usable["ic_lora"], key=lambda f: f.version or "", reverse=True)
        distilled = usable["distilled_lora"] if checkpoint.variant != "distilled" else []
        missing = [why for why, present in (
            (_no_text_encoder_why(checkpoint, usable["text_encoder"]), encoders),
            ("no VR-360 IC-LoRA found", ic_loras)) if not present]
        if missing:
            missing_by_checkpoint[checkpoint.path] = "; ".join(missing)
            continue
        chosen = {"checkpoint": checkpoint, "text_encoder": encoders[0], "ic_lora": ic_loras[0],
                  "distilled_lora": distilled[0] if distilled else None}
        used.update(f.path for f in [checkpoint, *encoders, *ic_loras, *distilled])
        sets.append(describe_set(chosen, {"text_encoder": encoders[1:], "ic_lora": ic_loras[1:],
                                          "distilled_lora": distilled[1:]}))
    sets.sort(key=lambda s: (-len(s["recipes"]), s["ic_lora_version"] != DEFAULT_LORA_VERSION, s["checkpoint"]))
    unused = [{**f.short(), "why": f.problem or missing_by_checkpoint.get(f.path) or _unused_why(f, usable)}
              for f in found if f.path not in used]
    return sets, unused


def _no_text_encoder_why(checkpoint: Found, encoders: list[Found]) -> str:
    if not encoders:
        return "no Gemma 3 12B text encoder found"
    widths = ", ".join(sorted({str(e.text_width) for e in encoders}))
    return (f"the Gemma 3 text encoders found do not fit this checkpoint (it reads {checkpoint.text_width} text "
            f"features; they give {widths}): it needs Gemma 3 12B")


def _unused_why(part: Found, usable: dict) -> str:
    if not usable["checkpoint"]:
        return "no LTX-2.3 checkpoint found to go with it"
    if part.role == "distilled_lora" and all(c.variant == "distilled" for c in usable["checkpoint"]):
        return "only distilled checkpoints found: they need no distilled LoRA (it goes with the dev checkpoint)"
    if part.role == "text_encoder" and not any(_fits(c, part) for c in usable["checkpoint"]):
        return "it does not fit the LTX-2.3 checkpoints found (another Gemma size: they need Gemma 3 12B)"
    return "the LTX-2.3 checkpoints found lack another part (see their entries)"


def describe_set(chosen: dict, alternatives: dict) -> dict:
    checkpoint, encoder, ic_lora = chosen["checkpoint"], chosen["text_encoder"], chosen["ic_lora"]
    notes = []
    if checkpoint.variant is None:
        notes.append(f"{checkpoint.path.name} does not say whether it is the dev or the distilled model: set the "
                     "preferences' Checkpoint kind (checkpoint_variant) to choose its recipes")
    elif checkpoint.variant == "dev" and not chosen["distilled_lora"]:
        notes.append(f"the fast recipe needs the distilled LoRA ({DISTILLED_LORA.name}) with "
                     "this dev checkpoint: python -m engine models fetch dev DIR has it")
    return {
        **{role: str(chosen[role].path) if chosen[role] else None for role in ROLES},
        "checkpoint_variant": checkpoint.variant,
        "checkpoint_fp8": checkpoint.fp8,
        "text_encoder_kind": encoder.what,
        "ic_lora_version": ic_lora.version,
        "recipes": recipes(checkpoint.variant, chosen["distilled_lora"]),
        "canvases": list(CANVASES),
        "trained_canvas": str(LORA_VERSIONS[ic_lora.version].canvas),
        "memory_gb": memory_plan(checkpoint.header, encoder.weight_bytes, low_vram=False),
        "memory_gb_low_vram": memory_plan(checkpoint.header, encoder.weight_bytes, low_vram=True),
        "alternatives": {role: [str(f.path) for f in files] for role, files in alternatives.items()},
        "notes": notes,
    }


# --- the command ------------------------------------------------------------------------------------------------

MEMORY_NOTE = ("memory_gb: the weights on the GPU in each phase, in GiB, as the engine plans them (text_gb: Gemma "
               "while the prompt is encoded; denoise_gb: transformer, connectors and VAEs; decode_gb: connectors "
               "and VAEs); fp8 weights count at the bf16 size they are dequantised to. Activations come on top "
               "(several GB at 2560x1280). memory_gb_low_vram: the same with the preferences' Low VRAM on.")


def find(dirs=()) -> dict:
    """Everything found, as JSON-ready data:

    ``{"sets": [{"checkpoint", "text_encoder", "ic_lora", "distilled_lora": path | null, "checkpoint_variant":
    "dev" | "distilled" | null, "checkpoint_fp8": bool, "text_encoder_kind": str, "ic_lora_version": "1.0" |
    "0.1", "recipes": ["quality", "fast"], "canvases": [...], "trained_canvas": str, "memory_gb": {"text_gb",
    "denoise_gb", "decode_gb"}, "memory_gb_low_vram": {...}, "alternatives": {"text_encoder", "ic_lora",
    "distilled_lora": [path]}, "notes": [str]}], "unused": [{"path", "role", "what", "found_in", "why"}],
    "searched": [{"path", "found_in", "exists"}], "memory_note": str, "notes": [str]}``

    Sets come most capable first: both recipes, then the IC-LoRA's current release."""
    notes: list[str] = []
    roots = search_roots([Path(os.path.normpath(Path(d).expanduser().absolute())) for d in dirs], notes)
    walk = Walk(notes=notes)
    found: list[Found] = []
    for root in roots:
        for folder, files, has_config in walk.folders(root):
            if has_config and (model_folder := identify_folder(folder, root.origin)) is not None:
                found.append(model_folder)
                continue
            for path in files:
                if SHARD_NAME.search(path.name) or os.path.realpath(path) in walk.seen:
                    continue
                walk.seen.add(os.path.realpath(path))
                if (model_file := identify_file(path, root.origin)) is not None:
                    found.append(model_file)
    sets, unused = assemble(found)
    return {"sets": sets, "unused": unused,
            "searched": [{"path": str(r.path), "found_in": r.origin, "exists": r.path.is_dir()} for r in roots
                         if r.origin == "given" or r.path.is_dir()],
            "memory_note": MEMORY_NOTE, "notes": notes}
