"""``job.json``: what the add-on asks of the engine. Defined once here; both sides use it.

A job folder holds ``job.json``, the inputs it names (usually the reference and its mask), and
everything the engine writes (the result, ``engine.log``). Relative paths are relative to the job
folder; the output must be inside it. The file is flat; its delivery fields are declared in
:mod:`.delivery_settings`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .atomic import write_json_atomically
from .canvas import CanvasSize
from .delivery_settings import DeliverySettings
from .errors import Equi360Error, IncompatibleJob, require
from .lora_versions import CANVASES, DEFAULT_LORA_VERSION, LORA_VERSIONS
from .windows import MANIFEST_FILE, OVERLAP_FRAMES, WINDOW_FRAMES, WINDOWS_DIR, check_window_settings

JOB_FILE = "job.json"
LOG_FILE = "engine.log"
LOCK_FILE = "job.lock"
# What the engine keeps in a job folder besides the files job.json names.
ENGINE_FILES = {JOB_FILE: "the job", LOG_FILE: "the engine's log", LOCK_FILE: "the job's lock",
                MANIFEST_FILE: "the windows' record", WINDOWS_DIR: "the windows' folder"}
VERSION = 1
BACKENDS = ("auto", "ltx", "draft")
PRESETS = ("quality", "fast")
CHECKPOINT_VARIANTS = ("auto", "dev", "distilled")  # auto: as the checkpoint file says (its metadata or name)
SAMPLERS = ("auto", "euler", "euler_ancestral")     # auto: the preset's (quality: euler, fast: euler_ancestral)
# The VR-360 LoRA author's prompt for 1.0 (it holds v0.1's trigger word, "equirectangular"); the job's
# prompt is appended to it.
BASE_PROMPT = "360 degree equirectangular panorama, high quality, detailed video"
MAX_PROMPT = 2000      # characters; Gemma reads up to 1024 tokens
MAX_SEED = 2**32 - 1   # each window adds its index; torch takes up to 2**64 - 1


@dataclass(frozen=True)
class ModelFiles:
    checkpoint: str | None = None       # ltx-2.3-22b-dev.safetensors, -distilled-1.1, or their -fp8
    text_encoder: str | None = None     # Gemma 3 12B: its Hugging Face folder or ComfyUI's single file
    ic_lora: str | None = None          # the VR-360 IC-LoRA .safetensors
    distilled_lora: str | None = None   # for the fast preset on the dev checkpoint

    def configured(self) -> bool:
        return all((self.checkpoint, self.text_encoder, self.ic_lora))


CROPS = ("center", "top", "bottom", "none")
STOP_AFTER = ("reference", "delivery")  # reference: only build the reference (the add-on's placement check)


@dataclass(frozen=True)
class SourceSpec:
    """The flat clip the engine builds the job's reference from (its first stage, ``reference``), and how:
    the span the strip shows, its rate, the camera that shot it, the canvas and crop (None: the LoRA
    version's). The reference, its mask and its placement record go where ``reference`` and ``mask`` say."""
    path: str                        # the clip; relative to the job folder unless absolute
    start_s: float = 0.0
    frames: int | None = None        # 8k+1; None: the whole clip from start_s, padded to 8k+1
    fps: float | None = None         # None: the clip's own rate
    hfov_deg: float = 100.0          # the picture's horizontal FOV (bars removed, before any crop)
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    lora_version: str = DEFAULT_LORA_VERSION
    crop: str | None = None          # one of CROPS
    size: str | None = None          # the canvas, WIDTHxHEIGHT

    def __post_init__(self):
        _check(isinstance(self.path, str) and self.path.strip() and "\0" not in self.path,
               "source.path must be a file path")
        for name in ("start_s", "hfov_deg", "yaw_deg", "pitch_deg", "roll_deg", "shift_x", "shift_y"):
            _check(_number(getattr(self, name)), f"source.{name} must be a number")
        _check(self.frames is None or (_whole(self.frames) and self.frames >= 1),
               "source.frames must be a positive whole number (or null for the whole clip)")
        _check(self.fps is None or (_number(self.fps) and self.fps > 0), "source.fps must be a positive number "
                                                                         "(or null for the clip's own)")
        _check(self.lora_version in LORA_VERSIONS, f"source.lora_version {self.lora_version!r} is not one of "
                                                   f"{', '.join(LORA_VERSIONS)}")
        _check(self.crop is None or self.crop in CROPS, f"source.crop {self.crop!r} is not one of {', '.join(CROPS)}")
        _check(self.size is None or _canvas_size(self.size), f"source.size {self.size!r} is not a canvas size "
                                                             "like 2560x1280")


def _canvas_size(text) -> bool:
    try:
        return isinstance(text, str) and CanvasSize.parse(text) is not None
    except Equi360Error:
        return False


def _made_from(default, **kwargs):
    """A field a window's frames depend on: a finished window is reused only while these stay the same
    (the engine's fingerprint of a job is made of exactly these, the backend, and the input files)."""
    return field(default=default, metadata={"generation": True}, **kwargs)


@dataclass(frozen=True)
class Job:
    reference: str
    mask: str
    output: str = "result.mp4"
    backend: str = "auto"
    preset: str = _made_from("quality")
    checkpoint_variant: str = _made_from("auto")
    sampler: str = _made_from("auto")
    canvas: str | None = _made_from(None)           # None: the reference's own size (one of CANVASES)
    source: SourceSpec | None = _made_from(None)    # set: the engine builds the reference from it first
    stop_after: str = "delivery"                    # "reference": build the reference only
    low_vram: bool = _made_from(False)
    models: ModelFiles = field(default_factory=ModelFiles)
    prompt: str = _made_from("")                    # appended to BASE_PROMPT
    negative_prompt: str | None = _made_from(None)  # None: the model's default
    seed: int = _made_from(0)
    steps: int | None = _made_from(None)            # None: the preset's
    lora_strength: float = _made_from(1.0)
    output_frames: int | None = None    # frames delivered (the shown span); None: every frame from the clip
    window_frames: int = _made_from(WINDOW_FRAMES)  # a longer clip is made in overlapping windows of this many
    window_overlap: int = _made_from(OVERLAP_FRAMES)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)  # flat in job.json
    version: int = VERSION

    def __post_init__(self):
        _check_version(self.version)
        for name in ("reference", "mask", "output"):
            _check(isinstance(getattr(self, name), str) and getattr(self, name).strip() and "\0" not in
                   getattr(self, name), f"{name} must be a file path")
        _check(_same_name(self.reference) != _same_name(self.mask), "reference and mask must be different files")
        _check(Path(self.output).suffix.lower() == ".mp4", f"output {self.output!r} must end in .mp4: the delivery "
                                                           "is an MP4 (e.g. result.mp4)")
        _check(isinstance(self.models, ModelFiles), "models must be an object")
        _check(self.source is None or isinstance(self.source, SourceSpec), "source must be an object (or null)")
        _check(self.stop_after in STOP_AFTER, f"stop_after {self.stop_after!r} is not one of {', '.join(STOP_AFTER)}")
        _check(isinstance(self.delivery, DeliverySettings), "delivery must be DeliverySettings")
        _check(self.backend in BACKENDS, f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        _check(self.preset in PRESETS, f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        _check(self.checkpoint_variant in CHECKPOINT_VARIANTS, f"checkpoint_variant {self.checkpoint_variant!r} is "
                                                               f"not one of {', '.join(CHECKPOINT_VARIANTS)}")
        _check(self.sampler in SAMPLERS, f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        _check(self.canvas is None or self.canvas in CANVASES, f"canvas {self.canvas!r} is not one of "
                                                               f"{', '.join(CANVASES)} (or null: the reference's)")
        _check(isinstance(self.low_vram, bool), "low_vram must be true or false")
        _check(isinstance(self.prompt, str) and len(self.prompt) <= MAX_PROMPT, f"prompt must be text of at most "
                                                                                f"{MAX_PROMPT} characters")
        _check(self.negative_prompt is None or (isinstance(self.negative_prompt, str) and
                                                len(self.negative_prompt) <= MAX_PROMPT),
               f"negative_prompt must be text of at most {MAX_PROMPT} characters (or null)")
        _check(_whole(self.seed) and 0 <= self.seed <= MAX_SEED, f"seed must be a whole number from 0 to {MAX_SEED}")
        _check(self.steps is None or (_whole(self.steps) and 1 <= self.steps <= 200),
               "steps must be a whole number from 1 to 200 (or null)")
        _check(_number(self.lora_strength) and 0.0 <= self.lora_strength <= 2.0,
               "lora_strength must be a number from 0 to 2")
        _check(self.output_frames is None or (_whole(self.output_frames) and self.output_frames >= 1),
               "output_frames must be a positive whole number (or null for all)")
        _check(_whole(self.window_frames) and _whole(self.window_overlap), "window_frames and window_overlap must "
                                                                           "be whole numbers")
        try:
            check_window_settings(self.window_frames, self.window_overlap)
        except Equi360Error as err:
            raise Equi360Error(f"{JOB_FILE}: {err}") from None

    @property
    def full_prompt(self) -> str:
        return f"{BASE_PROMPT}, {self.prompt}" if self.prompt.strip() else BASE_PROMPT

    @classmethod
    def generation_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("generation"))

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        _check(isinstance(data, dict), "the top level must be a JSON object")
        _check_version(data.get("version", VERSION))  # first: another version may have other fields
        delivery_names = DeliverySettings.job_names()
        known = {f.name for f in fields(cls)} - {"delivery"} | set(delivery_names)
        unknown = sorted(set(data) - known)
        _check(not unknown, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = sorted(n for n in ("reference", "mask") if n not in data)
        _check(not missing, f"missing field(s) {', '.join(missing)}")
        models = data.get("models", {})
        _check(isinstance(models, dict), "models must be an object")
        model_names = {f.name for f in fields(ModelFiles)}
        _check(set(models) <= model_names, f"unknown model file(s) {', '.join(sorted(set(models) - model_names))}")
        for name, path in models.items():
            _check(path is None or (isinstance(path, str) and path.strip() and "\0" not in path),
                   f"models.{name} must be a file path (or null)")
        source = data.get("source")
        if source is not None:
            _check(isinstance(source, dict), "source must be an object (or null)")
            names = {f.name for f in fields(SourceSpec)}
            _check(set(source) <= names, f"unknown source field(s) {', '.join(sorted(set(source) - names))}; "
                                         f"known: {', '.join(sorted(names))}")
            _check("path" in source, "source.path is missing")
            source = SourceSpec(**source)
        rest = {k: v for k, v in data.items() if k not in delivery_names and k != "source"}
        try:
            delivery = DeliverySettings(**{delivery_names[k]: v for k, v in data.items() if k in delivery_names})
        except Equi360Error as err:
            raise Equi360Error(f"{JOB_FILE}: {err}") from None
        return cls(**{**rest, "models": ModelFiles(**models), "source": source, "delivery": delivery})

    @classmethod
    def from_fields(cls, **fields) -> "Job":
        """A job from job.json's flat fields given as keywords (``models`` may be a :class:`ModelFiles`)."""
        for name in ("models", "source"):
            if isinstance(fields.get(name), (ModelFiles, SourceSpec)):
                fields[name] = asdict(fields[name])
        return cls.from_dict(fields)

    def to_dict(self) -> dict:
        """job.json's content: flat, the delivery's fields under their job.json names."""
        data = asdict(self)
        delivery = data.pop("delivery")
        names = {field_name: json_name for json_name, field_name in DeliverySettings.job_names().items()}
        version = data.pop("version")
        return {**data, **{names[k]: v for k, v in delivery.items()}, "version": version}


# The job.json fields the add-on's preferences set (its properties carry these very names).
PREFERENCE_FIELDS = ("backend", "preset", "checkpoint_variant", "sampler", "low_vram", "window_frames",
                     "window_overlap", *DeliverySettings.job_names())
REFERENCE_NAME, MASK_NAME = "reference.mkv", "mask.mkv"  # in the job folders the add-on makes


def job_from_preferences(preferences: dict, models: dict, output_frames: int, canvas: str,
                         source: SourceSpec | None = None, stop_after: str = "delivery") -> Job:
    """The job the add-on makes for a strip: its preferences' values by job.json name (a CRF of −1 and passes
    "none" mean unset), the model files (absolute paths or None), the strip's frame count, the canvas its
    reference is built at (recorded when it is one of the model's), and the source the engine builds the
    reference from."""
    fields = {name: preferences[name] for name in PREFERENCE_FIELDS}
    fields["delivery_crf"] = None if fields["delivery_crf"] < 0 else fields["delivery_crf"]
    fields["passes"] = None if fields["passes"] == "none" else fields["passes"]
    return Job.from_fields(reference=REFERENCE_NAME, mask=MASK_NAME, models=models, output_frames=output_frames,
                           canvas=canvas if canvas in CANVASES else None, source=source, stop_after=stop_after,
                           **fields)


def _whole(value) -> bool:
    """An integer, and not true/false (JSON's booleans are Python ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same_name(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))


def _check_version(version) -> None:
    _check(_whole(version), f"version must be a whole number (this Equi360 writes {VERSION})")
    if version != VERSION:
        raise IncompatibleJob(f"{JOB_FILE}: made by another version of Equi360 (job version {version!r}; this "
                              f"one reads {VERSION}): run it with that version, or make the job again")


def _check(ok: bool, message: str) -> None:
    require(ok, f"{JOB_FILE}: {message}")


def load_job(job_dir) -> Job:
    path = Path(job_dir) / JOB_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Equi360Error(f"{path}: no such file (the job folder must contain {JOB_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Equi360Error(f"{path}: not valid JSON ({err})") from None
    return Job.from_dict(data)


def save_job(job_dir, job: Job) -> Path:
    """Write ``job.json`` atomically (temporary name, then rename)."""
    path = Path(job_dir) / JOB_FILE
    write_json_atomically(path, job.to_dict())
    return path


def job_path(job_dir, relative: str) -> Path:
    """A path named in the job, resolved against the job folder."""
    return (Path(job_dir) / relative).resolve()


def check_job_folder(job_dir, job: Job) -> None:
    """Before any work: the files the job names do not collide with each other or with the engine's own
    (job.json, engine.log, job.lock, windows.json, windows/), the outputs are inside the job folder, and
    nothing the engine writes there (its own files, the outputs, the passes) is reached through a
    symbolic link: the engine writes only inside the job folder."""
    folder = Path(job_dir).resolve()
    output = _inside(folder, job.output, "output")
    delivery = job.delivery
    video = delivery.video_path(output)
    passes = delivery.passes_folder(video)
    reference = job_path(folder, job.reference)
    named = {"reference": reference, "mask": job_path(folder, job.mask),
             "the reference's placement record": reference.with_suffix(".json"), "output": video}
    if passes:
        named["the passes folder"] = passes
    taken = {folder / name: what for name, what in ENGINE_FILES.items()}
    for role, path in named.items():
        clash = next((what for other, what in taken.items()
                      if path == other or other in path.parents or path in other.parents), None)
        _check(clash is None, f"{role} ({_shown(folder, path)}) would overwrite or sit inside {clash}: "
                              "choose another name")
        taken[path] = role
    for path in [folder / name for name in ENGINE_FILES if name != JOB_FILE] + [video, *([passes] if passes else [])]:
        _no_link(folder, path)


def _shown(folder: Path, path: Path) -> str:
    return str(path.relative_to(folder)) if folder in path.parents else str(path)


def _inside(folder: Path, relative: str, role: str) -> Path:
    """``relative`` under ``folder`` as written (links not followed), refused when it leaves the folder."""
    path = Path(os.path.normpath(folder / relative))
    _check(folder in path.parents, f"{role} {relative!r} must be inside the job folder")
    return path


def _no_link(folder: Path, path: Path) -> None:
    for part in (path, *path.parents):
        if part == folder:
            return
        if part.is_symlink():
            _check(False, f"{part.relative_to(folder)} is a symbolic link: the engine writes only inside the job "
                          "folder; remove the link (or copy what it points to into the folder)")


def output_path(job_dir, job: Job) -> Path:
    """Where the engine writes the result, as ``output`` names it; refuses anything outside the job folder."""
    out = job_path(job_dir, job.output)
    _check(Path(job_dir).resolve() in out.parents, f"output {job.output!r} must be inside the job folder")
    return out


def delivered_path(job_dir, job: Job) -> Path:
    """The delivered video's path: ``output``, with ``_360`` added when the job asks for it."""
    return job.delivery.video_path(output_path(job_dir, job))


def new_job_folder(root: Path, name: str) -> Path:
    """A new, empty job folder under ``root`` named after ``name`` (a strip's) and the time: names sort by
    age and never collide."""
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}_{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        job_dir = root / (stem if n == 1 else f"{stem}_{n}")
        try:
            job_dir.mkdir()
            return job_dir
        except FileExistsError:
            continue
    raise Equi360Error(f"{root}: could not make a new job folder (a thousand named {stem} already exist)")
