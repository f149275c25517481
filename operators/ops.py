# SPDX-License-Identifier: GPL-3.0-or-later
"""The operators. ``equi360.convert`` runs the engine as a subprocess: modal with a timer when Blender
has a UI (Esc cancels), blocking in background mode, where timers and modal handlers never run."""

import os
import re
import shutil
import time
from pathlib import Path

import bpy

from ..blender_equi360 import Equi360Error, ReferenceSettings, build_reference
from ..blender_equi360.jobs.engine_process import EngineProcess
from ..blender_equi360.jobs.job import PREFERENCE_FIELDS, Job, delivered_path, job_from_preferences, load_job, save_job
from ..blender_equi360.jobs.timing import round_up_frame_count
from ..blender_equi360.jobs.windows import MANIFEST_FILE
from ..blender_equi360.media.video import probe
from ..blender_equi360.quality.preview import preview_sheet
from ..blender_equi360.stages.reference import load_placement
from . import compat, scene_read, world
from .compat import sequencer_scene as scene_of  # 5.0: the Sequencer may edit another scene
from .preferences import ADDON_ROOT, PACKAGE, check_engine, preferences, summarize_check

TIMER_S = 0.1


def _job_root(prefs) -> Path:
    if prefs.output_dir:
        return Path(bpy.path.abspath(prefs.output_dir))
    return Path(bpy.utils.extension_path_user(PACKAGE, path="jobs", create=True))


