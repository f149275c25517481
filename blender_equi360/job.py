"""``job.json``: what the add-on asks of the engine. Defined once here; both sides use it.

A job folder holds ``job.json``, the inputs it names (usually the reference and its mask), and
everything the engine writes (the result, ``engine.log``). Relative paths are relative to the job
folder; the output must be inside it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .delivery import DeliverySettings
from .errors import Equi360Error, IncompatibleJob
from .projection import CanvasSize
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
TRIGGER_WORD = "equirectangular"
MAX_PROMPT = 2000      # characters; Gemma reads up to 1024 tokens
MAX_SEED = 2**32 - 1   # each window adds its index; torch takes up to 2**64 - 1
MAX_DELIVERY = CanvasSize(8192, 4096)


@dataclass(frozen=True)
class ModelFiles:
    checkpoint: str | None = None       # ltx-2.3-22b-dev.safetensors
    text_encoder: str | None = None     # Gemma 3 12B folder
    ic_lora: str | None = None          # the VR-360 IC-LoRA .safetensors
    distilled_lora: str | None = None   # for the fast preset

    def configured(self) -> bool:
        return all((self.checkpoint, self.text_encoder, self.ic_lora))


@dataclass(frozen=True)
class Job:
    reference: str
    mask: str
    output: str = "result.mp4"
    backend: str = "auto"
    preset: str = "quality"
    low_vram: bool = False
    models: ModelFiles = field(default_factory=ModelFiles)
    prompt: str = ""                    # appended to the trigger word
    negative_prompt: str | None = None  # None: the model's default
    seed: int = 0
    steps: int | None = None            # None: the preset's
    lora_strength: float = 1.0
    delivery_size: str = "3840x1920"    # the delivered canvas; the plate is projected again at its density
    output_frames: int | None = None    # frames delivered (the shown span); None: every frame from the clip
    window_frames: int = WINDOW_FRAMES  # a longer clip is made in overlapping windows of this many frames
    window_overlap: int = OVERLAP_FRAMES
    # The delivery (blender_equi360/delivery.py): codec auto = H.264 up to 4096×2048, HEVC above.
    delivery_codec: str = "auto"
    delivery_crf: int | None = None
    delivery_pixel_format: str = "yuv420p"
    spherical_metadata: bool = True     # V1 + V2 360° metadata in the MP4
    suffix_360: bool = False            # result.mp4 → result_360.mp4
    audio: bool = True                  # the source's sound, in sync
    passes: str | None = None           # "exr" | "png16": an image sequence for compositing as well
    pass_alpha: str = "alpha"           # the generated region as alpha, or a "separate" mask sequence
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
        _check(self.backend in BACKENDS, f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        _check(self.preset in PRESETS, f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
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
        _check(isinstance(self.delivery_size, str), "delivery_size must be text like 3840x1920")
        _check(self.output_frames is None or (_whole(self.output_frames) and self.output_frames >= 1),
               "output_frames must be a positive whole number (or null for all)")
        try:
            check_delivery_canvas(self.delivery_canvas)
        except Equi360Error as err:
            raise Equi360Error(f"{JOB_FILE}: delivery_size: {err}") from None
        for name in ("spherical_metadata", "suffix_360", "audio"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        _check(_whole(self.window_frames) and _whole(self.window_overlap), "window_frames and window_overlap must "
                                                                           "be whole numbers")
        _check(self.delivery_crf is None or _whole(self.delivery_crf), "delivery_crf must be a whole number from 0 "
                                                                       "to 51 (or null)")
        try:
            check_window_settings(self.window_frames, self.window_overlap)
            self.delivery
        except Equi360Error as err:
            raise Equi360Error(f"{JOB_FILE}: {err}") from None

    @property
    def delivery_canvas(self) -> CanvasSize:
        return CanvasSize.parse(self.delivery_size)

    @property
    def delivery(self) -> DeliverySettings:
        return DeliverySettings(self.delivery_codec, self.delivery_crf, self.delivery_pixel_format,
                                self.spherical_metadata, self.suffix_360, self.audio, self.passes, self.pass_alpha)

    @property
    def full_prompt(self) -> str:
        return f"{TRIGGER_WORD}, {self.prompt}" if self.prompt.strip() else TRIGGER_WORD

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        _check(isinstance(data, dict), "the top level must be a JSON object")
        _check_version(data.get("version", VERSION))  # first: another version may have other fields
        known = {f.name for f in fields(cls)}
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
        return cls(**{**data, "models": ModelFiles(**models)})

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(value) -> bool:
    """An integer, and not true/false (JSON's booleans are Python ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same_name(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))


def check_delivery_canvas(size: CanvasSize) -> None:
    """The delivery's size is one the encoders take (HEVC level 6.2 ends at 8192×4320) and that fits in
    this machine's memory."""
    if size.width > MAX_DELIVERY.width:
        raise Equi360Error(f"{size} is larger than the largest delivery, {MAX_DELIVERY} (8K): choose 7680x3840 "
                           "or less")
    need = delivery_memory_gb(size)
    have = memory_gb()
    if have is not None and need > 0.8 * have:
        raise Equi360Error(f"{size} needs about {need:.0f} GB of memory to finish and this machine has "
                           f"{have:.0f} GB: choose a smaller delivery")


def delivery_memory_gb(size: CanvasSize) -> float:
    """What the finish holds at a delivery size. Measured (peak resident memory of the draft engine, a
    1920×804 source, 2026-12-05): 0.55 GB at 3840×1920, 1.85 GB at 7680×3840, 63 bytes a delivered pixel
    more; with room to spare, 0.5 GB and 80 bytes a pixel."""
    return 0.5 + 80 * size.width * size.height / 2**30


def memory_gb() -> float | None:
    """This machine's physical memory, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _check_version(version) -> None:
    _check(_whole(version), f"version must be a whole number (this Equi360 writes {VERSION})")
    if version != VERSION:
        raise IncompatibleJob(f"{JOB_FILE}: made by another version of Equi360 (job version {version!r}; this "
                              f"one reads {VERSION}): run it with that version, or make the job again")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise Equi360Error(f"{JOB_FILE}: {message}")


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
    tmp = path.with_name(f".{JOB_FILE}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(job.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
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
