# SPDX-License-Identifier: GPL-3.0-or-later
"""The small operators: the result as world, preview camera and strip, the preview sheet, the engine's check
(``equi360.convert`` and ``equi360.build_reference`` are in convert.py)."""

from pathlib import Path

import bpy

from ..blender_equi360 import Equi360Error
from ..blender_equi360.jobs.engine_process import EngineQuery
from ..blender_equi360.jobs.job import delivered_path, load_job
from . import world
from .compat import sequencer_scene
from .preferences import ADDON_ROOT, check_engine, preferences, summarize_check
from .reports import REPORTED, report_error, reports_errors
from .waiting import WaitsForQuery, engine_env, engine_python


class EQUI360_OT_load_world(bpy.types.Operator):
    """Show a 360° video as the world, turned to the plate's heading"""
    bl_idname = "equi360.load_world"
    bl_label = "Load 360° World"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH", description="Equirect video (default: the job's result)")

    @reports_errors
    def execute(self, context):
        state = sequencer_scene(context).equi360
        world.load_world(sequencer_scene(context), _chosen_video(self.filepath, state.job_dir), state.heading_deg,
                         state.source_start)
        return {"FINISHED"}


class EQUI360_OT_add_preview_camera(bpy.types.Operator):
    """Add a panoramic (equirectangular) camera at the scene camera's position"""
    bl_idname = "equi360.add_preview_camera"
    bl_label = "Add 360° Preview Camera"
    bl_options = {"REGISTER", "UNDO"}

    @reports_errors
    def execute(self, context):
        world.add_preview_camera(sequencer_scene(context))
        return {"FINISHED"}


class EQUI360_OT_add_strip(bpy.types.Operator):
    """Add the job's 360° result as a movie strip above its source"""
    bl_idname = "equi360.add_strip"
    bl_label = "Add 360° Strip"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")

    @reports_errors
    def execute(self, context):
        state = sequencer_scene(context).equi360
        world.add_strip(sequencer_scene(context), _chosen_video(self.filepath, state.job_dir), state.source_channel,
                        state.source_start)
        return {"FINISHED"}


class EQUI360_OT_show_preview(WaitsForQuery, bpy.types.Operator):
    """Make the preview sheet of the 360° result (the equirect frame and six views around, the plate
    outlined) at the current frame, in the engine's Python (Blender does not wait), and show it in an
    Image Editor"""
    bl_idname = "equi360.show_preview"
    bl_label = "Show 360° Preview Sheet"
    bl_options = {"REGISTER"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH", description="Equirect video (default: the job's result)")

    waiting = "Equi360: making the preview sheet (Esc cancels)"

    def _start(self, context) -> bool:
        scene = sequencer_scene(context)
        state = scene.equi360
        try:
            video = Path(_chosen_video(self.filepath, state.job_dir))
            sheet = video.with_name(f"{video.stem}_preview.png")
            frame = max(0, scene.frame_current - state.source_start)
            self._query = EngineQuery(engine_python(preferences(context)),
                                      ["preview", str(video), "-o", str(sheet), "--frame", str(frame)],
                                      cwd=ADDON_ROOT, env=engine_env())
        except REPORTED as err:
            report_error(self, err)
            return False
        return True

    def _finish(self, context, read_result) -> set:
        try:
            sheet = read_result()["sheet"]
            image = world.show_image(context, sheet)
        except REPORTED as err:
            report_error(self, err)
            return {"CANCELLED"}
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
        except REPORTED as err:
            prefs.check_report = f"Engine check failed: {err}"
            return report_error(self, prefs.check_report)
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