def _new_job_dir(root: Path, name: str) -> Path:
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}_{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        job_dir = root / (stem if n == 1 else f"{stem}_{n}")
        try:
            job_dir.mkdir()
            return job_dir
        except FileExistsError:
            continue
    raise OSError(f"{root}: could not make a new job folder")


def strips_to_convert(scene) -> list:
    """The selected movie strips, in timeline order; without a selection, the active strip."""
    editor = scene.sequence_editor
    selected = [s for s in compat.strips(editor, everything=True) if s.select and s.type == "MOVIE"] if editor else []
    if selected:
        return sorted(selected, key=lambda s: (compat.strip_start(s), s.channel))
    return [scene_read.active_movie_strip(scene)]


def prepare_job(context, operator, strip, root: Path | None = None) -> Path:
    """Read the strip and camera, build the masked reference into a new job folder (under ``root``, by
    default the preferences' output folder), write job.json. Records the job in ``scene.equi360``.
    Raises Equi360Error with a message for the user."""
    scene, prefs = scene_of(context), preferences(context)
    source = scene_read.read_strip(scene, strip)
    pose, warnings = scene_read.read_camera(scene, source)
    for warning in warnings:
        operator.report({"WARNING"}, warning)
    # The whole shown span at the file's own rate: the 360° video gets the strip's frames and timing
    # (the engine makes a longer span in windows).
    shown = max(source.timeline_frames, 1)
    models = {name: bpy.path.abspath(getattr(prefs, name)) or None
              for name in ("checkpoint", "text_encoder", "ic_lora", "distilled_lora")}
    job = job_from_preferences({name: getattr(prefs, name) for name in PREFERENCE_FIELDS}, models, shown)
    settings = ReferenceSettings(camera=pose.camera, frames=round_up_frame_count(shown),
                                 fps=source.fps, start_s=source.start_s)
    root = root or _job_root(prefs)
    job_dir = _unfinished_job(root, job, Path(source.filepath), settings)
    if job_dir:
        operator.report({"INFO"}, f"{strip.name}: continuing the unfinished job in {job_dir}")
    else:
        job_dir = _new_job_dir(root, strip.name)
        try:
            build_reference(source.filepath, job_dir / "reference.mkv", job_dir / "mask.mkv", settings)
            save_job(job_dir, job)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
    state = scene.equi360
    state.job_dir, state.heading_deg = str(job_dir), pose.heading_deg
    state.source_channel, state.source_start = source.channel, source.timeline_start
    return job_dir


def _unfinished_job(root: Path, job: Job, source: Path, settings: ReferenceSettings) -> Path | None:
    """A job folder under ``root`` that the same conversion left half-made (Blender or the engine was
    killed): converting again continues it from its last finished window instead of starting over."""
    for folder in sorted((p.parent for p in root.glob(f"*/{MANIFEST_FILE}")), reverse=True):  # names end in a time
        try:
            if load_job(folder) != job or delivered_path(folder, job).exists():
                continue
            placement = load_placement(folder / job.reference)
        except Equi360Error:
            continue
        if (placement.source.resolve() == source.resolve() and placement.camera == settings.camera
                and placement.frames == settings.frames and abs(placement.fps - settings.fps) < 1e-6
                and abs(placement.start_s - settings.start_s) < 1e-6 and (folder / job.mask).is_file()):
            return folder
    return None


def show_result(context, video: str) -> None:
    """The engine's result as the world, a preview camera, and a strip above the source."""
    scene, state = scene_of(context), scene_of(context).equi360
    world.load_world(scene, video, state.heading_deg, state.source_start)
    world.add_preview_camera(scene)
    world.add_strip(scene, video, state.source_channel, state.source_start)


class EQUI360_OT_build_reference(bpy.types.Operator):
    """Build the masked 360° reference of the active movie strip and show it as the world"""
    bl_idname = "equi360.build_reference"
    bl_label = "Build 360° Reference"
    bl_options = {"REGISTER"}

    def execute(self, context):
        try:
            job_dir = prepare_job(context, self, scene_read.active_movie_strip(scene_of(context)))
            state = scene_of(context).equi360
            world.load_world(scene_of(context), str(job_dir / "reference.mkv"), state.heading_deg, state.source_start)
        except (Equi360Error, OSError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"reference in {job_dir}")
        return {"FINISHED"}


class EQUI360_OT_convert(bpy.types.Operator):
    """Convert the selected movie strips (or the active one) to 360° videos with the engine, one after
    the other"""
    bl_idname = "equi360.convert"
    bl_label = "Convert to 360°"
    bl_options = {"REGISTER"}

    _process = None  # the EngineProcess while running
    _timer = None
    _queue = ()      # names of the strips still to convert
    _failed = False

    @classmethod
    def poll(cls, context):
        return not scene_of(context).equi360.running

    def _queue_strips(self, context) -> bool:
        if not preferences(context).engine_python:
            self.report({"ERROR"}, "the engine is not configured: set the engine's Python in the add-on preferences")
            return False
        try:
            self._queue = [s.name for s in strips_to_convert(scene_of(context))]
        except Equi360Error as err:
            self.report({"ERROR"}, str(err))
            return False
        return True

    def _start_next(self, context) -> bool:
        """Prepare and start the next strip's job; False when the queue is empty or the strip failed."""
        scene, prefs = scene_of(context), preferences(context)
        while self._queue:
            name, self._queue = self._queue[0], self._queue[1:]
            try:
                job_dir = prepare_job(context, self, compat.strips(scene.sequence_editor, everything=True)[name])
                self._process = EngineProcess(bpy.path.abspath(prefs.engine_python), job_dir, cwd=ADDON_ROOT,
                                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
            except (Equi360Error, OSError) as err:
                self.report({"ERROR"}, f"{name}: {err}")
                self._failed = True
                continue
            state = scene.equi360
            state.running, state.progress, state.status = True, 0.0, f"{name}: starting the engine"
            return True
        return False

    def execute(self, context):  # background mode and scripts: block until the engines end
        if not self._queue_strips(context):
            return {"CANCELLED"}
        while self._start_next(context):
            final = self._process.wait(lambda event: self._on_event(context, event))
            self._finish(context, final)
            if final and final.get("code") == "cancelled":
                break
        return {"CANCELLED"} if self._failed else {"FINISHED"}

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if not (self._queue_strips(context) and self._start_next(context)):
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 1000)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            scene_of(context).equi360.status = "cancelling…"
            self._process.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        for item in self._process.poll():
            self._on_event(context, item)
        if not self._process.finished:
            return {"PASS_THROUGH"}
        final = self._process.final_event
        self._finish(context, final)
        if not (final and final.get("code") == "cancelled") and self._start_next(context):
            return {"PASS_THROUGH"}
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        context.workspace.status_text_set(None)
        return {"CANCELLED"} if self._failed else {"FINISHED"}

    def cancel(self, context):  # Blender closing the operator (file load, quit): never leave the engine
        if self._process and not self._process.finished:
            self._process.kill()
        scene_of(context).equi360.running = False

    def _on_event(self, context, event: dict) -> None:
        state = scene_of(context).equi360
        kind = event["event"]
        if kind == "progress" and event.get("total"):
            state.progress = event["step"] / event["total"]
            if event.get("windows", 1) > 1:  # the bar covers the whole clip, window after window
                state.progress = (event["window"] - 1 + state.progress) / event["windows"]
            eta = f", {event['eta_s']:.0f} s left" if event.get("eta_s") is not None else ""
            window = f"window {event['window']}/{event['windows']}: " if event.get("windows", 1) > 1 else ""
            state.status = f"{window}{event['stage']} {event['step']}/{event['total']}{eta}"
            if not bpy.app.background:
                context.window_manager.progress_update(int(state.progress * 1000))
                context.workspace.status_text_set(f"Equi360: {state.status} (Esc cancels)")
                for area in context.screen.areas:
                    area.tag_redraw()
        elif kind == "warning":
            self.report({"WARNING"}, event["message"])
        elif kind == "log" and bpy.app.background:
            print(f"equi360: {event['message']}")

    def _finish(self, context, final: dict | None) -> None:
        """One job ended: show its result, or report why not."""
        state = scene_of(context).equi360
        state.running = False
        if final is None or final["event"] == "error":
            code = final["code"] if final else "crashed"
            message = final["message"] if final else "the engine ended without a result"
            state.status = f"[{code}] {message}"
            self.report({"WARNING"} if code == "cancelled" else {"ERROR"}, f"Equi360 [{code}]: {message}")
            self._failed = True
            return
        video = final["outputs"]["video"]
        try:
            show_result(context, video)
        except (Equi360Error, OSError) as err:
            self.report({"ERROR"}, str(err))
            self._failed = True
            return
        state.progress, state.status = 1.0, ("DRAFT " if final.get("draft") else "") + f"done: {video}"
        self.report({"INFO"}, f"360° video: {video}" + (" (a draft: no model was run)" if final.get("draft") else ""))


class EQUI360_OT_load_world(bpy.types.Operator):
    """Show a 360° video as the world, turned to the plate's heading"""
    bl_idname = "equi360.load_world"
    bl_label = "Load 360° World"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH", description="Equirect video (default: the job's result)")

    def execute(self, context):
        state = scene_of(context).equi360
        try:
            path = _chosen_video(self.filepath, state.job_dir)
            world.load_world(scene_of(context), path, state.heading_deg, state.source_start)
        except (Equi360Error, OSError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return {"FINISHED"}


class EQUI360_OT_add_preview_camera(bpy.types.Operator):
    """Add a panoramic (equirectangular) camera at the scene camera's position"""
    bl_idname = "equi360.add_preview_camera"
    bl_label = "Add 360° Preview Camera"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            world.add_preview_camera(scene_of(context))
        except Equi360Error as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return {"FINISHED"}


class EQUI360_OT_add_strip(bpy.types.Operator):
    """Add the job's 360° result as a movie strip above its source"""
    bl_idname = "equi360.add_strip"
    bl_label = "Add 360° Strip"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")

    def execute(self, context):
        state = scene_of(context).equi360
        try:
            path = _chosen_video(self.filepath, state.job_dir)
            world.add_strip(scene_of(context), path, state.source_channel, state.source_start)
        except (Equi360Error, OSError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return {"FINISHED"}


class EQUI360_OT_show_preview(bpy.types.Operator):
    """Make the preview sheet of the 360° result (the equirect frame and six views around, the plate
    outlined) at the current frame, and show it in an Image Editor"""
    bl_idname = "equi360.show_preview"
    bl_label = "Show 360° Preview Sheet"
    bl_options = {"REGISTER"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH", description="Equirect video (default: the job's result)")

    def execute(self, context):
        scene = scene_of(context)
        state = scene.equi360
        try:
            video = Path(_chosen_video(self.filepath, state.job_dir))
            frame = max(0, scene.frame_current - state.source_start)
            count = probe(video).frame_count
            sheet = preview_sheet(video, video.with_name(f"{video.stem}_preview.png"), min(frame, count - 1))
        except (Equi360Error, OSError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        image = world.show_image(context, str(sheet))
        self.report({"INFO"}, f"preview sheet: {sheet} ({image.size[0]}×{image.size[1]})")
        return {"FINISHED"}


class EQUI360_OT_check_engine(bpy.types.Operator):
    """Run the engine's self-check and show what is present and missing"""
    bl_idname = "equi360.check_engine"
    bl_label = "Check Engine"

    def execute(self, context):
        prefs = preferences(context)
        try:
            report = check_engine(prefs)
        except (OSError, ValueError) as err:
            prefs.check_report = f"Engine check failed: {err}"
            self.report({"ERROR"}, prefs.check_report)
            return {"CANCELLED"}
        prefs.check_report = summarize_check(report)
        self.report({"INFO"}, prefs.check_report.replace("\n", "; "))
        return {"FINISHED"}


def _chosen_video(filepath: str, job_dir: str) -> str:
    """The video an operator was given, or else the last job's result."""
    if filepath:
        return bpy.path.abspath(filepath)
    if not job_dir:
        raise Equi360Error("no job yet: build a reference or convert a strip first")
    return str(delivered_path(job_dir, load_job(job_dir)))
