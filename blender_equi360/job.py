"""``job.json``: what the add-on asks of the engine. Defined once here; both sides use it.

A job folder holds ``job.json``, the inputs it names (usually the reference and its mask), and
everything the engine writes (the result, ``engine.log``). Relative paths are relative to the job
folder; the output must be inside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .delivery import DeliverySettings
from .errors import Equi360Error, IncompatibleJob
from .projection import CanvasSize
from .windows import OVERLAP_FRAMES, WINDOW_FRAMES, check_window_settings

JOB_FILE = "job.json"
LOG_FILE = "engine.log"
VERSION = 1
BACKENDS = ("auto", "ltx", "draft")
PRESETS = ("quality", "fast")
TRIGGER_WORD = "equirectangular"


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
            _check(isinstance(getattr(self, name), str) and getattr(self, name), f"{name!r} must be a file path")
        _check(self.backend in BACKENDS, f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        _check(self.preset in PRESETS, f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        _check(isinstance(self.low_vram, bool), "low_vram must be true or false")
        _check(isinstance(self.prompt, str), "prompt must be text")
        _check(self.negative_prompt is None or isinstance(self.negative_prompt, str), "negative_prompt must be text")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed must be an integer")
        _check(self.steps is None or (isinstance(self.steps, int) and 1 <= self.steps <= 200),
               "steps must be an integer from 1 to 200")
        _check(isinstance(self.lora_strength, (int, float)) and 0.0 <= self.lora_strength <= 2.0,
               "lora_strength must be a number from 0 to 2")
        _check(isinstance(self.delivery_size, str), "delivery_size must be text like 3840x1920")
        _check(self.output_frames is None or (isinstance(self.output_frames, int) and self.output_frames >= 1),
               "output_frames must be a positive whole number (or null for all)")
        try:
            self.delivery_canvas
        except Equi360Error as err:
            raise Equi360Error(f"{JOB_FILE}: delivery_size: {err}") from None
        for name in ("spherical_metadata", "suffix_360", "audio"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false")
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
        models = data.get("models") or {}
        _check(isinstance(models, dict), "models must be an object")
        model_names = {f.name for f in fields(ModelFiles)}
        _check(set(models) <= model_names, f"unknown model file(s) {', '.join(sorted(set(models) - model_names))}")
        return cls(**{**data, "models": ModelFiles(**models)})

    def to_dict(self) -> dict:
        return asdict(self)


def _check_version(version) -> None:
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


def output_path(job_dir, job: Job) -> Path:
    """Where the engine writes the result, as ``output`` names it; refuses anything outside the job folder."""
    out = job_path(job_dir, job.output)
    _check(Path(job_dir).resolve() in out.parents, f"output {job.output!r} must be inside the job folder")
    return out


def delivered_path(job_dir, job: Job) -> Path:
    """The delivered video's path: ``output``, with ``_360`` added when the job asks for it."""
    return job.delivery.video_path(output_path(job_dir, job))
