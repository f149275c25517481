# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place for bpy API differences between Blender 4.2 LTS, 4.5 LTS and 5.0."""

from __future__ import annotations


def sequencer_scene(context):
    """5.0 edits the sequencer of the workspace's ``sequencer_scene``, which may differ from the scene."""
    return getattr(context, "sequencer_scene", None) or context.scene


def strips(sequence_editor, everything: bool = False):
    """``strips``/``strips_all`` (4.4+), ``sequences``/``sequences_all`` before."""
    if hasattr(sequence_editor, "strips"):
        return sequence_editor.strips_all if everything else sequence_editor.strips
    return sequence_editor.sequences_all if everything else sequence_editor.sequences


def strip_start(strip) -> int:
    """The first frame the strip shows on the timeline (its left handle)."""
    handle = getattr(strip, "left_handle", None)  # 5.1 naming
    return int(handle if handle is not None else strip.frame_final_start)


def world_node_tree(world):
    """4.x worlds have no node tree until ``use_nodes``; 5.0 has one from creation and deprecates the flag."""
    if world.node_tree is None:
        world.use_nodes = True
    return world.node_tree

