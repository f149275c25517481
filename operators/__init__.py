# SPDX-License-Identifier: GPL-3.0-or-later
"""Everything that imports ``bpy``: operators, panels, preferences. Registered by the extension root."""

import bpy

from ..blender_equi360.jobs.engine_process import kill_all
from . import install, models
from .convert import EQUI360_OT_build_reference, EQUI360_OT_convert
from .farm import EQUI360_OT_submit_to_flamenco
from .install import EQUI360_OT_install_engine
from .models import EQUI360_MT_model_sets, EQUI360_OT_download_models, EQUI360_OT_find_models
from .ops import (
    EQUI360_OT_add_preview_camera,
    EQUI360_OT_add_strip,
    EQUI360_OT_check_engine,
    EQUI360_OT_load_world,
    EQUI360_OT_show_preview,
)
from .preferences import EQUI360_AP_preferences, EQUI360_PG_found_set, EQUI360_PG_scene
from .ui import EQUI360_PT_sequencer, EQUI360_PT_world

CLASSES = (EQUI360_PG_found_set, EQUI360_AP_preferences, EQUI360_PG_scene, EQUI360_OT_build_reference,
           EQUI360_OT_convert, EQUI360_OT_load_world, EQUI360_OT_add_preview_camera, EQUI360_OT_add_strip,
           EQUI360_OT_show_preview, EQUI360_OT_check_engine, EQUI360_OT_install_engine, EQUI360_OT_find_models,
           EQUI360_OT_download_models, EQUI360_MT_model_sets, EQUI360_OT_submit_to_flamenco, EQUI360_PT_sequencer,
           EQUI360_PT_world)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.equi360 = bpy.props.PointerProperty(type=EQUI360_PG_scene)


def unregister():
    kill_all()  # an engine still running would outlive the add-on
    models.stop()
    install.stop()
    del bpy.types.Scene.equi360
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
