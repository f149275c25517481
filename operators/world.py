# SPDX-License-Identifier: GPL-3.0-or-later
"""Putting a 360° video into the scene: as the world (frame-synced, turned to the camera's heading), as a
panoramic preview camera, and as a movie strip above the source."""

from __future__ import annotations

import math
import os

import bpy

from ..blender_equi360 import Equi360Error
from ..blender_equi360.media.images import image_sequence
from ..blender_equi360.media.video import probe
from . import compat

NODE_PREFIX = "Equi360 "  # our world nodes, so that loading again replaces them instead of piling up
PREVIEW_CAMERA = "Equi360 Preview"


def _media(path: str) -> tuple[str, int | None]:
    """A video file, or an image sequence (one of its frames, or the passes folder): the file Blender
    opens and, for a sequence, its length."""
    frames = image_sequence(path)
    if frames:
        return str(frames[0]), len(frames)
    if not os.path.isfile(path):
        raise Equi360Error(f"{path}: no such video or image sequence")
    return path, None


def load_world(scene, video_path: str, heading_deg: float = 0.0, frame_start: int | None = None):
    """The equirect video (or image sequence) as the scene world's background: Environment Texture (its
    first frame at ``frame_start``, default the scene's; auto-refresh) behind a Mapping that turns the
    canvas centre to ``heading_deg`` (from +X towards +Y)."""
    path, sequence_length = _media(video_path)
    image = _loaded_image(path)
    if image is None:
        image = bpy.data.images.load(path)
        # A sequence's first frame opens as a still image (FILE), read and checked before it becomes one.
        readable = image.source in (("FILE", "SEQUENCE") if sequence_length else ("MOVIE",))
        if not readable or image.frame_duration < 1 or image.size[0] == 0:
            bpy.data.images.remove(image)
            raise Equi360Error(f"{video_path}: Blender cannot read it as a movie or an image sequence")
        if sequence_length:
            image.source = "SEQUENCE"
    world = scene.world or bpy.data.worlds.new("Equi360 World")
    scene.world = world
    tree = compat.world_node_tree(world)
    ours = [n for n in tree.nodes if n.name.startswith(NODE_PREFIX)]
    replaced = {n.image for n in ours if n.type == "TEX_ENVIRONMENT" and n.image and n.image != image}
    for node in ours:
        tree.nodes.remove(node)
    for old in replaced:  # the previous video, unless something else still shows it
        if old.users == 0:
            bpy.data.images.remove(old)
    background = next((n for n in tree.nodes if n.type == "BACKGROUND"), None) or tree.nodes.new("ShaderNodeBackground")
    output = next((n for n in tree.nodes if n.type == "OUTPUT_WORLD"), None) or tree.nodes.new("ShaderNodeOutputWorld")
    if not background.outputs["Background"].links:
        tree.links.new(background.outputs["Background"], output.inputs["Surface"])
    coords = _node(tree, "ShaderNodeTexCoord", "Coordinates", (-900, 300))
    mapping = _node(tree, "ShaderNodeMapping", "Heading", (-700, 300))
    env = _node(tree, "ShaderNodeTexEnvironment", "360 Video", (-450, 300))
    # Texture lookups turn the other way from the world: the canvas centre (+X) goes to the heading.
    mapping.inputs["Rotation"].default_value = (0.0, 0.0, -math.radians(heading_deg))
    env.image = image
    env.projection = "EQUIRECTANGULAR"
    user = env.image_user
    user.frame_duration = sequence_length or image.frame_duration
    user.frame_start = scene.frame_start if frame_start is None else frame_start
    user.frame_offset = 0
    user.use_auto_refresh = True
    tree.links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
    tree.links.new(mapping.outputs["Vector"], env.inputs["Vector"])
    tree.links.new(env.outputs["Color"], background.inputs["Color"])
    return env


def _loaded_image(path: str):
    """The image datablock Blender already has for the file ``path``, or None."""
    wanted = os.path.realpath(path)
    return next((i for i in bpy.data.images if os.path.realpath(bpy.path.abspath(i.filepath)) == wanted), None)


def _node(tree, kind: str, label: str, location):
    node = tree.nodes.new(kind)
    node.name = node.label = NODE_PREFIX + label
    node.location = location
    return node


def add_preview_camera(scene, location=None):
    """A panoramic equirectangular camera at the scene camera's position (or ``location``), level and
    looking along +X, so that it renders the world's canvas 1:1."""
    if location is None:
        if scene.camera is None:
            raise Equi360Error("the scene has no camera to place the preview camera at")
        location = scene.camera.matrix_world.translation.copy()
    obj = bpy.data.objects.get(PREVIEW_CAMERA)
    if obj is None or obj.type != "CAMERA":
        data = bpy.data.cameras.new(PREVIEW_CAMERA)
        obj = bpy.data.objects.new(PREVIEW_CAMERA, data)
    if obj.name not in scene.collection.objects:
        scene.collection.objects.link(obj)
    obj.data.type = "PANO"
    obj.data.panorama_type = "EQUIRECTANGULAR"
    obj.location = location
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = (math.radians(90), 0.0, math.radians(-90))
    return obj


def add_strip(scene, video_path: str, above_channel: int, frame_start: int, name: str = "360°"):
    """The video (a movie strip) or image sequence (an image strip) on the first channel above
    ``above_channel`` that is free over its span."""
    path, sequence_length = _media(video_path)
    end = frame_start + (sequence_length or probe(path).frame_count)
    editor = scene.sequence_editor or scene.sequence_editor_create()
    channel = above_channel + 1
    while any(s.channel == channel and s.frame_final_start < end and s.frame_final_end > frame_start
              for s in compat.strips(editor, everything=True)):
        channel += 1
    collection = compat.strips(editor)
    if sequence_length:
        frames = image_sequence(video_path)
        strip = collection.new_image(name=name, filepath=str(frames[0]), channel=channel, frame_start=frame_start)
        for frame in frames[1:]:
            strip.elements.append(frame.name)
        return strip
    strip = collection.new_movie(name=name, filepath=path, channel=channel, frame_start=frame_start)
    if strip.fps <= 0:
        collection.remove(strip)
        raise Equi360Error(f"{video_path}: Blender cannot read it as a movie")
    return strip


def show_image(context, path: str):
    """The image file in an Image Editor: the open one, else a new window (with a UI); reloaded if
    Blender already has it. Returns the image datablock."""
    image = _loaded_image(path)
    if image is None:
        image = bpy.data.images.load(path)
    else:
        image.reload()
    if bpy.app.background or context.window_manager is None:
        return image
    editors = [a for w in context.window_manager.windows for a in w.screen.areas if a.type == "IMAGE_EDITOR"]
    if not editors:
        bpy.ops.wm.window_new()
        area = context.window_manager.windows[-1].screen.areas[0]
        area.type = "IMAGE_EDITOR"
        editors = [area]
    editors[0].spaces.active.image = image
    return image
