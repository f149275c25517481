# SPDX-License-Identifier: GPL-3.0-or-later
"""Panels: the Sequencer sidebar (convert a strip) and World properties (preview the result)."""

import bpy

from .compat import sequencer_scene


def _progress(layout, state):
    if state.running:
        layout.progress(factor=state.progress, type="BAR", text=state.status or "working")
    elif state.status:
        layout.label(text=state.status)


class EQUI360_PT_sequencer(bpy.types.Panel):
    bl_label = "Equi360"
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Equi360"

    def draw(self, context):
        layout, state = self.layout, sequencer_scene(context).equi360
        layout.operator("equi360.convert", icon="WORLD")
        layout.operator("equi360.build_reference", icon="IMAGE_REFERENCE")
        layout.operator("equi360.submit_to_flamenco", icon="NETWORK_DRIVE")
        _progress(layout, state)
        col = layout.column(align=True)
        col.enabled = bool(state.job_dir) and not state.running
        col.operator("equi360.load_world", icon="WORLD_DATA")
        col.operator("equi360.add_strip", icon="SEQUENCE")
        col.operator("equi360.add_preview_camera", icon="CAMERA_DATA")
        col.operator("equi360.show_preview", icon="IMAGE_DATA")


class EQUI360_PT_world(bpy.types.Panel):
    bl_label = "Equi360"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "world"

    def draw(self, context):
        layout, state = self.layout, sequencer_scene(context).equi360
        layout.prop(state, "job_dir")
        layout.prop(state, "heading_deg")
        _progress(layout, state)
        layout.operator("equi360.load_world", icon="WORLD_DATA")
        layout.operator("equi360.add_preview_camera", icon="CAMERA_DATA")
        layout.operator("equi360.show_preview", icon="IMAGE_DATA")
