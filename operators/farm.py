# SPDX-License-Identifier: GPL-3.0-or-later
"""``equi360.submit_to_flamenco``: the selected movie strips' jobs prepared on the farm's shared storage and
submitted to a Flamenco manager as one job, one task per strip (``blender_equi360/flamenco.py``)."""

import shutil
from pathlib import Path

import bpy

from ..blender_equi360 import Equi360Error
from ..blender_equi360.farm import flamenco
from .compat import sequencer_scene
from .job_setup import prepare_job, strips_to_convert
from .preferences import preferences
from .reports import REPORTED, report_error


class EQUI360_OT_submit_to_flamenco(bpy.types.Operator):
    """Put the selected movie strips' jobs (their clips copied along) on the farm's shared storage and submit
    them to the Flamenco manager as one job, one GPU task per strip: each worker builds its shot's reference"""
    bl_idname = "equi360.submit_to_flamenco"
    bl_label = "Submit to Flamenco"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):  # a local conversion reads the scene's job state when it ends
        return not sequencer_scene(context).equi360.running

    def execute(self, context):
        prefs, scene = preferences(context), sequencer_scene(context)
        state = scene.equi360
        last_job = {key: getattr(state, key) for key in ("job_dir", "heading_deg", "source_channel", "source_start")}
        job_dirs = []
        try:
            url, root = self._settings(prefs)
            strips = strips_to_convert(scene)
            info = flamenco.job_type(url)  # before any reference is built: a wrong URL fails in seconds
            for strip in strips:
                job_dirs.append(prepare_job(context, self, strip, root, copy_source=True))
            name = f"{Path(bpy.data.filepath).stem or 'untitled'}: {', '.join(s.name for s in strips)}"[:100]
            job_id = flamenco.submit(url, job_dirs, name, info=info, worker_tag=prefs.flamenco_worker_tag,
                                     metadata={"blendfile": bpy.data.filepath, "shots": len(job_dirs)})
        except REPORTED as err:
            for job_dir in job_dirs:  # nothing half-submitted is left on the farm's storage
                shutil.rmtree(job_dir, ignore_errors=True)
            for key, value in last_job.items():
                setattr(state, key, value)
            return report_error(self, err)
        state.status = f"Flamenco job {job_id}: {len(job_dirs)} shot(s) queued"
        self.report({"INFO"}, f"{state.status}; {flamenco.job_page(url, job_id)}")
        return {"FINISHED"}

    @staticmethod
    def _settings(prefs) -> tuple[str, Path]:
        if not bpy.app.online_access:  # a LAN manager is still the network, which the user controls
            raise Equi360Error("Blender's online access is off: allow it in Preferences > System > Network to "
                               "submit to the Flamenco manager")
        if not prefs.flamenco_manager_url.strip():
            raise Equi360Error("set the Flamenco manager's URL in the add-on preferences")
        root = Path(bpy.path.abspath(prefs.farm_job_root)) if prefs.farm_job_root.strip() else None
        if root is None or not root.is_absolute():
            raise Equi360Error("set the farm job folder in the add-on preferences: an absolute path on the shared "
                               "storage every worker sees")
        if not root.is_dir():  # an unmounted share would otherwise get a local folder the workers never see
            raise Equi360Error(f"the farm job folder {root} does not exist: is the shared storage mounted?")
        return prefs.flamenco_manager_url, root
