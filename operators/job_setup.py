# SPDX-License-Identifier: GPL-3.0-or-later
"""From what the user set up in Blender to a job folder: the strips to convert, the job the preferences ask
for, its reference, and the result brought back into the scene."""

import shutil
from pathlib import Path

import bpy

from ..blender_equi360 import CanvasSize, ReferenceSettings
from ..blender_equi360.jobs.job import PREFERENCE_FIELDS, SourceSpec, job_from_preferences, new_job_folder, save_job
from ..blender_equi360.jobs.timing import round_up_frame_count
from ..blender_equi360.stages.reference import unfinished_job
from . import compat, scene_read, world
from .compat import sequencer_scene
from .preferences import PACKAGE, preferences


def reference_settings(prefs) -> ReferenceSettings:
    """The reference the preferences ask for: the LoRA version's canvas and crop unless set otherwise."""
    return ReferenceSettings(lora_version=prefs.lora_version,
                             size=None if prefs.canvas == "auto" else CanvasSize.parse(prefs.canvas),
                             crop=None if prefs.crop == "auto" else prefs.crop)


def job_root(prefs) -> Path:
    """Where the job folders go: the preferences' output folder, or the extension's own."""
    if prefs.output_dir:
        return Path(bpy.path.abspath(prefs.output_dir))
    return Path(bpy.utils.extension_path_user(PACKAGE, path="jobs", create=True))


def strips_to_convert(scene) -> list:
    """The selected movie strips, in timeline order; without a selection, the active strip."""
    editor = scene.sequence_editor
    selected = [s for s in compat.strips(editor, everything=True) if s.select and s.type == "MOVIE"] if editor else []
    if selected:
        return sorted(selected, key=lambda s: (compat.strip_start(s), s.channel))
    return [scene_read.active_movie_strip(scene)]


def prepare_job(context, operator, strip, root: Path | None = None, stop_after: str = "delivery",
                copy_source: bool = False) -> Path:
    """Read the strip and camera and write ``job.json`` into a new job folder (under ``root``, by default the
    preferences' output folder), or find the unfinished folder of the same job: the engine builds the
    reference from the job's source, so nothing slow runs here. ``copy_source``: the clip is copied into
    the job folder (a farm's shared storage), for engines that cannot see this machine's files. Records
    the job in ``scene.equi360``. Raises Equi360Error with a message for the user."""
    scene, prefs = sequencer_scene(context), preferences(context)
    source = scene_read.read_strip(scene, strip)
    settings = reference_settings(prefs)
    pose, warnings = scene_read.read_camera(scene, source, settings)
    for warning in warnings:
        operator.report({"WARNING"}, warning)
    # The whole shown span at the file's own rate: the 360° video gets the strip's frames and timing
    # (the engine makes a longer span in windows).
    shown = max(source.timeline_frames, 1)
    camera = pose.camera
    clip = Path(source.filepath).resolve()
    spec = SourceSpec(path=f"source{clip.suffix}" if copy_source else str(clip), start_s=source.start_s,
                      frames=round_up_frame_count(shown), fps=source.fps, hfov_deg=camera.hfov_deg,
                      yaw_deg=camera.yaw_deg, pitch_deg=camera.pitch_deg, roll_deg=camera.roll_deg,
                      shift_x=camera.shift_x, shift_y=camera.shift_y, lora_version=settings.lora_version,
                      crop=None if prefs.crop == "auto" else prefs.crop,
                      size=None if prefs.canvas == "auto" else prefs.canvas)
    models = {name: bpy.path.abspath(getattr(prefs, name)) or None
              for name in ("checkpoint", "text_encoder", "ic_lora", "distilled_lora")}
    job = job_from_preferences({name: getattr(prefs, name) for name in PREFERENCE_FIELDS}, models, shown,
                               str(settings.size), spec, stop_after)
    root = root or job_root(prefs)
    job_dir = unfinished_job(root, job)
    if job_dir:
        operator.report({"INFO"}, f"{strip.name}: continuing the unfinished job in {job_dir}")
    else:
        job_dir = new_job_folder(root, strip.name)
        try:
            if copy_source:
                shutil.copyfile(clip, job_dir / spec.path)
            save_job(job_dir, job)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
    state = scene.equi360
    state.job_dir, state.heading_deg = str(job_dir), pose.heading_deg
    state.source_channel, state.source_start = source.channel, source.timeline_start
    return job_dir


def show_result(context, video: str) -> None:
    """The engine's result as the world, a preview camera, and a strip above the source."""
    scene, state = sequencer_scene(context), sequencer_scene(context).equi360
    world.load_world(scene, video, state.heading_deg, state.source_start)
    world.add_preview_camera(scene)
    world.add_strip(scene, video, state.source_channel, state.source_start)
